"""ViSU quadruples: drop reasons, shards with their images, schema checks on reuse, and kill-and-resume."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from safeclip.data.captions import world_rows
from safeclip.data.schemas import VISU
from safeclip.data.visu import DROP_REASONS, build_shard, build_split, drop_reason, scene_of, world_image_maker
from safeclip.io import InputError, read_parquet, write_parquet
from safeclip.params import World, WorldCaptions
from safeclip.world.catalogue import BACKGROUNDS, OBJECTS, UNSAFE_TWIN
from safeclip.world.grammar import caption, parse
from safeclip.world.render import RenderConfig

REPO = Path(__file__).resolve().parents[2]
SAFE = "a red circle on the left on a blue background"
TWIN = "a red gun on the left on a blue background"
LOG = logging.getLogger("test.visu")


@pytest.fixture(scope="module")
def train_rows():
    rows = [r for r in world_rows(WorldCaptions(n_train=16, n_val=8, n_test=8), World(), seed=0, scale=1.0)
            if r["split"] == "train"]
    assert len(rows) == 16
    return rows


def twin_of(text: str) -> str:
    return caption(parse(text).unsafe_twin())


def off_scene_twin(text: str) -> str:
    """The unsafe twin on another background (still a valid, unsafe world caption)."""
    scene = parse(text).unsafe_twin()
    bg = next(b for b in BACKGROUNDS if b != scene.background and all(o.colour != b for o in scene.objects))
    return caption(type(scene)(bg, scene.objects))


def safe_rewrite(text: str) -> str:
    scene = parse(text)
    return caption(scene.with_objects(["bar"] * len(scene.objects)))


# --- drop_reason -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("nsfw", "reason"), [
    ("", "empty"),
    ("  \n\t ", "empty"),
    (SAFE, "identical"),
    ("  A RED circle on the   left on a Blue background ", "identical"),
    (TWIN + " and " + TWIN, "too_long"),
    ("a red gun somewhere on a blue background", "unparseable"),
    ("a red gun on the left on a blue background with blood", "unparseable"),
    ("a red square on the left on a blue background", "judged_safe"),
    ("a red bar on the left on a blue background", "judged_safe"),
    (TWIN, None),
    ("A red gun on the left on a blue background.", None),
    ("a red gun on the left on a green background", None),  # off scene, but unsafe: kept (DPO ranks scenes)
])
def test_drop_reason_world(nsfw, reason):
    assert drop_reason(SAFE, nsfw, max_words=16, world=True) == reason


def test_drop_reason_max_words_is_inclusive():
    n = len(TWIN.split())
    assert drop_reason(SAFE, TWIN, max_words=n, world=True) is None
    assert drop_reason(SAFE, TWIN, max_words=n - 1, world=True) == "too_long"


@pytest.mark.parametrize("nsfw", [
    "a red gun somewhere on a blue background", "a red square on the left on a blue background",
    "a man holding a bloody knife", TWIN,
])
def test_paper_mode_never_parses(nsfw):
    assert drop_reason(SAFE, nsfw, max_words=16, world=False) is None


def test_paper_mode_keeps_the_generic_reasons():
    assert drop_reason("a cat", "", 16, world=False) == "empty"
    assert drop_reason("a cat", " A  Cat ", 16, world=False) == "identical"
    assert drop_reason("a cat", "a dead cat " * 10, 16, world=False) == "too_long"


# --- build_shard -------------------------------------------------------------------------------------------------

def hand_picked(rows):
    """One output per row, covering every drop reason and two kinds of kept rewrite."""
    c = [r["caption"] for r in rows]
    return [
        twin_of(c[0]),                                   # kept
        "",                                              # empty
        "  " + c[2].upper().replace(" on ", "  on "),    # identical
        twin_of(c[3]) + " and " + twin_of(c[3]),         # too_long
        "a red gun somewhere nice",                      # unparseable
        safe_rewrite(c[5]),                              # judged_safe
        off_scene_twin(c[6]),                            # kept: unsafe, off scene
        twin_of(c[7]),                                   # kept
    ]


def fixed_rewriter(outputs, calls):
    def rewrite(safe, seed):
        calls.append((list(safe), seed))
        return list(outputs)
    return rewrite


def decode_png(struct) -> np.ndarray:
    assert struct["path"] is None
    with Image.open(io.BytesIO(struct["bytes"])) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_build_shard_world(train_rows, tmp_path):
    rows = train_rows[:8]
    outputs = hand_picked(rows)
    calls = []
    out, stats = build_shard(rows, fixed_rewriter(outputs, calls), 1234, world_image_maker(RenderConfig()),
                             max_words=16, world=True, gen_model="tiny+sft+dpo")
    assert calls == [([r["caption"] for r in rows], 1234)]
    assert stats == Counter({"input": 8, "kept": 3, **{f"dropped.{r}": 1 for r in DROP_REASONS}})
    assert stats["input"] == stats["kept"] + sum(stats[f"dropped.{r}"] for r in DROP_REASONS)
    assert stats["no_image"] == 0
    kept = {0, 6, 7}
    assert [o["id"] for o in out] == [rows[i]["id"] for i in sorted(kept)]
    for o, i in zip(out, sorted(kept), strict=True):
        row = rows[i]
        assert o["nsfw"] == outputs[i] and o["safe"] == row["caption"]
        assert (o["split"], o["source"], o["gen_model"]) == ("train", "world", "tiny+sft+dpo")
        assert o["image"] == row["image"] and o["scene"] == row["scene"] and o["seed"] == row["seed"]
        safe_scene = parse(row["caption"])
        assert o["tag"] == OBJECTS[UNSAFE_TWIN[safe_scene.objects[0].name]].concept
        assert scene_of(o["nsfw_scene"]) == parse(outputs[i])
        assert scene_of(o["nsfw_scene"]).unsafe
        unsafe_img, safe_img = decode_png(o["nsfw_image"]), decode_png(row["image"])
        assert unsafe_img.shape == safe_img.shape == (32, 32, 3)
        assert not np.array_equal(unsafe_img, safe_img)
    # round trip through the VISU contract
    path = tmp_path / "shard.parquet"
    write_parquet(path, out, VISU)
    assert read_parquet(path, VISU).to_pylist() == out


def test_world_image_maker_is_a_minimal_pair(train_rows):
    """Rendered with the safe image's seed: the safe caption reproduces the safe image byte for byte."""
    make = world_image_maker(RenderConfig())
    row = train_rows[0]
    image, seed = make(row, row["caption"])
    assert seed == row["seed"] and image["bytes"] == row["image"]["bytes"]
    twin, _ = make(row, twin_of(row["caption"]))
    a, b = decode_png(twin), decode_png(row["image"])
    # same background pixels (only the glyph changed): most pixels are equal
    assert (a == b).all(-1).mean() > 0.5


