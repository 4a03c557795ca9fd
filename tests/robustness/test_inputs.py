"""Bad input, clear error, nothing half-written: every input kind a user supplies, broken the ways users break
it, through the stage entry point. Each case checks the exit code, that the message names the file, the
line/row and the field, that no traceback was printed, and that no output (or temporary sibling of one) exists.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from safeclip.clip.model import CLIP_MEAN, CLIP_STD, pixel_values
from safeclip.data.schemas import CAPTIONS, PAIRS
from safeclip.io import read_parquet, write_parquet
from tests.robustness.util import CURATED, leftovers, make_workspace, run_in_process, write_params

INGEST_OUT = ("data/pairs", "metrics/ingest.json")
CAPTIONS_OUT = ("data/captions", "metrics/captions.json")


def assert_refused(result, outputs: tuple[str, ...], ws: Path, *expected: str) -> None:
    """Exit 2, every expected piece in the message, no traceback, no output left for DVC to cache."""
    assert result.code == 2, result
    assert "Traceback" not in result.err, result
    message = result.err[result.err.index("error: "):]
    for piece in expected:
        assert piece in message, f"{piece!r} not in:\n{message}"
    assert leftovers(ws, outputs) == []


# --- curated pairs (stage ingest, ingest.pairs_file) ----------------------------------------------------------

GOOD_LINES = CURATED.read_bytes().split(b"\n")[:10]


def _pairs(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def _with(line: int, **fields) -> list[bytes]:
    """The ten good lines with line `line` (1-based) changed: a field set (value None: removed)."""
    lines = list(GOOD_LINES)
    obj = json.loads(lines[line - 1])
    for k, v in fields.items():
        if v is None:
            obj.pop(k)
        else:
            obj[k] = v
    lines[line - 1] = json.dumps(obj).encode()
    return lines


PAIRS_CASES: dict[str, tuple[bytes | None, list[str]]] = {
    # name: (file bytes, or None for no file; pieces of the message, "{f}" standing for the file)
    "truncated": (_pairs(GOOD_LINES)[:-30], ["{f}:10: -: not valid JSON"]),
    "latin-1 byte": (_pairs(GOOD_LINES[:2] + [GOOD_LINES[2].replace(b"a ", "\u00e9 ".encode("latin-1"), 1)]
                            + GOOD_LINES[3:]), ["{f}:3: -: not valid UTF-8", "save the file as UTF-8"]),
    "utf-16": (_pairs(GOOD_LINES).decode().encode("utf-16"), ["{f}:1: -: the file is UTF-16 encoded"]),
    "missing field": (_pairs(_with(4, unsafe=None)), ["{f}:4: unsafe: missing"]),
    "wrong type": (_pairs(_with(5, tag=7)), ["{f}:5: tag: must be a string, got int"]),
    "empty value": (_pairs(_with(6, safe="  ")), ["{f}:6: safe: empty"]),
    "unknown field": (_pairs(_with(7, note="x")), ["{f}:7: note: unknown field"]),
    "duplicate": (_pairs(GOOD_LINES + [GOOD_LINES[1]]), ["{f}:11: safe: duplicate of line 2"]),
    "empty file": (b"", ["{f}: -: no pairs (the file is empty)"]),
    "blank line": (_pairs(GOOD_LINES[:3] + [b""] + GOOD_LINES[3:]), ["{f}:4: -: empty line"]),
    "does not exist": (None, ["{f}: file does not exist"]),
}


@pytest.mark.parametrize("case", list(PAIRS_CASES))
def test_ingest_refuses_broken_pairs(tmp_path, case):
    data, expected = PAIRS_CASES[case]
    ws = make_workspace(tmp_path, {"ingest": {"pairs_file": "data/curated/mine.jsonl"}})
    if data is not None:
        (ws / "data/curated/mine.jsonl").write_bytes(data)
    r = run_in_process(ws, "stages.ingest")
    assert_refused(r, INGEST_OUT, ws, *[e.format(f="data/curated/mine.jsonl") for e in expected])


def test_ingest_refuses_a_folder_as_pairs_file(tmp_path):
    ws = make_workspace(tmp_path, {"ingest": {"pairs_file": "data/curated"}})
    r = run_in_process(ws, "stages.ingest")
    assert_refused(r, INGEST_OUT, ws, "data/curated: is a folder", "ingest.pairs_file")


def test_ingest_accepts_what_editors_save(tmp_path):
    """UTF-8 with a BOM, CRLF line ends, no final newline: the same pairs as the clean file."""
    ws = make_workspace(tmp_path, {"ingest": {"pairs_file": "data/curated/mine.jsonl"}})
    (ws / "data/curated/mine.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(GOOD_LINES))
    r = run_in_process(ws, "stages.ingest")
    assert r.code == 0, r
    rows = [*read_parquet(ws / "data/pairs/train.parquet", PAIRS).to_pylist(),
            *read_parquet(ws / "data/pairs/val.parquet", PAIRS).to_pylist()]
    assert sorted(r["source_line"] for r in rows) == list(range(1, 11))
    assert {(r["safe"], r["unsafe"]) for r in rows} == {(json.loads(x)["safe"], json.loads(x)["unsafe"])
                                                         for x in GOOD_LINES}


def test_failed_ingest_keeps_the_previous_outputs_intact(tmp_path):
    ws = make_workspace(tmp_path, {"ingest": {"pairs_file": "data/curated/mine.jsonl"}})
    (ws / "data/curated/mine.jsonl").write_bytes(_pairs(GOOD_LINES))
    assert run_in_process(ws, "stages.ingest").code == 0
    before = {p: p.read_bytes() for p in sorted((ws / "data/pairs").iterdir())}
    (ws / "data/curated/mine.jsonl").write_bytes(_pairs(_with(2, tag=None)))
    r = run_in_process(ws, "stages.ingest")
    assert r.code == 2 and "mine.jsonl:2: tag: missing" in r.err
    assert {p: p.read_bytes() for p in sorted((ws / "data/pairs").iterdir())} == before
    assert not list((ws / "data").glob(".pairs.*"))


# --- params.yaml (any stage; ingest is the cheapest) ----------------------------------------------------------

PARAMS_CASES: dict[str, tuple[bytes, list[str]]] = {
    "truncated": (b"base:\n  seed: 0\n  scale: [0.5\n", ["params.yaml: not valid YAML", "line 3"]),
    "latin-1 byte": ("base:\n  seed: 0 # r\u00e9sum\u00e9\n".encode("latin-1"),
                     ["params.yaml: not valid UTF-8 (byte 19)"]),
    "wrong type": (b"base:\n  seed: zero\n", ["params.yaml: invalid parameters", "base.seed:",
                                              "valid integer", "'zero'"]),
    "out of range": (b"base:\n  scale: 2\n", ["base.scale:", "less than or equal to 1"]),
    "unknown key": (b"sft:\n  learning_rat: 0.1\n", ["sft.learning_rat: unknown key",
                                                     "did you mean 'learning_rate'"]),
    "not a mapping": (b"- base\n- sft\n", ["params.yaml: the top level must be a mapping"]),
}


@pytest.mark.parametrize("case", list(PARAMS_CASES))
def test_stage_refuses_broken_params(tmp_path, case):
    data, expected = PARAMS_CASES[case]
    ws = make_workspace(tmp_path, {})
    (ws / "params.yaml").write_bytes(data)
    assert_refused(run_in_process(ws, "stages.ingest"), INGEST_OUT, ws, *expected)


def test_stage_refuses_a_missing_params_file(tmp_path):
    ws = make_workspace(tmp_path, {})
    assert_refused(run_in_process(ws, "stages.ingest", "--params", "mine.yaml"), INGEST_OUT, ws,
                   "mine.yaml: file does not exist")


# --- COCO captions JSON and image folders (stage captions, captions.source: coco) ------------------------------

def coco_workspace(ws: Path) -> Path:
    """Train images 1, 2 and val images 10..13 (8x6 RGB), two captions each, an indented JSON per split."""
    paths = {}
    for split, ids in (("train", (1, 2)), ("val", (10, 11, 12, 13))):
        folder = ws / f"data/coco/{split}2017"
        folder.mkdir(parents=True)
        images, annotations = [], []
        for i in ids:
            Image.new("RGB", (8, 6), (10 * i, 0, 0)).save(folder / f"{i:012d}.jpg")
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 8, "height": 6})
            annotations += [{"id": 100 + i, "image_id": i, "caption": f"A photo number {i}."},
                            {"id": 200 + i, "image_id": i, "caption": f"Second caption {i}."}]
        ann = ws / f"data/coco/annotations/captions_{split}2017.json"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(json.dumps({"images": images, "annotations": annotations}, indent=1))
        paths |= {f"annotations_{split}": f"data/coco/annotations/captions_{split}2017.json",
                  f"images_{split}": f"data/coco/{split}2017"}
    write_params(ws, {"captions": {"source": "coco", "coco": paths}})
    return ws


ANN = "data/coco/annotations/captions_val2017.json"
IMG = "data/coco/val2017/000000000011.jpg"


def _edit(ws: Path, fn: Callable[[dict], None]) -> None:
    data = json.loads((ws / ANN).read_text())
    fn(data)
    (ws / ANN).write_text(json.dumps(data, indent=1))


def _truncated_jpeg(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=95)
    path.write_bytes(path.read_bytes()[:-1000])


COCO_CASES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "truncated json": (lambda ws: (ws / ANN).write_bytes((ws / ANN).read_bytes()[:300]),
                       [f"{ANN}: line ", "not valid JSON"]),
    "latin-1 byte": (lambda ws: (ws / ANN).write_bytes((ws / ANN).read_bytes().replace(
        b"A photo number 12.", "A ph\u00f6to number 12.".encode("latin-1"))),
        [f"{ANN}: line ", "not valid UTF-8", "save the file as UTF-8"]),
    "empty file": (lambda ws: (ws / ANN).write_bytes(b""), [f"{ANN}: file is empty"]),
    "does not exist": (lambda ws: (ws / ANN).unlink(), [f"{ANN}: file does not exist"]),
    "not coco": (lambda ws: (ws / ANN).write_text("[1, 2]"), [f"{ANN}: expected a COCO captions object"]),
    "images not a list": (lambda ws: _edit(ws, lambda d: d.update(images=7)), [f"{ANN}: images: must be a list"]),
    "missing field": (lambda ws: _edit(ws, lambda d: d["annotations"][3].pop("caption")),
                      [f"{ANN}: annotations[3]: caption: missing"]),
    "wrong type": (lambda ws: _edit(ws, lambda d: d["images"][1].update(id="11")),
                   [f"{ANN}: images[1]: id: must be int, got str"]),
    "empty caption": (lambda ws: _edit(ws, lambda d: d["annotations"][2].update(caption=" ")),
                      [f"{ANN}: annotations[2]: caption: empty"]),
    "duplicate id": (lambda ws: _edit(ws, lambda d: d["images"][2].update(id=10)),
                     [f"{ANN}: images[2]: id: duplicate image id 10"]),
    "unknown image": (lambda ws: _edit(ws, lambda d: d["annotations"][4].update(image_id=99)),
                      [f"{ANN}: annotations[4]: image_id: 99 is not in images"]),
    "zero-byte image": (lambda ws: (ws / IMG).write_bytes(b""),
                        [f"{ANN}: image id 11: image: file {IMG} is empty (0 bytes)"]),
    "unreadable image": (lambda ws: (ws / IMG).write_text("<html>Not Found</html>"),
                         [f"{ANN}: image id 11: image: file {IMG} is not a readable image"]),
    "truncated image": (lambda ws: _truncated_jpeg(ws / IMG),
                        [f"{ANN}: image id 11: image: file {IMG} is not a readable image"]),
    "missing image": (lambda ws: (ws / IMG).unlink(), [f"{ANN}: image id 11: image: file {IMG} does not exist"]),
    "16-bit image": (lambda ws: Image.fromarray(np.full((6, 8), 40000, np.uint16)).save(ws / IMG, format="PNG"),
                     [f"{ANN}: image id 11: image: file {IMG} has mode I;16", "8-bit RGB"]),
    "image folder missing": (lambda ws: shutil.rmtree(ws / "data/coco/val2017"),
                             ["data/coco/val2017: image folder does not exist (captions.coco.images_val)"]),
}


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_coco_captions_refuse_broken_inputs(tmp_path, case):
    breaks, expected = COCO_CASES[case]
    ws = coco_workspace(tmp_path)
    breaks(ws)
    assert_refused(run_in_process(ws, "stages.captions"), CAPTIONS_OUT, ws, *expected)


def test_coco_images_of_any_8bit_mode_and_size_are_used_as_rgb(tmp_path, monkeypatch):
    """Grey, palette, CMYK, RGBA, a 3x40 sliver: kept, and each becomes the model's RGB input."""
    ws = coco_workspace(tmp_path)
    odd = {10: Image.new("L", (40, 3), 90), 11: Image.new("CMYK", (5, 7), (0, 255, 0, 0)),
           12: Image.new("RGBA", (9, 9), (0, 0, 255, 0)), 13: Image.new("RGB", (4, 4), (1, 2, 3)).convert("P")}
    for i, im in odd.items():
        im.save(ws / f"data/coco/val2017/{i:012d}.jpg", format="JPEG" if im.mode in ("L", "CMYK") else "PNG")
    r = run_in_process(ws, "stages.captions")
    assert r.code == 0, r
    rows = [*read_parquet(ws / "data/captions/val.parquet", CAPTIONS).to_pylist(),
            *read_parquet(ws / "data/captions/test.parquet", CAPTIONS).to_pylist()]
    assert len(rows) == 4
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    monkeypatch.chdir(ws)  # image paths are relative to the repo root, as the params gave them
    assert pixel_values(proc, [r["image"] for r in rows]).shape == (4, 3, 32, 32)


