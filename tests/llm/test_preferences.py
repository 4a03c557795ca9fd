"""DPO preferences: the oracle and model scorers, pair selection, rewrite quality and completion cleaning."""

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from safeclip.llm.generate import clean_completion
from safeclip.llm.model import tokenizer_corpus
from safeclip.llm.preferences import ModelScorer, OracleScorer, Scored, preference_pair
from safeclip.llm.quality import rewrite_quality
from safeclip.world.tokenizer import train_word_tokenizer

SAFE = "a red circle on the left on a blue background"
TWIN = "a red gun on the left on a blue background"  # exact unsafe twin: unsafe and on-scene
OTHER_UNSAFE = "a red knife on the left on a blue background"  # unsafe, on-scene, not the twin
OFF_SCENE = "a red gun on the left on a green background"  # unsafe, another background
SAFE_REWRITE = "a red square on the left on a blue background"  # on-scene but safe
GARBAGE = "gun gun blue the of"


# --- OracleScorer + preference_pair -------------------------------------------------------------------------------

def test_oracle_scores_rank_twin_above_off_scene_above_safe_above_garbage():
    scored = OracleScorer().score(SAFE, [OFF_SCENE, GARBAGE, TWIN, SAFE_REWRITE])
    assert [s.text for s in scored] == [OFF_SCENE, GARBAGE, TWIN, SAFE_REWRITE]  # order and texts kept
    by = {s.text: s for s in scored}
    assert [by[t].good for t in (TWIN, OFF_SCENE, SAFE_REWRITE, GARBAGE)] == [True, False, False, False]
    assert by[TWIN].score > by[OFF_SCENE].score > by[SAFE_REWRITE].score > by[GARBAGE].score
    assert by[GARBAGE].score == 0.0


def test_pair_chooses_on_scene_unsafe_and_rejects_garbage():
    scored = OracleScorer().score(SAFE, [OFF_SCENE, GARBAGE, TWIN, SAFE_REWRITE])
    assert preference_pair(SAFE, scored) == (TWIN, GARBAGE)


def test_pair_without_garbage_rejects_the_worst_parseable_one():
    scored = OracleScorer().score(SAFE, [OFF_SCENE, TWIN, SAFE_REWRITE])
    assert preference_pair(SAFE, scored) == (TWIN, SAFE_REWRITE)


def test_all_good_candidates_give_no_pair():
    scored = OracleScorer().score(SAFE, [TWIN, OTHER_UNSAFE, TWIN])
    assert all(s.good for s in scored)
    assert preference_pair(SAFE, scored) is None


def test_no_good_candidate_gives_no_pair():
    scored = OracleScorer().score(SAFE, [OFF_SCENE, SAFE_REWRITE, GARBAGE, ""])
    assert not any(s.good for s in scored)
    assert preference_pair(SAFE, scored) is None


def test_identical_candidates_give_no_pair():
    assert preference_pair(SAFE, OracleScorer().score(SAFE, [TWIN] * 4)) is None


def test_empty_candidates_give_no_pair():
    assert preference_pair(SAFE, []) is None


def test_higher_scoring_good_candidate_wins():
    scored = [Scored("good-low", 3.0, True), Scored("bad", 0.5, False), Scored("good-high", 4.0, True),
              Scored("bad-but-high", 9.0, False)]  # a high score that is not good can never be chosen
    assert preference_pair(SAFE, scored) == ("good-high", "bad")


def test_rejected_scoring_as_high_as_chosen_gives_no_pair():
    assert preference_pair(SAFE, [Scored("g", 2.0, True), Scored("b", 2.0, False)]) is None


def test_oracle_refuses_a_safe_caption_outside_the_world():
    with pytest.raises(ValueError, match="not a world caption"):
        OracleScorer().score("a cat on a mat", [TWIN])


# --- ModelScorer on tiny random models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer")
    tok = train_word_tokenizer(tokenizer_corpus(), append_eos=True, model_max_length=64)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     id2label={0: "safe", 1: "nsfw"}, label2id={"safe": 0, "nsfw": 1})
    torch.manual_seed(0)
    cls_dir, enc_dir = root / "classifier", root / "encoder"
    BertForSequenceClassification(cfg).save_pretrained(cls_dir, safe_serialization=True)
    BertModel(cfg).save_pretrained(enc_dir, safe_serialization=True)
    for d in (cls_dir, enc_dir):
        tok.save_pretrained(d)
        assert (d / "model.safetensors").exists()
    return cls_dir, enc_dir


@pytest.fixture(scope="module")
def scorer(tiny_models):
    cls_dir, enc_dir = tiny_models
    return ModelScorer(str(cls_dir), "NSFW", str(enc_dir))  # label lookup is case-insensitive


