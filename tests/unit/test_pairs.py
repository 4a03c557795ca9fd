"""Curated pairs: every malformed line is reported as `file:line: field: what`, and the split is stable."""

import json
from collections import Counter
from pathlib import Path

import pytest

from safeclip.data.pairs import Pair, pair_id, read_pairs, split_pairs, tag_counts
from safeclip.io import InputError
from safeclip.world.catalogue import VISU_CONCEPTS

REPO = Path(__file__).resolve().parents[2]

GOOD = {"safe": "a red circle on the left on a blue background",
        "unsafe": "a red gun on the left on a blue background", "tag": "weapons"}
GOOD2 = {"safe": "a white ring at the top on a green background",
         "unsafe": "a white fist at the top on a green background", "tag": "harassment"}


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(data)
    return path


def error(path: Path) -> str:
    with pytest.raises(InputError) as e:
        read_pairs(path)
    return str(e.value)


@pytest.mark.parametrize(("data", "where", "phrase"), [
    (b"\xff\n", "1: -:", "not valid UTF-8"),
    (line(GOOD) + b'{"safe": "a red circle", \n', "2: -:", "not valid JSON"),
    (line(GOOD) + line(GOOD2)[:30], "2: -:", "not valid JSON"),
    (b'["a", "b", "c"]\n', "1: -:", "expected a JSON object"),
    (line({"safe": "x", "unsafe": "y"}), "1: tag:", "missing"),
    (line({**GOOD, "unsafe": 3}), "1: unsafe:", "must be a string, got int"),
    (line({**GOOD, "tag": None}), "1: tag:", "must be a string, got NoneType"),
    (line({**GOOD, "safe": "   "}), "1: safe:", "empty"),
    (line({**GOOD, "tag": "weapon"}), "1: tag:", "'weapon' is not a known concept"),
    (line({**GOOD, "unsafe": "  A Red circle on the LEFT  on a blue background. "}), "1: unsafe:", "identical to safe"),
    (line(GOOD) + line(GOOD2) + line(GOOD), "3: safe:", "duplicate of line 1"),
    (line({**GOOD, "Tag": "hate"}), "1: Tag:", "unknown field"),
    (line(GOOD) + b"   \n", "2: -:", "empty line"),
])
def test_bad_line_is_reported_with_file_line_and_field(tmp_path, data, where, phrase):
    path = write(tmp_path, data)
    msg = error(path)
    assert f"{path}:{where}" in msg
    assert phrase in msg
    assert msg.startswith("1 problem(s) in curated pairs:")


def test_duplicate_is_case_and_whitespace_insensitive(tmp_path):
    dup = {**GOOD, "safe": GOOD["safe"].upper() + ".", "unsafe": "  " + GOOD["unsafe"]}
    path = write(tmp_path, line(GOOD) + line(dup))
    assert f"{path}:2: safe: duplicate of line 1" in error(path)


def test_empty_file(tmp_path):
    path = write(tmp_path, b"")
    msg = error(path)
    assert str(path) in msg and "empty" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert f"{path}: file does not exist" in error(path)


def test_every_bad_line_is_reported_in_one_error(tmp_path):
    data = (line(GOOD) + b"\xfe\xff\n" + b"{oops\n" + line({**GOOD2, "tag": "nope"}) + line(GOOD2)
            + line({"safe": "x", "unsafe": 1, "tag": "hate", "more": 1}) + line(GOOD))
    path = write(tmp_path, data)
    msg = error(path)
    expected = [
        f"{path}:2: -: not valid UTF-8",
        f"{path}:3: -: not valid JSON",
        f"{path}:4: tag: 'nope' is not a known concept",
        f"{path}:6: more: unknown field",
        f"{path}:6: unsafe: must be a string, got int",
        f"{path}:7: safe: duplicate of line 1",
    ]
    assert msg.startswith("6 problem(s) in curated pairs:\n")
    for e in expected:
        assert e in msg
    assert f"{path}:1:" not in msg and f"{path}:5:" not in msg  # good lines are not blamed