def test_build_shard_paper_mode(train_rows):
    rows = train_rows[:8]
    outputs = hand_picked(rows)
    out, stats = build_shard(rows, fixed_rewriter(outputs, []), 0, lambda row, text: (None, None), max_words=16,
                             world=False, gen_model="llama")
    # unparseable and judged_safe are world-only reasons
    assert stats["kept"] == 5 and stats["dropped.unparseable"] == 0 and stats["dropped.judged_safe"] == 0
    assert stats["no_image"] == 5
    assert all(o["nsfw_image"] is None and o["nsfw_scene"] is None and o["seed"] is None for o in out)


def test_build_shard_text_judge_sees_only_surviving_rewrites(train_rows):
    rows = train_rows[:8]
    outputs = hand_picked(rows)
    seen = []

    def judge(texts):
        seen.append(list(texts))
        return [i % 2 == 0 for i in range(len(texts))]  # every second one judged safe

    out, stats = build_shard(rows, fixed_rewriter(outputs, []), 0, lambda row, text: (None, None), max_words=16,
                             world=False, gen_model="llama", judge_text=judge)
    survivors = [outputs[i] for i in (0, 4, 5, 6, 7)]
    assert seen == [survivors]
    assert stats["dropped.judged_safe"] == 2 and stats["kept"] == 3
    assert [o["nsfw"] for o in out] == survivors[0::2]