# --- ViSU-Text from a local Parquet/CSV file or folder (stage captions, captions.source: visu-hf) -------------

VISU_TEXT = pd.DataFrame({"safe": ["A cat on a sofa.", "A dog in a park.", "A bird on a tree."],
                          "nsfw": ["A dead cat on a sofa.", "A bloody dog in a park.", "A shot bird on a tree."],
                          "tag": ["harm", "blood", "violence"], "coco_id": [42, 7, 9]})


def visu_workspace(ws: Path, dataset: str, **extra) -> Path:
    """Local ViSU-Text copies live in data/visu_text/ (the folder the captions stage depends on)."""
    (ws / "data/visu_text").mkdir(parents=True, exist_ok=True)
    return make_workspace(ws, {"captions": {"source": "visu-hf", "visu_hf": {"dataset": dataset, **extra}}})


def _csv_latin1(path: Path) -> None:
    path.write_bytes(VISU_TEXT.to_csv(index=False).replace("dead", "d\u00e9ad").encode("latin-1"))


V = "data/visu_text"  # local ViSU-Text copies live in the folder the captions stage depends on
VISU_CASES: dict[str, tuple[str, Callable[[Path], None], list[str]]] = {
    # name: (dataset param, how to write it, pieces of the message)
    "truncated parquet": (f"{V}/v.parquet", lambda p: (VISU_TEXT.to_parquet(p), p.write_bytes(p.read_bytes()[:200])),
                          ["v.parquet: could not load the dataset"]),
    "latin-1 csv": (f"{V}/v.csv", _csv_latin1, ["v.csv: line 2: not valid UTF-8 (byte ", "save it as UTF-8"]),
    "missing column": (f"{V}/v.parquet", lambda p: VISU_TEXT.drop(columns="nsfw").to_parquet(p),
                       ["v.parquet: split test: column 'nsfw' is missing"]),
    "wrong type": (f"{V}/v.parquet", lambda p: VISU_TEXT.assign(tag=[1, 2, 3]).to_parquet(p),
                   ["v.parquet: split test: row 0: tag: empty or not a string"]),
    "empty cell": (f"{V}/v.csv", lambda p: VISU_TEXT.assign(nsfw=["x", None, "y"]).to_csv(p, index=False),
                   ["v.csv: split test: row 1: nsfw: empty or not a string"]),
    "empty file": (f"{V}/v.csv", lambda p: p.write_bytes(b""), ["v.csv: file is empty"]),
    "header only": (f"{V}/v.csv", lambda p: p.write_text("safe,nsfw,tag\n"), ["v.csv: no rows"]),
    "file naming no split": (f"{V}/v", lambda p: (p.mkdir(), VISU_TEXT.to_parquet(p / "train.parquet"),
                                             VISU_TEXT.to_parquet(p / "extra.parquet")),
                             ["v/extra.parquet: its name says no split", "would be left out"]),
    "does not exist": ("./data/visu_text/nowhere/v.parquet", lambda p: None,
                       ["./data/visu_text/nowhere/v.parquet: file or folder does not exist"]),
    "unsupported file": (f"{V}/v.txt", lambda p: p.write_text("safe,nsfw,tag\n"), ["v.txt: unsupported file type"]),
}


