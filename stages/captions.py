"""captions: safe image-caption pairs from the world, a local COCO folder or ViSU-Text -> data/captions/."""

from collections import Counter

from safeclip.data.captions import coco_rows, visu_hf_rows, world_rows
from safeclip.data.schemas import CAPTIONS, SPLITS
from safeclip.io import atomic_dir, write_metrics, write_parquet
from safeclip.stage import entry_point, run_stage, start


@entry_point
def main() -> None:
    params, log = start("captions")
    cfg = params.captions
    if cfg.source == "world":
        rows = list(world_rows(cfg.world, params.world, params.base.seed, params.base.scale))
    elif cfg.source == "coco":
        rows = list(coco_rows(cfg.coco, params.base.seed))
    else:
        rows = list(visu_hf_rows(cfg.visu_hf))
    by_split = {s: [r for r in rows if r["split"] == s] for s in SPLITS}
    with atomic_dir("data/captions") as out:
        for split, split_rows in by_split.items():
            write_parquet(out / f"{split}.parquet", split_rows, CAPTIONS)
    counts = Counter(r["split"] for r in rows)
    with_image = Counter(r["split"] for r in rows if r["image"] is not None)
    write_metrics("metrics/captions.json", {
        **{f"captions.{s}": counts[s] for s in SPLITS}, **{f"captions.{s}_with_image": with_image[s] for s in SPLITS}})
    log.info("source %s: %s", cfg.source, dict(counts))


if __name__ == "__main__":
    run_stage(main)