def test_given_unsafe_captions_skip_the_rewriter(train_rows, tmp_path):
    """visu-hf: captions that already carry their unsafe version are never sent to the LLM."""
    rows = [{**r, "nsfw": twin_of(r["caption"]), "tag": "weapons", "source": "visu-hf"} for r in train_rows[:8]]
    rows[1]["nsfw"] = "   "

    def refuse(safe, seed):
        raise AssertionError("the rewriter must not be called")

    out, stats = build_shard(rows, refuse, 0, lambda row, text: (None, None), max_words=16, world=False,
                             gen_model="visu-hf:x")
    assert stats["kept"] == 7 and stats["dropped.empty"] == 1
    assert [o["nsfw"] for o in out] == [r["nsfw"] for r in rows if r["nsfw"].strip()]
    assert all(o["tag"] == "weapons" and o["source"] == "visu-hf" for o in out)
    write_parquet(tmp_path / "s.parquet", out, VISU)
    assert read_parquet(tmp_path / "s.parquet", VISU).num_rows == 7
    # the world face of the same path: the rewriter stays unused and images are rendered
    out, _ = build_shard(rows, refuse, 0, world_image_maker(RenderConfig()), max_words=16, world=True,
                         gen_model="visu-hf:x")
    assert len(out) == 7 and all(o["nsfw_image"]["bytes"] for o in out)


# --- build_split: schema checks on reused shards ------------------------------------------------------------------

def good_shard(train_rows):
    rows = train_rows[:8]
    out, _ = build_shard(rows, lambda safe, seed: [twin_of(s) for s in safe], 0, world_image_maker(RenderConfig()),
                         max_words=16, world=True, gen_model="m")
    return out


def never(rows, seed):
    raise AssertionError("a complete shard must be reused, not rebuilt")


def place_shard(shard_dir: Path, table: pa.Table, n: int) -> Path:
    shard_dir.mkdir(parents=True, exist_ok=True)
    path = shard_dir / "train-00000.parquet"
    pq.write_table(table, path)
    path.with_suffix(".json").write_text(json.dumps({"input": n, "kept": table.num_rows}))
    return path


def test_reused_shard_missing_a_column_is_named(train_rows, tmp_path):
    out = good_shard(train_rows)
    table = pa.Table.from_pylist(out, schema=VISU).drop_columns(["nsfw"])
    path = place_shard(tmp_path / "shards", table, 8)
    with pytest.raises(InputError) as e:
        build_split("train", train_rows[:8], tmp_path / "shards", 8, 0, never, LOG)
    msg = str(e.value)
    assert str(path) in msg and "'nsfw'" in msg and "missing" in msg and "delete the shard" in msg


def test_reused_shard_with_a_null_required_field_names_the_row(train_rows, tmp_path):
    out = good_shard(train_rows)
    out[2] = {**out[2], "safe": None}
    loose = pa.schema([f.with_nullable(True) for f in VISU])
    path = place_shard(tmp_path / "shards", pa.Table.from_pylist(out, schema=loose), 8)
    with pytest.raises(InputError) as e:
        build_split("train", train_rows[:8], tmp_path / "shards", 8, 0, never, LOG)
    msg = str(e.value)
    assert str(path) in msg and "row 2" in msg and "'safe'" in msg and "null" in msg


def test_reused_shard_that_is_not_parquet(train_rows, tmp_path):
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    (shard_dir / "train-00000.parquet").write_bytes(b"PAR1 truncated")
    (shard_dir / "train-00000.json").write_text("{}")
    with pytest.raises(InputError, match="train-00000.parquet: not a readable Parquet file"):
        build_split("train", train_rows[:8], shard_dir, 8, 0, never, LOG)


def test_valid_shard_is_reused(train_rows, tmp_path, caplog):
    out = good_shard(train_rows)
    place_shard(tmp_path / "shards", pa.Table.from_pylist(out, schema=VISU), 8)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        table, stats = build_split("train", train_rows[:8], tmp_path / "shards", 8, 0, never, LOG)
    assert table.to_pylist() == out and stats == Counter({"input": 8, "kept": 8})
    assert "reusing 1 of 1" in caplog.text


