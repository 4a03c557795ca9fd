"""evaluate@<model>: the test split embedded once by the base CLIP (`none`) or a method's safe CLIP, then ViSU
retrieval, % unsafe retrieved, SafeGround and zero-shot accuracy -> data/embeddings/<model>.safetensors,
metrics/retrieval/<model>.json (+ the recall-vs-k plot plots/retrieval/<model>.csv), metrics/zeroshot/<model>.json.

One process per model: as three stages (embed, retrieval, zero-shot) each took ~10 s, all of it interpreter
start-up and imports, against well under a second of work.
"""

from safeclip.clip.model import load_clip
from safeclip.eval.embed import embed_split, embeddings_path, load_embeddings, model_path, save_embeddings
from safeclip.eval.suite import recall_curve, retrieval_metrics
from safeclip.eval.zeroshot import folder_zeroshot, world_zeroshot
from safeclip.io import write_metrics, write_plot_csv
from safeclip.methods.registry import BASE
from safeclip.runtime import compute_device
from safeclip.stage import entry_point, option, run_stage, start


@entry_point
def main() -> None:
    name = option("model")
    params, log = start(f"evaluate@{name}")
    cfg = params.evaluate
    bundle = load_clip(model_path(name))
    bundle.model.to(compute_device(params.base.device))
    emb, meta = embed_split(bundle, "data/visu/test.parquet", cfg.batch_size)
    save_embeddings(embeddings_path(name), emb, meta)

    base = None if name == BASE else load_embeddings(embeddings_path(BASE))[0]
    retrieval = retrieval_metrics(emb, cfg.ks, cfg.unsafe_ks, base)
    write_metrics(f"metrics/retrieval/{name}.json", retrieval)
    write_plot_csv(f"plots/retrieval/{name}.csv", recall_curve(retrieval, cfg.ks), x="k")

    zeroshot: dict[str, float] = {}
    if params.captions.source == "world":
        zeroshot.update(world_zeroshot(bundle, emb["image_safe"], meta["scenes"], cfg.batch_size))
    sets = {f"zeroshot.{ds.name}": folder_zeroshot(bundle, ds.path, ds.templates, cfg.batch_size)
            for ds in cfg.zeroshot.datasets}
    zeroshot.update(sets)
    if sets:
        zeroshot["zeroshot.datasets_mean"] = sum(sets.values()) / len(sets)
    if not zeroshot:
        log.warning("no zero-shot set: list ImageFolder sets under evaluate.zeroshot.datasets")
    write_metrics(f"metrics/zeroshot/{name}.json", zeroshot)
    log.info("%s (%d test quadruples): T->V R@1 %.1f, T*->V R@1 %.1f, V*->T R@1 %.1f, unsafe top-1 for unsafe "
             "text %.1f%%, GS %.1f; zero-shot %s", name, len(meta["ids"]), retrieval["retrieval.t_to_v.r1"],
             retrieval["retrieval.t_star_to_v.r1"], retrieval["retrieval.v_star_to_t.r1"],
             retrieval["unsafe_retrieved.unsafe_text.top1"], retrieval["safeground.GS"],
             {k: round(v, 1) for k, v in zeroshot.items()})


if __name__ == "__main__":
    run_stage(main)
