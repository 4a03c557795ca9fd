"""Safe-caption sources: the world renderer, a local COCO folder and ViSU-Text from local files."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from safeclip.data.captions import coco_rows, render_config, visu_hf_rows, world_rows, world_scenes
from safeclip.io import InputError
from safeclip.params import CocoCaptions, VisuHfCaptions, World, WorldCaptions
from safeclip.world.catalogue import POSITIONS, TWINNED_SAFE
from safeclip.world.grammar import parse
from safeclip.world.render import render
from safeclip.world.scene import Scene, is_valid

COUNTS = {"train": 50, "val": 20, "test": 30}
GRID = tuple(POSITIONS)  # all nine cells: these tests predate the middle-row default and count on the grid

# --- world ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_objects", [1, 2])
def test_world_scenes_disjoint_unique_twinned(max_objects):
    out = world_scenes(COUNTS, seed=0, max_objects=max_objects, positions=GRID)
    assert {k: len(v) for k, v in out.items()} == COUNTS
    everything = [s for v in out.values() for s in v]
    assert len(set(everything)) == 100
    assert all(is_valid(s) and not s.unsafe for s in everything)
    assert all(o.name in TWINNED_SAFE for s in everything for o in s.objects)
    assert all(1 <= len(s.objects) <= max_objects for s in everything)
    assert out == world_scenes(COUNTS, seed=0, max_objects=max_objects, positions=GRID)
    assert out != world_scenes(COUNTS, seed=1, max_objects=max_objects, positions=GRID)


@pytest.mark.parametrize("max_objects", [1, 2])
def test_world_test_split_does_not_depend_on_train_size(max_objects):
    small = world_scenes({"train": 10, "val": 5, "test": 30}, seed=4, max_objects=max_objects, positions=GRID)
    big = world_scenes({"train": 200, "val": 40, "test": 30}, seed=4, max_objects=max_objects, positions=GRID)
    assert small["test"] == big["test"]


def test_world_scenes_too_many_one_object_scenes():
    with pytest.raises(ValueError, match="at 9 positions has 3312"):  # 8 objects x 9 positions x 46 colourings
        world_scenes({"train": 4000, "val": 0, "test": 0}, seed=0, max_objects=1, positions=GRID)


ROW = ("left", "centre", "right")


@pytest.mark.parametrize("max_objects", [1, 2])
def test_world_scenes_keep_to_the_worlds_positions(max_objects):
    out = world_scenes(COUNTS, seed=0, max_objects=max_objects, positions=ROW)
    everything = [s for v in out.values() for s in v]
    assert len(set(everything)) == 100 and all(is_valid(s) for s in everything)
    assert {o.position for s in everything for o in s.objects} == set(ROW)


def test_a_world_of_three_positions_has_a_third_of_the_scenes():
    with pytest.raises(ValueError, match="at 3 positions has 1104"):  # 8 objects x 3 positions x 46 colourings
        world_scenes({"train": 1000, "val": 100, "test": 100}, seed=0, max_objects=1, positions=ROW)
    rows = list(world_rows(WorldCaptions(n_train=8, n_val=8, n_test=8), World(positions=list(ROW)), 0, 1.0))
    assert {o.position for r in rows for o in Scene.from_json(r["scene"]).objects} <= set(ROW)


@pytest.mark.parametrize("image_size", [32, 64])
def test_world_rows(image_size):
    world = World(image_size=image_size)
    rows = list(world_rows(WorldCaptions(n_train=12, n_val=3, n_test=8), world, seed=0, scale=1.0))
    # sizes are scaled with a minimum of 8: val 3 -> 8
    assert [r["split"] for r in rows] == ["test"] * 8 + ["val"] * 8 + ["train"] * 12
    assert rows[0]["id"] == "world-test-00000" and rows[-1]["id"] == "world-train-00011"
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["seed"] for r in rows}) == len(rows)
    for r in rows:
        assert r["source"] == "world" and r["image"]["path"] is None
        assert r["nsfw"] is None and r["tag"] is None
        with Image.open(io.BytesIO(r["image"]["bytes"])) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (image_size, image_size)
            pixels = np.asarray(im)
        scene = Scene.from_json(r["scene"])
        assert parse(r["caption"]) == scene
        assert np.array_equal(pixels, render(scene, r["seed"], render_config(world)))
    again = list(world_rows(WorldCaptions(n_train=12, n_val=3, n_test=8), world, seed=0, scale=1.0))
    assert again == rows


def test_world_rows_scale():
    rows = list(world_rows(WorldCaptions(n_train=40, n_val=20, n_test=30), World(), seed=0, scale=0.5))
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [20, 10, 15]


# --- COCO -----------------------------------------------------------------------------------------------------


def coco_folder(tmp_path: Path) -> dict:
    """Train: image ids 1, 2; val: image ids 10..13; two captions per image (the first one is kept)."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    for split, ids in (("train", (1, 2)), ("val", (10, 11, 12, 13))):
        folder = tmp_path / f"{split}2017"
        folder.mkdir()
        images, annotations = [], []
        for k, i in enumerate(ids):
            name = f"{i:012d}." + ("jpg" if k % 2 == 0 else "png")
            Image.new("RGB", (8, 6), (10 * i, 0, 0)).save(folder / name)
            images.append({"id": i, "file_name": name, "width": 8, "height": 6})
            annotations.append({"id": 100 + i, "image_id": i, "caption": f" A  photo\nnumber {i}. "})
            annotations.append({"id": 200 + i, "image_id": i, "caption": f"second caption {i}"})
        (ann / f"captions_{split}2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return {"annotations_train": str(ann / "captions_train2017.json"), "images_train": str(tmp_path / "train2017"),
            "annotations_val": str(ann / "captions_val2017.json"), "images_val": str(tmp_path / "val2017")}