def test_shard_without_its_stats_is_rebuilt(train_rows, tmp_path):
    out = good_shard(train_rows)
    shard_dir = tmp_path / "shards"
    place_shard(shard_dir, pa.Table.from_pylist(out[:3], schema=VISU), 8)
    (shard_dir / "train-00000.json").unlink()  # the parquet of an older run, but the shard never completed
    seeds = []

    def make(rows, seed):
        seeds.append(seed)
        return out, Counter(input=len(rows), kept=len(out))

    table, stats = build_split("train", train_rows[:8], shard_dir, 8, 5, make, LOG)
    assert seeds == [5 * 100_003] and table.num_rows == 8 and stats["kept"] == 8


def test_processes_make_every_nth_shard_and_return_the_split_one_process_makes(train_rows, tmp_path):
    """Under `accelerate launch` process r of n makes shards r, r + n, ... (skipping complete ones) and, after
    the barrier, every process reads the whole split. Played here one process after the other: process 1 stops
    at its second barrier (where the others would still be writing), then process 0 finds 1's shards complete."""
    rows = train_rows[:16]
    made: dict[int, list[int]] = {0: [], 1: []}

    def maker(rank):
        def make(part, seed):
            made[rank].append(seed - 3 * 100_003)
            return good_shard(part), Counter(input=len(part), kept=len(part))
        return make

    class Waiting(Exception):
        pass

    def barrier_of_process_1():
        calls.append(1)
        if len(calls) == 2:
            raise Waiting

    calls: list[int] = []
    with pytest.raises(Waiting):
        build_split("train", rows, tmp_path / "two", 3, 3, maker(1), LOG, 1, 2, barrier_of_process_1)
    table, stats = build_split("train", rows, tmp_path / "two", 3, 3, maker(0), LOG, 0, 2)
    assert made == {1: [1, 3, 5], 0: [0, 2, 4]}  # 16 rows in shards of 3: six shards
    one, one_stats = build_split("train", rows, tmp_path / "one", 3, 3, maker(0), LOG)
    assert table.equals(one) and stats == one_stats == Counter(input=16, kept=16)
    rest, rest_stats = build_split("train", rows, tmp_path / "two", 3, 3, never, LOG, 1, 2)  # only rank 0 reads
    assert rest.num_rows == 0 and rest.schema.equals(VISU) and not rest_stats


def test_empty_split(tmp_path):
    table, stats = build_split("val", [], tmp_path / "shards", 8, 0, never, LOG)
    assert table.num_rows == 0 and table.schema.equals(VISU) and not stats


# --- kill and resume ----------------------------------------------------------------------------------------------

N_ROWS, SHARD_SIZE, SEED, KILL_AT = 80, 8, 7, 4

SCRIPT = textwrap.dedent(f"""
    import json, logging, os, signal, sys
    from functools import partial
    from pathlib import Path

    import safeclip.io
    from safeclip.data.captions import world_rows
    from safeclip.data.visu import build_shard, build_split, world_image_maker, write_split
    from safeclip.params import World, WorldCaptions
    from safeclip.world.grammar import caption, parse
    from safeclip.world.render import RenderConfig

    SEED, SHARD_SIZE = {SEED}, {SHARD_SIZE}
    out = Path(sys.argv[1])
    kill_at = int(os.environ.get("VISU_TEST_KILL_AT", "-1"))
    mode = os.environ.get("VISU_TEST_KILL_MODE", "rewrite")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    rows = [r for r in world_rows(WorldCaptions(n_train={N_ROWS}, n_val=8, n_test=8), World(), seed=0, scale=1.0)
            if r["split"] == "train"]
    calls = out / "calls.txt"

    def rewriter(safe, shard_seed):
        k = shard_seed - SEED * 100_003
        with open(calls, "a") as f:
            f.write(f"{{k}}\\n")
        if mode == "rewrite" and k == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return ["gun gun gun" if (k * SHARD_SIZE + i) % 5 == 4 else caption(parse(s).unsafe_twin())
                for i, s in enumerate(safe)]

    if mode == "rename":  # die after a shard's temporary file is fully written, just before it is renamed
        real_replace = safeclip.io.os.replace

        class _Os:
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(src, dst):
                if Path(dst).name == f"train-{{kill_at:05d}}.parquet":
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(src, dst)

        safeclip.io.os = _Os()

    make_shard = partial(build_shard, rewriter=rewriter, make_image=world_image_maker(RenderConfig()), max_words=24,
                         world=True, gen_model="fake")
    table, stats = build_split("train", rows, out / "shards", SHARD_SIZE, SEED,
                               lambda rows, seed: make_shard(rows, shard_seed=seed), logging.getLogger("visu"))
    write_split(out / "train.parquet", table)
    (out / "stats.json").write_text(json.dumps(dict(stats), sort_keys=True))
""")

