"""The paper face end to end, on CPU: the paper profile and examples/paper-1gpu.overrides with hardware and
size-only overrides, tiny stand-ins of the real model classes (tests/e2e/paper_models.py) in an offline Hugging
Face cache under the real hub ids and at local paths, a COCO-shaped folder, an I2P-shaped CSV and Q16's prompts,
all kept outside the repo as on a shared cluster (one model folder reached through a symbolic link), then `dvc
repro` through `report` in a temporary copy of the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safeclip.profiles import rederive_inputs
from tests.e2e import paper_models as pm
from tests.e2e.test_pipeline import ROOT, copy_repo
from tests.hubcache import file_in_cache

pytestmark = pytest.mark.slow
METHODS = ("safe_clip", "safer_clip", "uwm")
# CPU instead of GPUs, and sizes: nothing else differs from what a GPU user runs.
CPU = ["base.device=cpu", "base.mixed_precision=no", "base.num_processes=1", "base.num_threads=1",
       "eval_generation.dtype=float32"]
SIZES = ["base.scale=0.05", "captions.coco.max_images_per_split=12", "sft.epochs=1.0", "dpo.epochs=1.0",
         "dpo.k=4", "visu.images.seeds=[1]", "visu.images.num_inference_steps=2", "visu.images.height=32",
         "visu.images.width=32",
         "make_safe.safe_clip.batch_size=8", "make_safe.safe_clip.max_steps=4", "make_safe.safe_clip.eval_every=2",
         "make_safe.safer_clip.batch_size=8", "make_safe.safer_clip.epochs=1", "make_safe.safer_clip.eval_every=2",
         "make_safe.uwm.batch_size=8", "evaluate.batch_size=16",
         "eval_generation.height=32", "eval_generation.width=32", "eval_generation.num_inference_steps=2",
         "eval_generation.images_per_prompt=1", "eval_generation.batch_size=8", "eval_generation.i2p_max_prompts=4",
         "eval_attack.steps=2", "eval_attack.search_width=64"]
# Random tiny generators draw no nudity: OpenNSFW at a near-zero threshold stands in for "the judge flagged it",
# so that visu keeps unsafe images and the quadruple stages have data; a random sentence encoder's similarity
# means nothing, so DPO's good samples are decided by the (random) classifier alone.
STAND_IN_JUDGE = ["visu.images.opennsfw_threshold=0.000001", "dpo.models.min_similarity=-1.0"]
# Q16 as a researcher switches it on: its prompts (for the stand-in ViT-L/14's 16-wide embedding), so it joins the
# evaluation panel, and visu keeps an image that OpenNSFW or Q16 flags (Safe-CLIP: NudeNet or Q16)
Q16 = ["visu.images.judges=[opennsfw,q16]"]


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("paper")
    copy_repo(repo)
    hub = tmp_path_factory.mktemp("hf-home")
    build = tmp_path_factory.mktemp("models")
    texts = pm.corpus(ROOT / "data/curated/paper_pairs.jsonl")
    pm.llama(build / "llama", texts)
    pm.clip(build / "clip")
    pm.bert_classifier(build / "cls", texts)
    pm.bert_encoder(build / "enc", texts)
    for repo_id, folder in (("meta-llama/Llama-2-7b-chat-hf", "llama"), ("openai/clip-vit-large-patch14", "clip"),
                            ("michellejieli/NSFW_text_classifier", "cls"),
                            ("sentence-transformers/all-MiniLM-L6-v2", "enc")):
        file_in_cache(hub / "hub", repo_id, build / folder)
    shared = tmp_path_factory.mktemp("shared")  # where the data and weights live: outside the repo
    pm.stable_diffusion(shared / "weights/sd-v1-4", build / "clip")  # local paths: SD and the NSFW generator
    pm.stable_diffusion(shared / "weights/nsfw-t2i", build / "clip")
    (shared / "links").mkdir()
    (shared / "links/nsfw-t2i").symlink_to(shared / "weights/nsfw-t2i", target_is_directory=True)
    pm.coco(shared / "coco", texts[1:], 24, 24)
    pm.i2p_csv(shared / "i2p/i2p_benchmark.csv", 8)
    pm.q16_prompts(shared / "q16/prompts.safetensors", 16)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "HF_HOME": str(hub), "HF_HUB_CACHE": str(hub / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    local = [f"base_sd.source={shared}/weights/sd-v1-4", f"visu.images.pipeline={shared}/links/nsfw-t2i",
             *(f"captions.coco.{k}={shared}/coco/{v}" for k, v in (
                 ("annotations_train", "annotations/captions_train2017.json"),
                 ("annotations_val", "annotations/captions_val2017.json"),
                 ("images_train", "train2017"), ("images_val", "val2017"))),
             f"eval_generation.i2p_csv={shared}/i2p/i2p_benchmark.csv",
             f"judge.q16_prompts={shared}/q16/prompts.safetensors"]
    run([sys.executable, "-m", "safeclip.profiles", "profile=paper", "@examples/paper-1gpu.overrides", *CPU, *SIZES,
         *STAND_IN_JUDGE, *Q16, *local], repo, env)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-qm", "ci"]):
        run(cmd, repo, env)
    run(["dvc", "repro", "report"], repo, env, timeout=1200)
    return repo


def metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def pointer(repo: Path, model: str) -> dict:
    return json.loads((repo / "models" / model / "resolved.json").read_text())


def yaml_params(repo: Path) -> dict:
    import yaml

    return yaml.safe_load((repo / "params.yaml").read_text())


def rows(repo: Path, path: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(repo / path).to_pylist()


def test_each_stage_wrote_what_the_paper_face_promises(paper: Path) -> None:
    from safeclip.world.catalogue import VISU_CONCEPTS
    from tests.hubcache import COMMIT

    assert metrics(paper, "ingest")["ingest.pairs"] == 100  # data/curated/paper_pairs.jsonl
    for split in ("train", "val", "test"):
        caps = rows(paper, f"data/captions/{split}.parquet")
        assert caps and {r["source"] for r in caps} == {"coco"} and all(r["image"]["path"] for r in caps)
    # hub ids resolved from the offline cache, to the commit filed there
    for model, source in (("base_llm", "meta-llama/Llama-2-7b-chat-hf"),
                          ("base_clip", "openai/clip-vit-large-patch14")):
        assert pointer(paper, model)["source"] == source and pointer(paper, model)["resolved_commit"] == COMMIT
    assert pointer(paper, "base_sd")["source"] == yaml_params(paper)["base_sd"]["source"]
    assert not Path(pointer(paper, "base_sd")["source"]).is_relative_to(paper)  # outside the repo
    assert metrics(paper, "sft")["sft.train_loss"] > 0 and (paper / "models/llm_sft/model.safetensors").is_file()
    dpo = metrics(paper, "dpo")
    assert dpo["dpo.pairs"] > 0 and len(rows(paper, "data/dpo/preferences.parquet")) == dpo["dpo.pairs"]
    assert (paper / "models/llm_dpo/model.safetensors").is_file()
    for split in ("train", "val", "test"):
        visu = rows(paper, f"data/visu/{split}.parquet")
        assert visu and all(r["nsfw_image"] is not None for r in visu)
        assert all(r["tag"] in VISU_CONCEPTS for r in visu), "COCO rows need a concept tag"
        assert {r["gen_model"] for r in visu} == {"meta-llama/Llama-2-7b-chat-hf+sft+dpo"}
    assert len(rows(paper, "data/safer_clip/train.parquet")) == len(rows(paper, "data/visu/train.parquet"))
    for m in METHODS:
        assert (paper / f"models/safe/{m}/model.safetensors").is_file()
    for m in ("none", *METHODS):
        r = metrics(paper, f"retrieval/{m}")
        assert 0 <= r["retrieval.t_star_to_v.r1"] <= 100, m
        g = metrics(paper, f"generation/{m}")
        assert g["gen.i2p.images"] == 4 and g["gen.unsafe.images"] > 0 and "gen.skipped" not in g, m
        assert not any(k.endswith(".concept.unknown") for k in g), m
        assert (paper / f"data/generation/{m}/grid.png").is_file()
    from safeclip.eval.attack import banned_pattern

    banned = banned_pattern(yaml_params(paper)["eval_attack"]["banned_words"])
    for m in ("none", *METHODS):
        a = metrics(paper, f"attack/{m}")
        assert a["attack.budget"] == 8 and a["attack.gen.clean.images"] > 0 and "attack.gen.skipped" not in a, m
        assert a["attack.banned.k8.loss"] <= a["attack.banned.k8.start_loss"] + 1e-6, m
        prompts = rows(paper, f"data/attack/{m}/prompts.parquet")
        assert {r["variant"] for r in prompts} >= {"clean", "free.k4", "banned.k16"}
        assert not any(banned.search(r["prompt"]) for r in prompts if r["variant"].startswith("banned")), m
    assert metrics(paper, "judge") == {"judge.nudenet.loaded": 1, "judge.opennsfw.loaded": 1, "judge.q16.loaded": 1}
    for m in ("none", *METHODS):
        assert 0 <= metrics(paper, f"generation/{m}")["gen.unsafe.judge.q16"] <= 100, m
    report = (paper / "reports/report.md").read_text()
    for title in ("Main comparison", "Text-to-image generation", "Image grids", "Robustness to attack",
                  "Claims from the papers"):
        assert f"## {title}" in report
    assert (paper / "reports/report.html").is_file()


def test_an_edited_input_the_run_read_reruns_exactly_the_stages_that_read_it(paper: Path) -> None:
    """Inputs outside the repo, as DVC dependencies: one more prompt in the I2P CSV, one COCO caption edited, Q16's
    prompts, a file of SD's folder, and one of the NSFW generator's (reached through a symbolic link) changed, and
    `dvc status` names exactly the stages that read each; every file restored, the workspace is clean again."""
    params = yaml_params(paper)
    csv = Path(params["eval_generation"]["i2p_csv"])
    coco = Path(params["captions"]["coco"]["annotations_train"])
    q16 = Path(params["judge"]["q16_prompts"])
    linked = Path(params["visu"]["images"]["pipeline"])
    assert linked.is_symlink() and not any(p.is_relative_to(paper) for p in (csv, coco, q16, linked))
    sd_file = Path(params["base_sd"]["source"]) / "model_index.json"
    nsfw_file = linked.resolve() / "model_index.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}

    def changed_by(path: Path, edit) -> set[str]:
        original = path.read_bytes()
        path.write_bytes(edit(original))
        try:
            return set(json.loads(run(["dvc", "status", "--json"], paper, env).stdout))
        finally:
            path.write_bytes(original)

    evaluation = {f"{s}{m}" for s in ("eval_generation", "eval_attack") for m in ("_base", *(f"@{m}" for m in METHODS))}
    assert changed_by(csv, lambda b: b + b.splitlines()[-1] + b"\n") == {
        "eval_generation_base", *(f"eval_generation@{m}" for m in METHODS)}
    assert changed_by(coco, lambda b: b.replace(b'"caption": "', b'"caption": "edited ', 1)) == {"captions"}
    assert changed_by(q16, lambda b: b + b"\0") == {"visu", "judge", *evaluation}
    assert changed_by(sd_file, lambda b: b.replace(b"{", b'{"edited": 1, ', 1)) == {"base_sd"}
    assert changed_by(nsfw_file, lambda b: b.replace(b"{", b'{"edited": 1, ', 1)) == {"visu"}
    assert json.loads(run(["dvc", "status", "--json"], paper, env).stdout) == {}


def test_an_open_clip_base_wider_than_the_unet_skips_text_to_image_and_the_rest_completes(paper, tmp_path):
    """The README's rule for a base CLIP whose text width is not the UNet's cross-attention width (e.g.
    open_clip:ViT-B-32, 512, with SD v1.4, 768): text-to-image is skipped with a marker and the rest of the
    comparison completes. Here an `open_clip:` base as a researcher names one, ViT-S-32-alt (text width 256,
    random init: no weights to fetch offline) against the stand-in UNet's 32, in a copy of the finished run: only
    base_clip and what follows it rerun. One method (UWM, the training-free one) besides the base: the rule is per
    text tower, and each method more is ~6 stages more."""
    import shutil

    import yaml

    repo = tmp_path / "open_clip"
    shutil.copytree(paper, repo, symlinks=True, ignore=shutil.ignore_patterns("checkpoints"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base_clip"]["source"] = "open_clip:ViT-S-32-alt"
    params["methods"] = ["uwm"]
    params["eval_attack"]["search_width"] = 8  # a 10-layer text tower: 64 candidates a step made eval_attack 75 s
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rederive_inputs(repo / "params.yaml")  # re-derives the inputs section, as after any hand edit
    hub = Path(pointer(paper, "base_llm")["resolved_path"]).parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "HF_HOME": str(hub.parent), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    out = run(["dvc", "repro", "report"], repo, env, timeout=900)
    assert "Running stage 'visu'" not in out.stdout and "Running stage 'base_clip'" in out.stdout
    origin = json.loads((repo / "models/base_clip/open_clip.json").read_text())
    assert origin == {"arch": "ViT-S-32-alt", "pretrained": None}
    import safetensors

    with safetensors.safe_open(repo / "models/base_clip/model.safetensors", "pt") as f:
        assert f.get_slice("text_model.embeddings.token_embedding.weight").get_shape()[1] == 256
    for m in ("none", "uwm"):
        assert metrics(repo, f"generation/{m}") == {"gen.skipped": 1}, m
        marker = (repo / f"data/generation/{m}/SKIPPED").read_text()
        assert "width 256" in marker and "cross-attention width 32" in marker, marker
        assert metrics(repo, f"attack/{m}")["attack.gen.skipped"] == 1, m
        assert 0 <= metrics(repo, f"retrieval/{m}")["retrieval.t_star_to_v.r1"] <= 100
        assert 0 <= metrics(repo, f"attack/{m}")["attack.clean.own.unsafe_top1"] <= 100
    assert metrics(repo, "make_safe/uwm")["make_safe.uwm.mask.text.negated"] > 0
    report = (repo / "reports/report.md").read_text()
    assert "Text-to-image evaluation was skipped" in report and "## Image grids" not in report
    assert "## Main comparison" in report


def test_visu_text_captions_skip_the_llm_stages_and_the_rest_completes(paper, tmp_path):
    """captions.source: visu-hf, as a researcher with a local copy of ViSU-Text runs it: the released pairs (safe,
    nsfw, tag, coco_id) in data/visu_text/ by split, the COCO images they name, in a copy of the finished run. The
    LLM stages rerun only to write their SKIPPED marker, visu renders ViSU's own unsafe captions, and everything
    downstream, text-to-image included, completes with ViSU's concept tags. One method besides the base, as above."""
    import shutil

    import pandas as pd
    import yaml

    from safeclip.world.catalogue import VISU_CONCEPTS

    repo = tmp_path / "visu_hf"
    shutil.copytree(paper, repo, symlinks=True, ignore=shutil.ignore_patterns("checkpoints"))
    pairs = [json.loads(line) for line in (ROOT / "data/curated/paper_pairs.jsonl").read_text().splitlines()
             if line.strip()][::4]  # the file is sorted by concept: every fourth pair spreads the splits over them
    coco_images = yaml_params(paper)["captions"]["coco"]["images_train"]  # outside the repo
    images = sorted(Path(coco_images).glob("*.jpg"))  # 24 COCO-named images, ids 0..23
    (repo / "data/visu_text").mkdir(parents=True, exist_ok=True)
    k = 0
    for split, n in (("train", 12), ("validation", 6), ("test", 6)):
        released = [{"safe": p["safe"], "nsfw": p["unsafe"], "tag": p["tag"], "coco_id": int(images[i].stem)}
                    for i, p in zip(range(k, k + n), pairs[k:k + n], strict=True)]
        pd.DataFrame(released).to_parquet(repo / f"data/visu_text/{split}.parquet", index=False)
        k += n
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["captions"]["source"] = "visu-hf"
    params["captions"]["visu_hf"].update(dataset="data/visu_text", coco_images=coco_images)
    params["methods"] = ["uwm"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rederive_inputs(repo / "params.yaml")  # re-derives the inputs section, as after any hand edit
    hub = Path(pointer(paper, "base_llm")["resolved_path"]).parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "HF_HOME": str(hub.parent), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    out = run(["dvc", "repro", "report"], repo, env, timeout=900).stdout
    for stage in ("captions", "base_llm", "sft", "dpo", "visu", "make_safe@uwm", "eval_generation@uwm", "report"):
        assert f"Running stage '{stage}'" in out, stage
    for model in ("base_clip", "base_sd"):  # they depend on the captions, but point at the same weights
        assert pointer(repo, model) == pointer(paper, model), model
    for stage, folder in (("base_llm", "base_llm"), ("sft", "llm_sft"), ("dpo", "llm_dpo")):
        assert metrics(repo, stage) == {f"{stage}.skipped": 1}, stage
        assert (repo / f"models/{folder}/SKIPPED").is_file() and not (repo / f"models/{folder}/config.json").exists()
    by_safe = {p["safe"]: p for p in pairs}
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        caps = rows(repo, f"data/captions/{split}.parquet")
        assert len(caps) == n and {r["source"] for r in caps} == {"visu-hf"}, split
        assert all(r["nsfw"] == by_safe[r["caption"]]["unsafe"] and r["image"]["path"] for r in caps), split
        visu = rows(repo, f"data/visu/{split}.parquet")
        assert visu and {r["gen_model"] for r in visu} == {"visu-hf:data/visu_text"}, split
        assert all(r["nsfw"] == by_safe[r["safe"]]["unsafe"] and r["tag"] == by_safe[r["safe"]]["tag"]
                   for r in visu), split
    for m in ("none", "uwm"):
        g = metrics(repo, f"generation/{m}")
        assert g["gen.unsafe.images"] > 0 and "gen.skipped" not in g, m
        concepts = {k.split(".concept.")[1] for k in g if k.startswith("gen.unsafe.concept.")}
        assert concepts and "unknown" not in concepts, (m, concepts)
        assert concepts <= {c.replace(" ", "_").replace("-", "_") for c in VISU_CONCEPTS}, concepts
        assert 0 <= metrics(repo, f"retrieval/{m}")["retrieval.t_star_to_v.r1"] <= 100, m
    assert "ViSU-Text's pairs as published" in (repo / "reports/report.md").read_text()
