"""eval_retrieval@<model>: ViSU retrieval, % unsafe retrieved and SafeGround on the test split
-> metrics/retrieval/<model>.json and the recall-vs-k plot plots/retrieval/<model>.csv."""

from safeclip.eval.embed import BASE, embeddings_path, load_embeddings
from safeclip.eval.suite import recall_curve, retrieval_metrics
from safeclip.io import write_metrics, write_plot_csv
from safeclip.stage import entry_point, option, start


@entry_point
def main() -> None:
    name = option("model")
    params, log = start(f"eval_retrieval@{name}")
    ks = params.evaluate.ks
    emb, _ = load_embeddings(embeddings_path(name))
    base = None if name == BASE else load_embeddings(embeddings_path(BASE))[0]
    metrics = retrieval_metrics(emb, ks, params.evaluate.unsafe_ks, base)
    write_metrics(f"metrics/retrieval/{name}.json", metrics)
    write_plot_csv(f"plots/retrieval/{name}.csv", recall_curve(metrics, ks), x="k")
    log.info("%s: T->V R@1 %.1f, T*->V R@1 %.1f, V*->T R@1 %.1f, unsafe top-1 for unsafe text %.1f%%, GS %.1f",
             name, metrics["retrieval.t_to_v.r1"], metrics["retrieval.t_star_to_v.r1"],
             metrics["retrieval.v_star_to_t.r1"], metrics["unsafe_retrieved.unsafe_text.top1"],
             metrics["safeground.GS"])


if __name__ == "__main__":
    main()