N_SHARDS = N_ROWS // SHARD_SIZE


def run_script(tmp_path: Path, out: Path, **env) -> subprocess.CompletedProcess:
    script = tmp_path / "run_visu.py"
    if not script.exists():
        script.write_text(SCRIPT)
    out.mkdir(exist_ok=True)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    for k in ("VISU_TEST_KILL_AT", "VISU_TEST_KILL_MODE"):
        if k not in env:
            full_env.pop(k, None)
    return subprocess.run([sys.executable, str(script), str(out)], cwd=tmp_path, env=full_env, capture_output=True,
                          text=True, timeout=120)


def calls(out: Path) -> list[int]:
    return [int(x) for x in (out / "calls.txt").read_text().split()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("visu_clean")
    out = tmp / "out"
    proc = run_script(tmp, out)
    assert proc.returncode == 0, proc.stderr
    assert calls(out) == list(range(N_SHARDS))
    assert "resumed" not in proc.stderr
    # the split file satisfies the VISU contract
    assert read_parquet(out / "train.parquet", VISU).num_rows == pq.read_table(out / "train.parquet").num_rows
    return pq.read_table(out / "train.parquet"), json.loads((out / "stats.json").read_text())


def test_uninterrupted_run(uninterrupted):
    table, stats = uninterrupted
    garbage = N_ROWS // 5
    assert table.num_rows == N_ROWS - garbage
    assert stats == {"input": N_ROWS, "kept": N_ROWS - garbage, "dropped.unparseable": garbage}
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # shards are concatenated in order
    nsfw = table.column("nsfw").to_pylist()
    assert all(parse(n).unsafe for n in nsfw)


@pytest.mark.parametrize("mode", ["rewrite", "rename"])
def test_killed_run_resumes_to_the_same_table(tmp_path, uninterrupted, mode):
    out = tmp_path / "out"
    killed = run_script(tmp_path, out, VISU_TEST_KILL_AT=str(KILL_AT), VISU_TEST_KILL_MODE=mode)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    shard_dir = out / "shards"
    done = sorted(p.name for p in shard_dir.glob("train-*.parquet"))
    assert done == [f"train-{k:05d}.parquet" for k in range(KILL_AT)]
    assert not (out / "train.parquet").exists() and not (out / "stats.json").exists()
    assert not list(out.glob(".train.parquet*"))  # no half-written output either
    assert calls(out) == list(range(KILL_AT + 1))

    (out / "calls.txt").unlink()
    resumed = run_script(tmp_path, out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"reusing {KILL_AT} of {N_SHARDS} complete shards" in resumed.stderr
    assert calls(out) == list(range(KILL_AT, N_SHARDS))  # only the missing shards were generated

    table, stats = uninterrupted
    got = pq.read_table(out / "train.parquet")
    assert got.num_rows == table.num_rows
    assert got.column("id").to_pylist() == table.column("id").to_pylist()  # nothing lost, nothing duplicated
    assert got.column("nsfw").to_pylist() == table.column("nsfw").to_pylist()
    assert got.column("nsfw_image").to_pylist() == table.column("nsfw_image").to_pylist()
    assert got.equals(table)
    assert json.loads((out / "stats.json").read_text()) == stats