def test_coco_rows(tmp_path):
    paths = coco_folder(tmp_path)
    rows = list(coco_rows(CocoCaptions(**paths), seed=0))
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    assert [len(v) for v in by_split.values()] == [2, 2, 2]
    assert [r["caption"] for r in by_split["train"]] == ["A photo number 1.", "A photo number 2."]
    assert [r["id"] for r in by_split["train"]] == ["coco-train-000000", "coco-train-000001"]
    assert [r["image"]["path"] for r in by_split["train"]] == [
        str(Path(paths["images_train"]) / "000000000001.jpg"), str(Path(paths["images_train"]) / "000000000002.png")]
    val_test = {r["image"]["path"] for r in by_split["val"] + by_split["test"]}
    assert val_test == {str(p) for p in Path(paths["images_val"]).iterdir()}
    assert not {r["image"]["path"] for r in by_split["val"]} & {r["image"]["path"] for r in by_split["test"]}
    for r in rows:
        assert r["source"] == "coco" and r["image"]["bytes"] is None and r["scene"] is None
    assert rows == list(coco_rows(CocoCaptions(**paths), seed=0))


def test_coco_rows_limits(tmp_path):
    paths = coco_folder(tmp_path)
    rows = list(coco_rows(CocoCaptions(**paths, captions_per_image=2, max_images_per_split=1), seed=0))
    assert [r["split"] for r in rows] == ["train"] * 2 + ["val"] * 2 + ["test"] * 2
    assert [r["caption"] for r in rows[:2]] == ["A photo number 1.", "second caption 1"]


def _edit_annotations(paths: dict, fn) -> Path:
    path = Path(paths["annotations_val"])
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def _val_image(paths: dict, image_id: int = 10) -> Path:
    return Path(paths["images_val"]) / f"{image_id:012d}.jpg"


@pytest.mark.parametrize("case", [
    "missing annotations", "invalid json", "unknown image_id", "missing caption", "non-string caption",
    "empty caption", "duplicate image id", "zero-byte image", "not an image", "truncated jpeg", "missing image",
])
def test_coco_broken_inputs(tmp_path, case):
    paths = coco_folder(tmp_path)
    ann = Path(paths["annotations_val"])
    image = _val_image(paths)
    expected: list[str]
    if case == "missing annotations":
        ann.unlink()
        expected = [f"{ann}: file does not exist"]
    elif case == "invalid json":
        ann.write_text('{"images": [}')
        expected = [f"{ann}: line 1: not valid JSON"]
    elif case == "unknown image_id":
        _edit_annotations(paths, lambda d: d["annotations"][3].update(image_id=99))
        expected = [f"{ann}: annotations[3]: image_id: 99 is not in images"]
    elif case == "missing caption":
        _edit_annotations(paths, lambda d: d["annotations"][5].pop("caption"))
        expected = [f"{ann}: annotations[5]: caption: missing"]
    elif case == "non-string caption":
        _edit_annotations(paths, lambda d: d["annotations"][0].update(caption=7))
        expected = [f"{ann}: annotations[0]: caption: must be str"]
    elif case == "empty caption":
        _edit_annotations(paths, lambda d: d["annotations"][1].update(caption=" \n"))
        expected = [f"{ann}: annotations[1]: caption: empty"]
    elif case == "duplicate image id":
        _edit_annotations(paths, lambda d: d["images"][2].update(id=10))
        expected = [f"{ann}: images[2]: id: duplicate image id 10"]
    elif case == "zero-byte image":
        image.write_bytes(b"")
        expected = [f"{ann}: image id 10: image: file {image}", "empty (0 bytes)"]
    elif case == "not an image":
        image.write_text("this is not a JPEG")
        expected = [f"{ann}: image id 10: image: file {image}", "not a readable image"]
    elif case == "truncated jpeg":  # an interrupted download: the header is fine, the pixel data is cut short
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(image, format="JPEG", quality=95)
        image.write_bytes(image.read_bytes()[:-1000])
        with pytest.raises(OSError, match="truncated"), Image.open(image) as im:
            im.load()  # PIL cannot decode it
        expected = [f"{ann}: image id 10: image: file {image}", "not a readable image"]
    else:
        image.unlink()
        expected = [f"{ann}: image id 10: image: file {image} does not exist"]
    with pytest.raises(InputError) as e:
        list(coco_rows(CocoCaptions(**paths), seed=0))
    for text in expected:
        assert text in str(e.value)


