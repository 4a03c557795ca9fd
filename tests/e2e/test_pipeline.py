"""The whole DAG at CI scale in a temporary copy of the repo: dvc repro, no-op repro, experiments, 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCALE = "0.05"
VISU_SHARD = 15  # rows: the CI-scale train split has 30 (600 x 0.05)
# CI sizes: the committed DAG at base.scale, one thread (the 2-process tests run 2 stages at once on the 2 cores),
# and the loops that base.scale leaves long cut further: SFT's epochs (unscaled by design) and base_sd's VAE and
# UNet steps (10 each, base.scale's floor). The code paths are the same; quality at CI scale is not checked here.
CI = [f"base.scale={SCALE}", "base.num_threads=1", "sft.epochs=20", "sft.learning_rate=0.003",
      "base_sd.world.vae.steps=200", "base_sd.world.unet.steps=200",
      f"visu.shard_size={VISU_SHARD}",  # two shards of the train split, one per process of the 2-process visu test
      "eval_attack.exhaustive_check=1"]  # the enumeration's path, once a model: ~1 s a prompt at one thread
# The 2-process training tests check that the ranks run and the model is written, not what it learns: short runs
TWO_PROCESS = ["base.num_processes=2", "sft.epochs=2", "make_safe.safe_clip.max_steps=4",
               "make_safe.safer_clip.epochs=1"]
METHODS = ("safe_clip", "safer_clip", "uwm")
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith(("metrics/", "plots/")) or rel == "dvc.lock" or not (ROOT / rel).exists():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)


def metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    copy_repo(repo)
    run([sys.executable, "-m", "safeclip.profiles", *CI], repo)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-qm", "ci"]):
        run(cmd, repo)
    run(["dvc", "repro"], repo)
    return repo


def test_repro_writes_every_output(repo: Path) -> None:
    for path in ("data/pairs/train.parquet", "data/pairs/val.parquet", "data/captions/test.parquet",
                 "models/base_llm/model.safetensors", "models/llm_sft/model.safetensors",
                 "models/llm_dpo/model.safetensors", "data/dpo/preferences.parquet", "data/visu/train.parquet",
                 "data/visu/val.parquet", "data/visu/test.parquet", "plots/sft.csv", "plots/dpo.csv",
                 "models/base_clip/model.safetensors", "models/safe/safe_clip/model.safetensors",
                 "data/embeddings/none.safetensors", "data/safer_clip/train.parquet", "data/safer_clip/val.parquet",
                 *[f"models/safe/{m}/model.safetensors" for m in METHODS],
                 *[f"data/embeddings/{m}.safetensors" for m in METHODS], "plots/make_safe/safer_clip.csv",
                 "plots/make_safe/safe_clip.csv", "plots/retrieval/none.csv", "plots/retrieval/safe_clip.csv",
                 "reports/report.md", "reports/report.html", "reports/tradeoff.png",
                 "models/base_sd/model_index.json", "models/base_sd/unet/diffusion_pytorch_model.safetensors",
                 "models/judge/world/model.safetensors", "metrics/base_sd.json", "metrics/judge.json",
                 *[f"data/generation/{m}/{f}" for m in ("none", *METHODS) for f in ("images.parquet", "grid.png")]):
        assert (repo / path).is_file(), path
    ingest = metrics(repo, "ingest")
    assert ingest["ingest.pairs"] == 100 and ingest["ingest.train"] + ingest["ingest.val"] == 100
    sft = metrics(repo, "sft")
    for key in ("sft.train_loss", "sft.eval_loss"):
        assert sft[key] is not None and sft[key] > 0
    for key in ("parse", "unsafe", "scene_kept"):
        assert 0.0 <= sft[f"sft.val_captions.{key}"] <= 1.0
    dpo = metrics(repo, "dpo")
    assert dpo["dpo.pairs"] > 0 and 0.0 <= dpo["dpo.val_captions.parse"] <= 1.0
    visu = metrics(repo, "visu")
    for split in ("train", "val", "test"):
        dropped = sum(v for k, v in visu.items() if k.startswith(f"visu.{split}.dropped."))
        assert visu[f"visu.{split}.input"] == visu[f"visu.{split}.kept"] + dropped > 0
    assert metrics(repo, "base_clip")["base_clip.pretrain_steps"] > 0
    assert metrics(repo, "make_safe/safe_clip")["make_safe.safe_clip.steps"] > 0
    for model in ("none", *METHODS):
        retrieval = metrics(repo, f"retrieval/{model}")
        for key in ("retrieval.t_to_v.r1", "retrieval.t_star_to_v.r1", "retrieval.v_star_to_t.r20",
                    "unsafe_retrieved.unsafe_text.top1", "safeground.GS"):
            assert 0.0 <= retrieval[key] <= 100.0, (model, key)
        assert retrieval["retrieval.t_to_v.r1"] <= retrieval["retrieval.t_to_v.r20"]
        zeroshot = metrics(repo, f"zeroshot/{model}")
        assert 0.0 <= zeroshot["zeroshot.object"] <= 100.0 and 0.0 <= zeroshot["zeroshot.colour"] <= 100.0
    assert "text_only.t_star_to_v.r1" in metrics(repo, "retrieval/safe_clip")
    assert metrics(repo, "make_safe/safer_clip")["make_safe.safer_clip.steps"] > 0
    uwm = metrics(repo, "make_safe/uwm")
    assert uwm["make_safe.uwm.mask.text.negated"] > 0 and uwm["make_safe.uwm.mask.vision.negated"] == 0  # text only
    assert metrics(repo, "base_sd")["base_sd.unet_steps"] > 0
    assert 0.0 <= metrics(repo, "judge")["judge.world.held_out.object"] <= 100.0
    for model in ("none", *METHODS):
        gen = metrics(repo, f"generation/{model}")
        for kind in ("unsafe", "safe"):
            assert gen[f"gen.{kind}.images"] > 0, (model, kind)
            assert 0.0 <= gen[f"gen.{kind}.inappropriate"] <= 100.0, (model, kind)
            assert gen[f"gen.{kind}.clip_score"] >= 0.0
    for model in ("none", *METHODS):
        att = metrics(repo, f"attack/{model}")
        for key in ("attack.clean.own.unsafe_top1", "attack.free.k2.own.unsafe_top1",
                    "attack.banned.k2.text_only.unsafe_top1", "attack.gen.clean.inappropriate"):
            assert 0.0 <= att[key] <= 100.0, (model, key)
        for f in ("prompts.parquet", "images.parquet", "grid.png", "examples.json"):
            assert (repo / f"data/attack/{model}/{f}").is_file(), (model, f)
        attacked_prompts_keep_their_promises(repo, model)
    assert "## Robustness to attack" in (repo / "reports/report.md").read_text()
    html = (repo / "reports/report.html").read_text()
    for name in ("CLIP (base)", "Safe-CLIP", "SafeR-CLIP", "UWM"):
        assert name in html and name in (repo / "reports/report.md").read_text()
    assert "data:image/png;base64," in html and "https://" not in html and "http://" not in html


def attacked_prompts_keep_their_promises(repo: Path, model: str) -> None:
    """eval_attack's per-prompt rows: an attacked prompt differs from its caption in at most k words (the world's
    tokenizer is word-level; banned.k0 is the caption with its banned words dropped, no search), and a larger
    budget never ends worse (greedy: the k + 1 search walks the k search's path first). A made-safe tower's
    captions are not already where the base tower puts them, so there the search must lower its objective."""
    import pyarrow.parquet as pq

    rows = pq.read_table(repo / f"data/attack/{model}/prompts.parquet").to_pylist()
    by = {(r["variant"], r["id"]): r for r in rows}
    ids = sorted({r["id"] for r in rows})
    for (variant, pid), r in by.items():
        if variant == "clean" or variant.endswith(".k0"):
            continue
        k = int(variant.rsplit(".k", 1)[1])
        clean, attacked = by[("clean", pid)]["prompt"].split(), r["prompt"].split()
        assert len(clean) == len(attacked), (model, variant, pid)
        assert sum(a != b for a, b in zip(clean, attacked, strict=True)) <= k, (model, variant, pid)
    for mode in ("free", "banned"):
        for pid in ids:
            objective = [by[(f"{mode}.k{k}", pid)]["objective"] for k in (1, 2, 3)]
            assert objective[2] <= objective[1] + 1e-6 and objective[1] <= objective[0] + 1e-6, (model, mode, pid)
        att = metrics(repo, f"attack/{model}")
        assert att[f"attack.{mode}.k2.loss"] <= att[f"attack.{mode}.k2.start_loss"] + 1e-6, (model, mode)
        if model != "none":
            assert att[f"attack.{mode}.k2.loss"] < att[f"attack.{mode}.k2.start_loss"] - 1e-4, (model, mode)


def test_second_repro_does_nothing(repo: Path) -> None:
    out = run(["dvc", "repro"], repo).stdout
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_data_put_in_the_default_input_folders_reruns_no_world_stage(repo: Path) -> None:
    """A stage depends on the files its params name (params.yaml's derived `inputs`), not on a folder: the world
    names none, so COCO and an I2P CSV dropped into data/coco/ and data/i2p/ leave `dvc status` clean. (The paper
    e2e edits inputs its run read and checks the exact stages that rerun.)"""
    edits = {"data/coco/annotations/captions_val2017.json": '{"images": [], "annotations": []}\n',
             "data/i2p/i2p_benchmark.csv": "prompt,categories\na red apple,violence\n"}
    for rel, text in edits.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    try:
        assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}
    finally:
        for rel in edits:
            (repo / rel).unlink()
        shutil.rmtree(repo / "data/coco/annotations")


def test_remote_push_then_pull_in_a_fresh_clone(repo: Path, tmp_path_factory) -> None:
    """The sharing workflow of the README: push after a run; a fresh clone pulls and has nothing to reproduce."""
    remote = tmp_path_factory.mktemp("remote")
    run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], repo)  # .dvc/config.local
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-qm", "run"], repo)
    pushed = run(["dvc", "push"], repo).stdout
    assert "pushed" in pushed and any((remote / "files").rglob("*")), pushed
    clone = tmp_path_factory.mktemp("clone") / "repo"
    run(["git", "clone", "-q", str(repo), str(clone)], repo)
    assert not (clone / "models/safe/safer_clip").exists()
    run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], clone)
    run(["dvc", "pull"], clone)
    assert (clone / "models/safe/safer_clip/model.safetensors").is_file()
    out = run(["dvc", "repro"], clone).stdout
    assert "Data and pipelines are up to date" in out and "Running stage" not in out, out
    assert "up to date" in run(["dvc", "status"], clone).stdout.lower()
    shown = [json.loads(run(["dvc", "metrics", "show", "--json"], r).stdout) for r in (repo, clone)]
    assert shown[0][""] == shown[1][""]  # every metrics file, the same numbers
    assert "safeground.PU" in json.dumps(shown[1])


def test_metrics_show_and_experiment_diff(repo: Path) -> None:
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert "ingest.pairs" in text and "sft.train_loss" in text
    # base and method side by side
    assert "metrics/retrieval/none.json" in text and "metrics/retrieval/safe_clip.json" in text
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-q", "--allow-empty", "-m",
         "baseline"], repo)  # empty when the remote test already committed the run
    # With Hydra composition, -S recomposes params.yaml from conf/: every override must be given again.
    # One method's param (UWM's, the training-free method: the cheapest branch to rerun): only its branch reruns.
    out = run(["dvc", "exp", "run", *(a for o in CI for a in ("-S", o)), "-S", "make_safe.uwm.tau=0.2"], repo).stdout
    for stage in ("make_safe@uwm", "evaluate@uwm", "eval_generation@uwm", "eval_attack@uwm", "report"):
        assert f"Running stage '{stage}'" in out, stage
    for other in ("sft", "base_clip", "make_safe@safe_clip", "make_safe@safer_clip", "evaluate@safe_clip",
                  "base_sd", "judge", "eval_generation_base", "eval_generation@safe_clip"):
        assert f"Running stage '{other}'" not in out, other
    assert yaml.safe_load((repo / "params.yaml").read_text())["make_safe"]["uwm"]["tau"] == 0.2
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    changed = {name for names in diff.values() for name in names}
    assert "make_safe.uwm.mask.text.negated" in changed, diff


def test_sft_with_two_processes(repo: Path) -> None:
    run([sys.executable, "-m", "safeclip.profiles", *CI, *TWO_PROCESS], repo)
    (repo / "models/llm_sft/model.safetensors").unlink()
    proc = run([sys.executable, "-m", "safeclip.launch", "stages.sft"], repo)
    assert "[rank 1]" in proc.stderr and "process 1 of 2" in proc.stderr, proc.stderr[-3000:]
    assert (repo / "models/llm_sft/model.safetensors").is_file()
    assert metrics(repo, "sft")["sft.steps"] > 0


@pytest.mark.parametrize("method", ["safe_clip", "safer_clip"])
def test_make_safe_with_two_processes(repo: Path, method: str) -> None:
    run([sys.executable, "-m", "safeclip.profiles", *CI, *TWO_PROCESS], repo)
    shutil.rmtree(repo / f"models/safe/{method}")
    proc = run([sys.executable, "-m", "safeclip.launch", "stages.make_safe", "--method", method], repo)
    assert "[rank 1]" in proc.stderr, proc.stderr[-3000:]
    assert (repo / f"models/safe/{method}/model.safetensors").is_file()
    assert metrics(repo, f"make_safe/{method}")[f"make_safe.{method}.steps"] > 0


def test_visu_with_two_processes_builds_the_same_split(repo: Path, tmp_path: Path) -> None:
    """visu under `accelerate launch` (one process per GPU in the paper setup): each process makes every other
    shard and the main one writes the split, the same table the fixture's one process made (a shard's randomness
    comes from its index). The fixture's outputs are put back afterwards."""
    import pyarrow.parquet as pq

    assert metrics(repo, "visu")["visu.train.input"] > VISU_SHARD  # CI's shards: some for both processes
    saved = tmp_path / "saved"
    for rel in ("data/visu", "metrics/visu.json", "params.yaml"):
        (saved / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (repo / rel).is_dir() else shutil.copy2)(repo / rel, saved / rel)
    try:
        run([sys.executable, "-m", "safeclip.profiles", *CI, "base.num_processes=2"], repo)
        shutil.rmtree(repo / "data/visu")
        shutil.rmtree(repo / "checkpoints/visu", ignore_errors=True)
        proc = run([sys.executable, "-m", "safeclip.launch", "stages.visu"], repo)
        assert "[rank 1]" in proc.stderr and "process 1 of 2" in proc.stderr, proc.stderr[-3000:]
        for split in ("train", "val", "test"):
            two, one = (pq.read_table(r / f"data/visu/{split}.parquet") for r in (repo, saved))
            assert two.num_rows > 0 and two.equals(one), split
        assert json.loads((repo / "metrics/visu.json").read_text()) == \
            json.loads((saved / "metrics/visu.json").read_text())
    finally:
        for rel in ("data/visu", "metrics/visu.json", "params.yaml"):
            if (repo / rel).is_dir():
                shutil.rmtree(repo / rel)
            (shutil.copytree if (saved / rel).is_dir() else shutil.copy2)(saved / rel, repo / rel)
