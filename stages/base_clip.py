"""base_clip: world -> pretrain a tiny CLIP on the training quadruples (safe and unsafe); paper -> resolve the
hub id, path or open_clip model -> models/base_clip."""

from pathlib import Path

import torch

from safeclip.checkpoint import file_digest, fingerprint
from safeclip.clip.model import build_world_clip, encode_images, encode_texts, resolve_base_clip
from safeclip.clip.pretrain import pretrain, pretraining_pool
from safeclip.clip.training import TrainState, make_accelerator
from safeclip.data.captions import render_config
from safeclip.data.schemas import VISU
from safeclip.eval.retrieval import recall_at_k
from safeclip.io import atomic_dir, read_parquet, write_metrics, write_plot_csv
from safeclip.runtime import scaled
from safeclip.stage import entry_point, run_stage, start

CKPT = Path("checkpoints/base_clip")


@entry_point
def main() -> None:
    params, log = start("base_clip")
    cfg = params.base_clip
    if cfg.source != "world":
        with atomic_dir("models/base_clip") as out:
            summary = resolve_base_clip(cfg, out)
        write_metrics("metrics/base_clip.json", {"base_clip.pretrain_steps": 0})
        write_plot_csv("plots/base_clip.csv", [])
        log.info("base CLIP: %s", summary)
        return
    w = cfg.world
    train_path = "data/visu/train.parquet"
    rows = read_parquet(train_path, VISU).to_pylist()
    rcfg = render_config(params.world)
    captions, labels, images = pretraining_pool(rows, w.renders_per_scene, rcfg, params.base.seed, train_path)
    log.info("pretraining pool: %d images of %d distinct captions from %d training quadruples", len(labels),
             len(captions), len(rows))
    torch.manual_seed(params.base.seed)
    bundle = build_world_clip(w, params.world.image_size)
    steps = scaled(w.steps, params.base.scale, 10)
    accelerator = make_accelerator(params.base)
    fp = fingerprint("base_clip", w.model_dump(), params.base.model_dump(), params.world.model_dump(),
                     file_digest(train_path))
    state = TrainState(accelerator, CKPT, fp, log)
    curve = pretrain(bundle, captions, labels, images, w, steps, params.base.seed, accelerator, state, log)
    if not accelerator.is_main_process:
        return
    bundle.model = accelerator.unwrap_model(bundle.model)
    val = read_parquet("data/visu/val.parquet", VISU).to_pylist()
    text = encode_texts(bundle, [r["safe"] for r in val])
    image = encode_images(bundle, [r["image"] for r in val], where="data/visu/val.parquet")
    r = recall_at_k(text, image, range(len(val)), ks=(1, 5))
    bundle.save("models/base_clip")
    write_metrics("metrics/base_clip.json", {
        "base_clip.pretrain_steps": steps, "base_clip.pool_images": len(labels),
        "base_clip.final_loss": curve[-1]["train_loss"], "base_clip.logit_scale": curve[-1]["logit_scale"],
        "base_clip.val.t_to_v.r1": r[1], "base_clip.val.t_to_v.r5": r[5],
        "base_clip.params": sum(p.numel() for p in bundle.model.parameters())})
    write_plot_csv("plots/base_clip.csv", curve)
    log.info("pretrained %d steps: val safe T->V R@1 %.1f, R@5 %.1f", steps, 100 * r[1], 100 * r[5])


if __name__ == "__main__":
    run_stage(main)
