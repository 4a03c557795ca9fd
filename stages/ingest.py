"""ingest: curated safe->unsafe pairs (JSONL in git) -> data/pairs/{train,val}.parquet + metrics/ingest.json."""

from safeclip.data.pairs import pair_id, read_pairs, split_pairs, tag_counts
from safeclip.data.schemas import PAIRS
from safeclip.io import atomic_dir, write_metrics, write_parquet
from safeclip.stage import entry_point, run_stage, start


@entry_point
def main() -> None:
    params, log = start("ingest")
    cfg = params.ingest
    pairs = read_pairs(cfg.pairs_file)
    splits = split_pairs(pairs, cfg.val_fraction, params.base.seed)
    with atomic_dir("data/pairs") as out:
        for split, rows in splits.items():
            write_parquet(out / f"{split}.parquet", [
                {"id": pair_id(p), "split": split, "safe": p.safe, "unsafe": p.unsafe, "tag": p.tag,
                 "source_file": cfg.pairs_file, "source_line": p.line} for p in rows], PAIRS)
    metrics = {"ingest.pairs": len(pairs), **{f"ingest.{s}": len(r) for s, r in splits.items()}}
    metrics.update({f"ingest.tag.{t.replace(' ', '_')}": n for t, n in sorted(tag_counts(pairs).items())})
    write_metrics("metrics/ingest.json", metrics)
    log.info("%d pairs from %s: %s", len(pairs), cfg.pairs_file, {s: len(r) for s, r in splits.items()})


if __name__ == "__main__":
    run_stage(main)
