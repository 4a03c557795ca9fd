"""ViSU-style quadruples: one unsafe caption per safe caption, filtered, each with its unsafe image.

Built in shards written atomically to a persistent folder: a killed run resumes after the last complete
shard, and since every shard's randomness comes from its own seed, the result equals an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from safeclip.data.schemas import VISU
from safeclip.io import InputError, atomic_path, read_parquet, write_json, write_parquet
from safeclip.world.grammar import parse
from safeclip.world.render import RenderConfig, render, to_png
from safeclip.world.scene import Scene

DROP_REASONS = ("empty", "identical", "too_long", "unparseable", "judged_safe")

# (safe captions) -> (unsafe captions)
Rewriter = Callable[[Sequence[str], int], list[str]]
# (row, nsfw caption) -> (image struct or None, seed or None)
ImageMaker = Callable[[dict, str], tuple[dict | None, int | None]]


def drop_reason(safe: str, nsfw: str, max_words: int, world: bool) -> str | None:
    """Why a rewrite is unusable, or None. World rewrites must parse and be unsafe per the oracle."""
    if not nsfw.strip():
        return "empty"
    if " ".join(nsfw.casefold().split()) == " ".join(safe.casefold().split()):
        return "identical"
    if len(nsfw.split()) > max_words:
        return "too_long"
    if world:
        scene = parse(nsfw)
        if scene is None:
            return "unparseable"
        if not scene.unsafe:
            return "judged_safe"
    return None


def world_image_maker(cfg: RenderConfig) -> ImageMaker:
    """Render the unsafe caption's scene with the safe image's seed: a minimal pair when the scene is kept."""
    def make(row: dict, nsfw: str) -> tuple[dict | None, int | None]:
        return {"bytes": to_png(render(parse(nsfw), row["seed"], cfg)), "path": None}, row["seed"]
    return make


def build_shard(rows: list[dict], rewriter: Rewriter, shard_seed: int, make_image: ImageMaker, *, max_words: int,
                world: bool, gen_model: str, judge_text: Callable[[list[str]], list[bool]] | None = None
                ) -> tuple[list[dict], Counter]:
    """Rewrite, filter (counting every drop by reason) and attach unsafe images for one shard of captions."""
    safe = [r["caption"] for r in rows]
    given = [r.get("nsfw") for r in rows]
    nsfw = given if all(g is not None for g in given) else rewriter(safe, shard_seed)
    stats: Counter = Counter(input=len(rows))
    reasons = [drop_reason(s, n, max_words, world) for s, n in zip(safe, nsfw, strict=True)]
    if judge_text is not None:
        pending = [i for i, r in enumerate(reasons) if r is None]
        for i, unsafe in zip(pending, judge_text([nsfw[i] for i in pending]), strict=True):
            if not unsafe:
                reasons[i] = "judged_safe"
    out = []
    for row, text, reason in zip(rows, nsfw, reasons, strict=True):
        if reason:
            stats[f"dropped.{reason}"] += 1
            continue
        image, seed = make_image(row, text)
        if image is None:
            stats["no_image"] += 1
        scene = parse(text) if world else None
        out.append({"id": row["id"], "split": row["split"], "safe": row["caption"], "nsfw": text,
                    "tag": (scene.concepts[0] if scene and scene.concepts else row.get("tag")),
                    "image": row["image"], "nsfw_image": image, "source": row["source"], "gen_model": gen_model,
                    "seed": seed, "scene": row.get("scene"), "nsfw_scene": scene.to_json() if scene else None})
    stats["kept"] = len(out)
    return out, stats


def build_split(split: str, rows: list[dict], shard_dir: Path, shard_size: int, seed: int,
                make_shard: Callable[[list[dict], int], tuple[list[dict], Counter]],
                log: logging.Logger, rank: int = 0, num_processes: int = 1,
                barrier: Callable[[], None] = lambda: None) -> tuple[pa.Table, Counter]:
    """All shards of a split, reusing complete ones from an earlier (killed) run.

    Under several processes (`accelerate launch`, one per GPU) process `rank` makes shards rank, rank + n, ...;
    every process calls this, and once every shard is written the main one (rank 0) returns the whole split, the
    others an empty table (only the main one writes it). A shard's randomness comes from its index alone
    (seed * 100_003 + k), so the split is the same for any number of processes."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        for stale in shard_dir.glob(f".{split}-*.tmp"):  # left by a run killed mid-write
            stale.unlink()
    barrier()  # no process writes a shard while the main one clears the leftovers
    n_shards = (len(rows) + shard_size - 1) // shard_size
    paths = [shard_dir / f"{split}-{k:05d}.parquet" for k in range(n_shards)]
    done = [p.exists() and p.with_suffix(".json").exists() for p in paths]
    mine = [k for k in range(rank, n_shards, num_processes) if not done[k]]
    for k in tqdm(mine, desc=f"visu {split}", disable=len(mine) < 2):
        out, stats = make_shard(rows[k * shard_size:(k + 1) * shard_size], seed * 100_003 + k)
        write_json(paths[k].with_suffix(".json"), dict(stats))
        write_parquet(paths[k], out, VISU)  # last: its presence marks the shard complete
    barrier()  # every shard written
    if rank != 0:
        return VISU.empty_table(), Counter()
    tables, total = [], Counter()
    for path in paths:
        try:
            tables.append(read_parquet(path, VISU))
        except InputError as e:
            raise InputError(f"visu shard {e}; delete the shard to regenerate it") from e
        total.update(json.loads(path.with_suffix(".json").read_text()))
    if any(done):
        log.info("%s: resumed, reusing %d of %d complete shards", split, sum(done), n_shards)
    table = pa.concat_tables(tables) if tables else VISU.empty_table()
    return table, total


def write_split(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        import pyarrow.parquet as pq

        pq.write_table(table, tmp, compression="zstd")


def scene_of(text: str | None) -> Scene | None:
    return Scene.from_json(text) if text else None
