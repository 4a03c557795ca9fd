"""Batched rewriting with a tiny world Llama, and loading causal LMs from safetensors only."""

import pickle

import pytest
import torch

from safeclip.io import InputError
from safeclip.llm.generate import rewrite
from safeclip.llm.model import build_world_llm, load_causal_lm, tokenizer_corpus
from safeclip.llm.template import prompt_for
from safeclip.params import WorldLlm
from safeclip.world.tokenizer import train_word_tokenizer

CAPTIONS = [
    "a red circle on the left on a blue background",
    "a white ring at the top right on a green background",
    "a pink square in the centre on a black background",
    "a red circle on the left and a white ring at the bottom right on a blue background",
    "an orange plus at the bottom on a gray background",
]


@pytest.fixture(scope="module")
def tiny_llm():
    tok = train_word_tokenizer(tokenizer_corpus(), append_eos=False, model_max_length=128)
    torch.manual_seed(0)
    model = build_world_llm(WorldLlm(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), tok)
    # The default init (std 0.02) makes a random model emit the same token whatever the prompt; larger weights
    # make its greedy output depend on the input, so padding mistakes show up in the text.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    return model.eval(), tok


def test_word_tokenizer_special_ids_and_templates(tiny_llm):
    _, tok = tiny_llm
    assert [tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2, 3]
    ids = tok(CAPTIONS[0])["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids  # the causal LM's tokenizer: BOS only
    assert len(ids) == 1 + len(CAPTIONS[0].split())  # one token per word
    clip_tok = train_word_tokenizer(tokenizer_corpus(), append_eos=True, model_max_length=16)
    clip_ids = clip_tok(CAPTIONS[0])["input_ids"]
    assert clip_ids[0] == 2 and clip_ids[-1] == 3 and clip_ids[1:-1] == ids[1:]
    assert tok("a zebra")["input_ids"] == [2, ids[1], tok.unk_token_id]


def test_every_prompt_word_is_in_the_vocabulary(tiny_llm):
    _, tok = tiny_llm
    for c in CAPTIONS:
        assert tok.unk_token_id not in tok(prompt_for(c))["input_ids"]


def test_prompts_have_different_lengths(tiny_llm):
    _, tok = tiny_llm
    lengths = {len(tok(prompt_for(c))["input_ids"]) for c in CAPTIONS}
    assert len(lengths) >= 3  # so a batch really is padded


def test_rewrite_returns_one_list_per_caption(tiny_llm):
    model, tok = tiny_llm
    out = rewrite(model, tok, CAPTIONS, batch_size=2, max_new_tokens=6, do_sample=True, num_return_sequences=3,
                  seed=1)
    assert len(out) == len(CAPTIONS)
    for texts in out:
        assert len(texts) == 3
        assert all(isinstance(t, str) and "\n" not in t and t == t.strip() for t in texts)
        assert all(len(t.split()) <= 6 for t in texts)
    greedy = rewrite(model, tok, CAPTIONS, batch_size=4, max_new_tokens=6)
    assert [len(g) for g in greedy] == [1] * len(CAPTIONS)
    assert rewrite(model, tok, [], batch_size=4) == []


def test_batched_greedy_equals_one_by_one(tiny_llm):
    """Left padding and the attention mask must make a padded batch generate what each prompt does alone."""
    model, tok = tiny_llm
    alone = [rewrite(model, tok, [c], batch_size=1, max_new_tokens=8)[0] for c in CAPTIONS]
    assert len({a[0] for a in alone}) > 1, "the test model must not ignore its input"
    assert all(a[0] for a in alone)
    for bs in (2, 5):
        assert rewrite(model, tok, CAPTIONS, batch_size=bs, max_new_tokens=8) == alone


def test_rewrite_pads_left_even_if_the_tokenizer_pads_right(tiny_llm):
    model, tok = tiny_llm
    alone = [rewrite(model, tok, [c], batch_size=1, max_new_tokens=8)[0] for c in CAPTIONS]
    tok.padding_side = "right"
    assert rewrite(model, tok, CAPTIONS, batch_size=5, max_new_tokens=8) == alone
    assert tok.padding_side == "left"


def test_sampling_is_reproducible_under_its_seed(tiny_llm):
    model, tok = tiny_llm
    kw = dict(batch_size=2, max_new_tokens=6, do_sample=True, num_return_sequences=2)
    a = rewrite(model, tok, CAPTIONS, seed=3, **kw)
    torch.manual_seed(12345)  # the global RNG state must not matter
    b = rewrite(model, tok, CAPTIONS, seed=3, **kw)
    c = rewrite(model, tok, CAPTIONS, seed=4, **kw)
    assert a == b
    assert a != c


def test_save_and_load_causal_lm(tiny_llm, tmp_path):
    model, tok = tiny_llm
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded, ltok = load_causal_lm(tmp_path)
    assert ltok.pad_token_id == tok.pad_token_id and ltok.eos_token_id == tok.eos_token_id
    assert len(ltok) == len(tok)
    for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    expect = rewrite(model, tok, CAPTIONS, batch_size=5, max_new_tokens=8)
    assert rewrite(loaded, ltok, CAPTIONS, batch_size=5, max_new_tokens=8) == expect


def test_missing_model_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")


class _Planted:
    """Unpickling this creates a marker file: proof that the pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(InputError) as e:
        load_causal_lm(tmp_path)
    assert "pickle" in str(e.value) and str(tmp_path) in str(e.value)


def test_planted_pickle_is_never_unpickled(tiny_llm, tmp_path):
    model, tok = tiny_llm
    d = tmp_path / "model"
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    (d / "model.safetensors").unlink()  # a complete model folder, but its weights are a pickle
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"model.embed_tokens.weight": _Planted(marker)})
    pickle.loads(payload)["model.embed_tokens.weight"].close()  # the payload really does create the marker...
    assert marker.exists()
    marker.unlink()
    (d / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(InputError, match="pickle"):
        load_causal_lm(d)
    assert not marker.exists()  # ...but loading never ran it
