"""eval_zeroshot@<model>: zero-shot accuracy (knowledge kept) -> metrics/zeroshot/<model>.json.

World: object and colour classes on the safe test images. Every profile: each ImageFolder set listed in
evaluate.zeroshot.datasets, with open_clip's templates.
"""

from safeclip.clip.model import load_clip
from safeclip.eval.embed import embeddings_path, load_embeddings, model_path
from safeclip.eval.zeroshot import folder_zeroshot, world_zeroshot
from safeclip.io import write_metrics
from safeclip.stage import entry_point, option, start


@entry_point
def main() -> None:
    name = option("model")
    params, log = start(f"eval_zeroshot@{name}")
    cfg = params.evaluate
    bundle = load_clip(model_path(name))
    metrics: dict[str, float] = {}
    if params.captions.source == "world":
        emb, meta = load_embeddings(embeddings_path(name))
        metrics.update(world_zeroshot(bundle, emb["image_safe"], meta["scenes"], cfg.batch_size))
    sets = {f"zeroshot.{ds.name}": folder_zeroshot(bundle, ds.path, ds.templates, cfg.batch_size)
            for ds in cfg.zeroshot.datasets}
    metrics.update(sets)
    if sets:
        metrics["zeroshot.datasets_mean"] = sum(sets.values()) / len(sets)
    if not metrics:
        log.warning("no zero-shot set: list ImageFolder sets under evaluate.zeroshot.datasets")
    write_metrics(f"metrics/zeroshot/{name}.json", metrics)
    log.info("%s: %s", name, {k: round(v, 1) for k, v in metrics.items()})


if __name__ == "__main__":
    main()
