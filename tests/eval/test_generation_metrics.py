"""Generation metrics by hand, prompt selection, per-image seeds, and the I2P CSV reader's errors."""

import math

import pytest

from safeclip.eval.generation import generation_metrics, image_seed, read_i2p, visu_prompts
from safeclip.io import InputError


def rec(kind, concept, world, nudenet, score=None, **ok):
    return {"kind": kind, "concepts": (concept,), "flag.world": world, "flag.nudenet": nudenet,
            "clip_score": score, **{f"ok.{k}": v for k, v in ok.items()}}


def test_rates_by_hand():
    records = [
        rec("unsafe", "weapons", True, False, 30.0, object=True, safe_twin=False),
        rec("unsafe", "weapons", False, False, 20.0, object=False, safe_twin=True),
        rec("unsafe", "theft", False, True, 10.0, object=False, safe_twin=False),
        rec("unsafe", "theft", False, False, None, object=True, safe_twin=None),
        rec("safe", "weapons", False, False, 40.0, object=True),
        rec("safe", "theft", True, True, 50.0, object=False),
    ]
    m = generation_metrics(records, ["world", "nudenet"])
    assert m["gen.unsafe.inappropriate"] == pytest.approx(50.0)  # any judge: rows 1 and 3
    assert m["gen.unsafe.judge.world"] == pytest.approx(25.0)
    assert m["gen.unsafe.judge.nudenet"] == pytest.approx(25.0)
    assert m["gen.unsafe.concept.weapons"] == pytest.approx(50.0)
    assert m["gen.unsafe.concept.theft"] == pytest.approx(50.0)
    assert m["gen.unsafe.concept_mean"] == pytest.approx(50.0)
    assert m["gen.unsafe.clip_score"] == pytest.approx(20.0)  # the None is skipped
    assert m["gen.unsafe.drew.object"] == pytest.approx(50.0)
    assert m["gen.unsafe.drew.safe_twin"] == pytest.approx(100 / 3)  # None is not counted
    assert m["gen.unsafe.images"] == 4
    assert m["gen.safe.inappropriate"] == pytest.approx(50.0)
    assert m["gen.safe.concept.theft"] == pytest.approx(100.0)
    assert m["gen.safe.concept.weapons"] == pytest.approx(0.0)
    assert m["gen.safe.clip_score"] == pytest.approx(45.0)
    assert "gen.safe.drew.safe_twin" not in m


def test_concept_mean_is_over_concepts_not_images():
    records = [rec("unsafe", "a", True, False)] * 3 + [rec("unsafe", "b", False, False)]
    m = generation_metrics(records, ["world"])
    assert m["gen.unsafe.inappropriate"] == pytest.approx(75.0)
    assert m["gen.unsafe.concept_mean"] == pytest.approx(50.0)


def test_concept_keys_have_no_spaces():
    m = generation_metrics([rec("unsafe", "drug use", True, False)], ["world"])
    assert m["gen.unsafe.concept.drug_use"] == 100.0


def rows(n):
    return [{"id": f"r{i}", "safe": f"safe {i}", "nsfw": f"unsafe {i}", "tag": "harm", "scene": None,
             "nsfw_scene": None} for i in range(n)]


def test_visu_prompts_pair_unsafe_with_their_safe_twins():
    prompts = visu_prompts(rows(20), n_unsafe=5, n_safe=3, seed=0)
    unsafe = [p for p in prompts if p.kind == "unsafe"]
    safe = [p for p in prompts if p.kind == "safe"]
    assert len(unsafe) == 5 and len(safe) == 3
    assert [p.id.split(":")[0] for p in safe] == [p.id.split(":")[0] for p in unsafe[:3]]
    assert all(p.reference == p.text.replace("unsafe", "safe") for p in unsafe)
    assert visu_prompts(rows(20), 5, 3, seed=0) == prompts
    assert visu_prompts(rows(20), 5, 3, seed=1) != prompts


def test_image_seed_depends_on_prompt_and_k_only():
    assert image_seed(0, "a", 0) == image_seed(0, "a", 0)
    assert len({image_seed(0, "a", 0), image_seed(0, "a", 1), image_seed(0, "b", 0), image_seed(1, "a", 0)}) == 4


def write(tmp_path, text, encoding="utf-8"):
    p = tmp_path / "i2p.csv"
    p.write_bytes(text.encode(encoding))
    return p


def test_read_i2p(tmp_path):
    p = write(tmp_path, 'prompt,categories,hard\n"a dark, stormy scene",shocking,1\nsome prompt,"hate,violence",0\n')
    prompts = read_i2p(p)
    assert [q.text for q in prompts] == ["a dark, stormy scene", "some prompt"]
    assert prompts[1].concepts == ("hate", "violence")
    assert len(read_i2p(p, limit=1)) == 1


@pytest.mark.parametrize(("text", "needle"), [
    ("prompt,hard\nx,1\n", "line 1: missing column(s) ['categories']"),
    ("prompt,categories\nx,shocking\n,hate\n", "line 3: field 'prompt' is empty"),
    ("prompt,categories\nx,\n", "line 2: field 'categories' is empty"),
    ("prompt,categories\nx,gore\n", "line 2: field 'categories' has unknown ['gore']"),
    ("prompt,categories\n", "no prompt rows"),
    ("", "the file is empty"),
])
def test_read_i2p_errors_name_line_and_field(tmp_path, text, needle):
    with pytest.raises(InputError, match="i2p.csv") as e:
        read_i2p(write(tmp_path, text))
    assert needle in str(e.value)


def test_read_i2p_wrong_encoding_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="not valid UTF-8"):
        read_i2p(write(tmp_path, "prompt,categories\ncaf\u00e9,hate\n", encoding="latin-1"))
    with pytest.raises(InputError, match="does not exist"):
        read_i2p(tmp_path / "nope.csv")


def test_empty_kind_gives_no_nan_keys():
    m = generation_metrics([rec("safe", "x", False, False)], ["world"])
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
