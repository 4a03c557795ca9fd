"""eval_attack@<model>: a white-box prompt attack on the model's text tower (safeclip/eval/attack.py), scored by
retrieval and, at the headline budget, by Stable Diffusion with the tower swapped in and the judges ->
metrics/attack/<model>.json, plots/attack/<model>.csv (the budget curve), data/attack/<model>/ (the attacked
prompts, and the images drawn for the clean and attacked prompts with their judgments).
"""

from pathlib import Path

from safeclip.checkpoint import file_digest, fingerprint, prepare_checkpoint_dir
from safeclip.clip.model import load_clip
from safeclip.eval.attack_generation import draw_and_judge, write_images
from safeclip.eval.attack_suite import mixed_gallery, pick_prompts, run_attack_suite, write_prompts
from safeclip.eval.embed import embeddings_path, load_embeddings, model_path
from safeclip.io import InputError, atomic_dir, write_metrics, write_plot_csv
from safeclip.methods.registry import BASE
from safeclip.params import Params
from safeclip.runtime import compute_device, scaled
from safeclip.sd.pipeline import BASE_SD
from safeclip.stage import entry_point, option, run_stage, start
from safeclip.world.catalogue import UNSAFE_OBJECTS

TEST = "data/visu/test.parquet"


def checkpoint_fingerprint(params: Params, name: str, banned: list[str]) -> str:
    """What the checkpoint's search state and image shards were made from. The shards are drawn by base SD: a
    retrained generator must not resume them (it did until stop 38, so attack images outlived a base_sd change)."""
    return fingerprint("eval_attack", params.eval_attack.model_dump(), params.base.model_dump(),
                       params.eval_generation.model_dump(), file_digest(model_path(name)),
                       file_digest(embeddings_path(name)), file_digest(embeddings_path(BASE)), file_digest(TEST),
                       file_digest(BASE_SD), banned)


@entry_point
def main() -> None:
    name = option("model")
    params, log = start(f"eval_attack@{name}")
    cfg, seed = params.eval_attack, params.base.seed
    device = compute_device(params.base.device)
    own, meta = load_embeddings(embeddings_path(name))
    base, base_meta = load_embeddings(embeddings_path(BASE))
    if meta["ids"] != base_meta["ids"]:
        raise InputError(f"{embeddings_path(name)} and {embeddings_path(BASE)} embed different test rows")
    picked = pick_prompts(TEST, meta, scaled(cfg.n_prompts, params.base.scale, 4), seed)
    n_generate = scaled(cfg.n_generate, params.base.scale, 2) if cfg.n_generate else 0
    world = params.captions.source == "world"
    banned = [*cfg.banned_words, *(o.name for o in UNSAFE_OBJECTS if world)]

    bundle = load_clip(model_path(name))
    bundle.model.to(device)
    ckpt = Path("checkpoints/eval_attack") / name
    prepare_checkpoint_dir(ckpt, checkpoint_fingerprint(params, name, banned), log)
    suite = run_attack_suite(bundle, picked.captions, base["text_unsafe"][picked.rows],
                             {"own": mixed_gallery(own), "text_only": mixed_gallery(base)}, cfg, banned, seed,
                             ckpt, log, params.evaluate.batch_size)
    images = None
    if n_generate:
        generated, images = draw_and_judge(bundle, str(model_path(name)), suite, picked, n_generate, params, device,
                                           ckpt / "shards", log)
        suite.metrics.update(generated)
    with atomic_dir(Path("data/attack") / name) as out:
        write_prompts(out / "prompts.parquet", picked, suite)
        if images is not None:
            write_images(out, images, cfg.examples)
    write_metrics(f"metrics/attack/{name}.json", {**suite.metrics, "attack.budget": cfg.budget})
    write_plot_csv(f"plots/attack/{name}.csv", suite.curve, x="k")
    shown = {k: round(v, 1) for k, v in suite.metrics.items() if k.endswith(("own.unsafe_top1", "inappropriate"))}
    log.info("%s: %s", name, shown)


if __name__ == "__main__":
    run_stage(main)