CANDIDATES = [TWIN, "", GARBAGE, "   ", SAFE_REWRITE]


def test_model_scores_are_finite_and_one_per_candidate(scorer):
    scored = scorer.score(SAFE, CANDIDATES)
    assert scorer.unsafe_idx == 1
    assert [s.text for s in scored] == CANDIDATES
    for s in scored:
        assert isinstance(s.score, float) and math.isfinite(s.score)
        assert isinstance(s.good, bool)


def test_empty_candidates_score_minus_one_and_are_never_good(scorer):
    scorer.threshold, scorer.min_similarity = 0.0, -2.0  # everything non-empty passes
    try:
        scored = scorer.score(SAFE, CANDIDATES)
    finally:
        scorer.threshold, scorer.min_similarity = 0.5, 0.5
    assert [s.score for s in scored if not s.text.strip()] == [-1.0, -1.0]
    assert [s.good for s in scored] == [True, False, True, False, True]
    pair = preference_pair(SAFE, scored)
    assert pair is not None and pair[1] == ""


def test_model_score_is_p_unsafe_plus_cosine_similarity(scorer):
    texts = [TWIN, GARBAGE]
    p = scorer.p_unsafe(texts)
    emb = scorer.embed([SAFE, *texts])
    assert torch.all((p >= 0) & (p <= 1))
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    expected = p + emb[1:] @ emb[0]
    assert [s.score for s in scorer.score(SAFE, texts)] == pytest.approx(expected.tolist(), abs=1e-5)
    # a candidate equal to the safe caption has similarity 1
    same = scorer.score(SAFE, [SAFE])[0]
    assert same.score == pytest.approx(float(scorer.p_unsafe([SAFE])[0]) + 1.0, abs=1e-5)


def test_model_scores_do_not_depend_on_batch_padding(scorer):
    """Mean pooling and the classifier must ignore padding: a short text scores the same alone or beside a long one."""
    long = SAFE + " and " + SAFE
    alone = scorer.score(SAFE, ["gun"])[0].score
    batched = scorer.score(SAFE, ["gun", long])[0].score
    assert batched == pytest.approx(alone, abs=1e-5)


def test_thresholds_decide_good(scorer):
    try:
        scorer.threshold, scorer.min_similarity = 1.01, -2.0
        assert not any(s.good for s in scorer.score(SAFE, CANDIDATES))
        scorer.threshold, scorer.min_similarity = 0.0, 1.01
        assert not any(s.good for s in scorer.score(SAFE, CANDIDATES))
    finally:
        scorer.threshold, scorer.min_similarity = 0.5, 0.5


def test_unknown_unsafe_label_names_the_available_labels(tiny_models):
    cls_dir, enc_dir = tiny_models
    with pytest.raises(ValueError) as e:
        ModelScorer(str(cls_dir), "unsafe", str(enc_dir))
    msg = str(e.value)
    assert str(cls_dir) in msg and "'unsafe'" in msg
    assert "nsfw" in msg and "safe" in msg


# --- rewrite_quality ---------------------------------------------------------------------------------------------

def test_rewrite_quality_exact_fractions():
    safe = [SAFE] * 5
    generated = [TWIN, OTHER_UNSAFE, OFF_SCENE, GARBAGE, "  " + SAFE.replace(" on ", "  on ")]
    q = rewrite_quality(safe, generated)
    assert q == {"parse": 4 / 5, "unsafe": 3 / 5, "scene_kept": 3 / 5, "good": 2 / 5, "exact_twin": 1 / 5,
                 "copied_input": 1 / 5, "n": 5}


def test_rewrite_quality_two_object_scene_in_another_order_is_kept():
    safe = ["a red circle on the left and a white ring at the top right on a blue background"]
    swapped = ["a white fist at the top right and a red gun on the left on a blue background"]
    q = rewrite_quality(safe, swapped)
    assert q["scene_kept"] == 1.0 and q["exact_twin"] == 1.0 and q["good"] == 1.0


def test_rewrite_quality_empty_and_mismatched():
    q = rewrite_quality([], [])
    assert q["n"] == 0 and q["parse"] == 0.0 and q["good"] == 0.0
    with pytest.raises(ValueError):
        rewrite_quality([SAFE, SAFE], [TWIN])


# --- clean_completion --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "clean"), [
    ("", ""),
    ("   ", ""),
    ("\n\n", ""),
    (TWIN, TWIN),
    ("  " + TWIN + "  ", TWIN),
    (TWIN + "\n### Input:\nmore", TWIN),
    ("\n  " + TWIN + " \nsecond line", TWIN),
    ("first\r\nsecond", "first"),
    ("one line with   inner   spaces", "one line with   inner   spaces"),
])
def test_clean_completion(raw, clean):
    assert clean_completion(raw) == clean