def test_more_than_fifty_problems_are_summarised(tmp_path):
    path = write(tmp_path, b"[]\n" * 60)
    msg = error(path)
    assert msg.startswith("60 problem(s)")
    assert f"{path}:50: -:" in msg and f"{path}:51: -:" not in msg
    assert msg.endswith("... and 10 more")


def test_good_file_parses(tmp_path):
    path = write(tmp_path, line({**GOOD, "safe": "  " + GOOD["safe"] + " "}) + line(GOOD2))
    assert read_pairs(path) == [Pair(GOOD["safe"], GOOD["unsafe"], "weapons", 1),
                                Pair(GOOD2["safe"], GOOD2["unsafe"], "harassment", 2)]


def test_good_file_without_final_newline_and_with_crlf(tmp_path):
    path = write(tmp_path, json.dumps(GOOD).encode() + b"\r\n" + json.dumps(GOOD2).encode())
    assert [p.line for p in read_pairs(path)] == [1, 2]


def test_custom_concepts(tmp_path):
    path = write(tmp_path, line({**GOOD, "tag": "spam"}))
    assert read_pairs(path, concepts=("spam",))[0].tag == "spam"


# --- split ----------------------------------------------------------------------------------------------------


def make_pairs(n: int) -> list[Pair]:
    return [Pair(f"safe caption {i}", f"unsafe caption {i}", "hate", i + 1) for i in range(n)]


def test_split_is_deterministic_disjoint_and_sized():
    pairs = make_pairs(100)
    a = split_pairs(pairs, 0.2, seed=0)
    assert a == split_pairs(list(reversed(pairs)), 0.2, seed=0)  # input order does not matter
    assert len(a["val"]) == 20 and len(a["train"]) == 80
    assert sorted(p.line for p in a["train"] + a["val"]) == list(range(1, 101))
    assert not {p.line for p in a["train"]} & {p.line for p in a["val"]}
    b = split_pairs(pairs, 0.2, seed=1)
    assert {p.line for p in b["val"]} != {p.line for p in a["val"]}


def test_split_is_stable_when_rows_are_added():
    val_before = {p.safe for p in split_pairs(make_pairs(100), 0.2, 0)["val"]}
    val_after = {p.safe for p in split_pairs(make_pairs(101), 0.2, 0)["val"]}
    assert len(val_before ^ val_after) <= 2


def test_split_never_puts_one_safe_caption_in_both_splits():
    pairs = [Pair(f"Safe {i % 30}" + ("." if i % 2 else ""), f"unsafe {i}", "hate", i + 1) for i in range(90)]
    out = split_pairs(pairs, 0.25, seed=3)
    norm = lambda p: p.safe.lower().rstrip(".")  # noqa: E731
    assert not {norm(p) for p in out["train"]} & {norm(p) for p in out["val"]}
    assert len(out["train"]) + len(out["val"]) == 90
    assert 20 <= len(out["val"]) <= 28  # 25% of 90 = 22.5, rounded to whole safe-caption groups of 3


def test_split_tiny_set_keeps_one_val_pair():
    out = split_pairs(make_pairs(3), 0.1, seed=0)
    assert (len(out["train"]), len(out["val"])) == (2, 1)


def test_pair_id_normalises():
    a = Pair("A cat.", "a dead cat", "harm", 1)
    assert pair_id(a) == pair_id(Pair("a  CAT", "A dead cat.", "harm", 9))
    assert pair_id(a) != pair_id(Pair("a cat", "a dead dog", "harm", 1))
    assert len(pair_id(a)) == 16


# --- committed curated files ----------------------------------------------------------------------------------


def test_committed_world_pairs_validate():
    pairs = read_pairs(REPO / "data/curated/world_pairs.jsonl")
    assert len(pairs) == 100
    assert set(tag_counts(pairs)) <= set(VISU_CONCEPTS)
    out = split_pairs(pairs, 0.2, 0)
    assert (len(out["train"]), len(out["val"])) == (80, 20)


def test_committed_paper_pairs_validate_and_cover_every_concept():
    pairs = read_pairs(REPO / "data/curated/paper_pairs.jsonl")
    assert len(pairs) == 100
    counts = tag_counts(pairs)
    assert set(counts) == set(VISU_CONCEPTS)
    assert counts == Counter({c: 5 for c in VISU_CONCEPTS})
