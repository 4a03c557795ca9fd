"""embed@<model>: test-split embeddings (t, t*, v, v*) of the base CLIP (`none`) or a method's safe CLIP
-> data/embeddings/<model>.safetensors, shared by every evaluation of that model."""

from safeclip.clip.model import load_clip
from safeclip.eval.embed import embed_split, embeddings_path, model_path, save_embeddings
from safeclip.runtime import compute_device
from safeclip.stage import entry_point, option, start


@entry_point
def main() -> None:
    name = option("model")
    params, log = start(f"embed@{name}")
    bundle = load_clip(model_path(name))
    bundle.model.to(compute_device(params.base.device))
    emb, meta = embed_split(bundle, "data/visu/test.parquet", params.evaluate.batch_size)
    save_embeddings(embeddings_path(name), emb, meta)
    log.info("%s: embedded %d test quadruples", name, len(meta["ids"]))


if __name__ == "__main__":
    main()