# --- ViSU-Text from local files -------------------------------------------------------------------------------

VISU = pd.DataFrame({"safe": ["A cat on a sofa. ", "A dog in a park."],
                     "nsfw": ["A dead cat on a sofa.", " A bloody dog in a park."],
                     "tag": ["harm", "blood"]})


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep `datasets`' cache inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_visu_hf_from_parquet_file(tmp_path, hf_cache):
    path = tmp_path / "visu.parquet"
    VISU.to_parquet(path)
    rows = list(visu_hf_rows(VisuHfCaptions(dataset=str(path))))
    assert rows == [
        {"id": "visu-test-000000", "split": "test", "caption": "A cat on a sofa.", "image": None, "source": "visu-hf",
         "scene": None, "seed": None, "nsfw": "A dead cat on a sofa.", "tag": "harm"},
        {"id": "visu-test-000001", "split": "test", "caption": "A dog in a park.", "image": None, "source": "visu-hf",
         "scene": None, "seed": None, "nsfw": "A bloody dog in a park.", "tag": "blood"},
    ]


def test_visu_hf_from_folder_maps_splits(tmp_path, hf_cache):
    folder = tmp_path / "visu"
    folder.mkdir()
    VISU.to_parquet(folder / "train.parquet")
    VISU.iloc[:1].to_parquet(folder / "validation.parquet")
    VISU.iloc[1:].to_parquet(folder / "test.parquet")
    rows = list(visu_hf_rows(VisuHfCaptions(dataset=str(folder))))
    assert sorted((r["id"], r["caption"]) for r in rows) == [
        ("visu-test-000000", "A dog in a park."),
        ("visu-train-000000", "A cat on a sofa."), ("visu-train-000001", "A dog in a park."),
        ("visu-val-000000", "A cat on a sofa."),
    ]
    assert all(r["id"].startswith(f"visu-{r['split']}-") for r in rows)


def test_visu_hf_max_rows_and_coco_images(tmp_path, hf_cache):
    path = tmp_path / "visu.parquet"
    VISU.assign(coco_id=[42, 7]).to_parquet(path)
    images = tmp_path / "coco"
    images.mkdir()
    Image.new("RGB", (4, 4)).save(images / "000000000042.jpg")
    rows = list(visu_hf_rows(VisuHfCaptions(dataset=str(path), coco_images=str(images), max_rows_per_split=1)))
    assert len(rows) == 1
    assert rows[0]["image"] == {"bytes": None, "path": str(images / "000000000042.jpg")}
    with pytest.raises(InputError, match=r"row 1: image: file .*000000000007\.jpg does not exist"):
        list(visu_hf_rows(VisuHfCaptions(dataset=str(path), coco_images=str(images))))


def test_visu_hf_missing_column(tmp_path, hf_cache):
    path = tmp_path / "visu.parquet"
    VISU.drop(columns="nsfw").to_parquet(path)
    with pytest.raises(InputError) as e:
        list(visu_hf_rows(VisuHfCaptions(dataset=str(path))))
    assert str(path) in str(e.value) and "column 'nsfw' is missing" in str(e.value)


def test_visu_hf_empty_value(tmp_path, hf_cache):
    path = tmp_path / "visu.parquet"
    VISU.assign(tag=["harm", "  "]).to_parquet(path)
    with pytest.raises(InputError, match=r"split test: row 1: tag: empty or not a string"):
        list(visu_hf_rows(VisuHfCaptions(dataset=str(path))))


def test_visu_hf_unsupported_file(tmp_path, hf_cache):
    path = tmp_path / "visu.txt"
    path.write_text("safe,nsfw,tag\n")
    with pytest.raises(InputError, match="unsupported file type"):
        list(visu_hf_rows(VisuHfCaptions(dataset=str(path))))