@pytest.mark.parametrize("case", list(VISU_CASES))
def test_visu_text_refuses_broken_inputs(tmp_path, case):
    dataset, writes, expected = VISU_CASES[case]
    ws = visu_workspace(tmp_path, dataset)
    writes(ws / dataset)
    assert_refused(run_in_process(ws, "stages.captions"), CAPTIONS_OUT, ws, *expected)


def test_visu_text_refuses_a_coco_id_that_is_not_an_id(tmp_path):
    ws = visu_workspace(tmp_path, "data/visu_text/v.csv", coco_images="data/coco/images")
    (ws / "data/coco/images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(ws / "data/coco/images/000000000042.jpg")
    VISU_TEXT.assign(coco_id=["42", "abc", "9"]).to_csv(ws / "data/visu_text/v.csv", index=False)
    assert_refused(run_in_process(ws, "stages.captions"), CAPTIONS_OUT, ws,
                   "v.csv: split test: row 1: coco_id: must be a COCO image id", "'abc'")


@pytest.mark.parametrize("image", ["zero-byte", "unreadable", "missing"])
def test_visu_text_refuses_a_broken_coco_image(tmp_path, image):
    ws = visu_workspace(tmp_path, "data/visu_text/v.parquet", coco_images="data/coco/images")
    VISU_TEXT.to_parquet(ws / "data/visu_text/v.parquet")
    (ws / "data/coco/images").mkdir(parents=True)
    for i in VISU_TEXT.coco_id:
        Image.new("RGB", (4, 4)).save(ws / f"data/coco/images/{i:012d}.jpg")
    bad = ws / "data/coco/images/000000000007.jpg"
    {"zero-byte": lambda: bad.write_bytes(b""), "unreadable": lambda: bad.write_text("nope"),
     "missing": bad.unlink}[image]()
    assert_refused(run_in_process(ws, "stages.captions"), CAPTIONS_OUT, ws,
                   "v.parquet: split test: row 1: image: file data/coco/images/000000000007.jpg")


def test_visu_text_from_a_folder_of_csv_splits(tmp_path):
    """The good path the broken cases are variants of: validation -> val, every row kept."""
    ws = visu_workspace(tmp_path, "data/visu_text/v")
    (ws / "data/visu_text/v").mkdir()
    VISU_TEXT.to_csv(ws / "data/visu_text/v/train.csv", index=False)
    VISU_TEXT.iloc[:1].to_csv(ws / "data/visu_text/v/validation.csv", index=False)
    r = run_in_process(ws, "stages.captions")
    assert r.code == 0, r
    assert json.loads((ws / "metrics/captions.json").read_text())["captions.train"] == 3
    assert read_parquet(ws / "data/captions/val.parquet", CAPTIONS).column("nsfw").to_pylist() == \
        ["A dead cat on a sofa."]


# --- Parquet handed from stage to stage (a user's copy, a truncated download from the DVC remote) -------------

def test_sft_refuses_a_truncated_pairs_parquet_before_loading_anything(tmp_path):
    ws = make_workspace(tmp_path, {})
    path = ws / "data/pairs/train.parquet"
    write_parquet(path, [{"id": "a", "split": "train", "safe": "s", "unsafe": "u", "tag": "t", "source_file": "f",
                          "source_line": 1}], PAIRS)
    path.write_bytes(path.read_bytes()[:-20])
    assert_refused(run_in_process(ws, "stages.sft"), ("models/llm_sft", "metrics/sft.json", "plots/sft.csv"), ws,
                   "data/pairs/train.parquet: not a readable Parquet file")


def test_sft_names_the_row_and_field_of_a_null_in_the_pairs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ws = make_workspace(tmp_path, {})
    (ws / "data/pairs").mkdir(parents=True)
    table = pa.table({"id": ["a", "b"], "split": ["train"] * 2, "safe": ["s", "t"], "unsafe": ["u", None],
                      "tag": ["t", "t"], "source_file": ["f", "f"], "source_line": [1, 2]})
    pq.write_table(table, ws / "data/pairs/train.parquet")
    assert_refused(run_in_process(ws, "stages.sft"), ("models/llm_sft", "metrics/sft.json", "plots/sft.csv"), ws,
                   "data/pairs/train.parquet: row 1: field 'unsafe' is null")
