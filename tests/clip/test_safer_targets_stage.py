"""safer_targets with no quadruple (no visu row has an unsafe image): a clear error naming the file and what
makes unsafe images, not "needs at least one safe caption" from deep inside."""

import torch

from safeclip.clip.model import build_world_clip
from safeclip.data.schemas import VISU
from safeclip.io import write_parquet
from tests.clip.conftest import TINY, visu_rows
from tests.robustness.util import make_workspace, run_in_process


def test_no_unsafe_images_is_a_clear_error(tmp_path):
    ws = make_workspace(tmp_path / "ws", {})
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        write_parquet(ws / f"data/visu/{split}.parquet",
                      [{**r, "nsfw_image": None} for r in visu_rows(8, split, seed)], VISU)
    torch.manual_seed(0)
    build_world_clip(TINY, 32).save(ws / "models/base_clip")
    r = run_in_process(ws, "stages.safer_targets")
    assert r.code == 2 and "Traceback" not in r.err, r
    assert "data/visu/train.parquet" in r.err and "nsfw_image" in r.err and "visu.images" in r.err, r
    assert not (ws / "data/safer_clip").exists()
