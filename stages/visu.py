"""visu: one unsafe caption per safe caption for every split, filtered, with its unsafe image -> data/visu/."""

from collections import Counter
from functools import partial
from pathlib import Path

from safeclip.checkpoint import file_digest, fingerprint, prepare_checkpoint_dir
from safeclip.data.captions import render_config
from safeclip.data.schemas import CAPTIONS, PAIRS, SPLITS
from safeclip.data.visu import DROP_REASONS, build_shard, build_split, world_image_maker, write_split
from safeclip.io import InputError, atomic_dir, read_parquet, write_metrics
from safeclip.llm.concepts import ConceptTagger
from safeclip.stage import entry_point, run_stage, start

CKPT = Path("checkpoints/visu")


def make_rewriter(params, log):
    """Batched generation with the DPO model (HF generate, or vLLM where installed)."""
    from safeclip.llm.generate import rewrite
    from safeclip.llm.model import load_causal_lm, model_dir

    cfg = params.visu
    if cfg.backend == "vllm":
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise SystemExit("visu.backend is vllm but vLLM is not installed (pip install vllm)") from e
        from safeclip.llm.template import prompt_for

        llm = LLM(model=str(model_dir("models/llm_dpo")), seed=params.base.seed, trust_remote_code=False)

        def generate(safe, seed):
            sp = SamplingParams(max_tokens=cfg.max_new_tokens, seed=seed, stop=["\n"],
                                temperature=cfg.temperature if cfg.do_sample else 0.0, top_p=cfg.top_p)
            return [o.outputs[0].text.strip() for o in llm.generate([prompt_for(s) for s in safe], sp)]
        return generate
    from safeclip.llm.model import llm_device, llm_dtype

    model, tok = load_causal_lm("models/llm_dpo", llm_dtype(params.base, "lora"))  # inference: the run's precision
    model = model.to(llm_device(params.base))

    def generate(safe, seed):
        return [g[0] for g in rewrite(model, tok, safe, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                      do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p,
                                      seed=seed)]
    return generate


def make_text_judge(params, log):
    m = params.dpo.models
    if params.base.profile == "world" or not m.nsfw_classifier:
        if params.base.profile != "world":
            log.warning("no dpo.models.nsfw_classifier: the judged_safe filter is off")
        return None
    from safeclip.llm.preferences import ModelScorer

    try:
        scorer = ModelScorer(m.nsfw_classifier, m.unsafe_label, m.similarity_model or m.nsfw_classifier, m.threshold)
    except ValueError as e:  # e.g. no such label
        raise InputError(f"params.yaml: dpo.models: {e}") from e
    return lambda texts: [bool(p >= m.threshold) for p in scorer.p_unsafe(texts)] if texts else []


def with_concept_tags(make_shard, tagger: ConceptTagger):
    """Rows the LLM wrote (COCO path) carry no concept: tag each from the words its unsafe caption adds
    (safeclip.llm.concepts), so per-concept rates downstream are not all `unknown`. World and ViSU-Text rows
    keep their own tags."""
    def make(rows, seed):
        out, stats = make_shard(rows, seed)
        return [r if r["tag"] is not None else {**r, "tag": tagger(r["safe"], r["nsfw"])} for r in out], stats
    return make


def pairs_tagger() -> ConceptTagger:
    rows = [r for s in ("train", "val") if Path(f"data/pairs/{s}.parquet").exists()
            for r in read_parquet(f"data/pairs/{s}.parquet", PAIRS).to_pylist()]
    if not rows:
        raise InputError("data/pairs/train.parquet: no curated pairs to learn concept tags from (run ingest)")
    return ConceptTagger.from_pairs(rows)


@entry_point
def main() -> None:
    params, log = start("visu")
    cfg = params.visu
    from accelerate import PartialState

    # several processes (base.num_processes, one per GPU) split the shards; on the CPU (gloo) it must be told so
    state = PartialState(cpu=params.base.device == "cpu")
    if state.num_processes > 1:
        log.info("process %d of %d (%s)", state.process_index, state.num_processes, state.distributed_type)
    world = params.captions.source == "world"
    captions = {s: read_parquet(f"data/captions/{s}.parquet", CAPTIONS).to_pylist() for s in SPLITS}
    skip_llm = params.captions.source == "visu-hf"
    if skip_llm:
        log.info("captions come from ViSU-Text (captions.source: visu-hf): their unsafe captions are used as they "
                 "are; the LLM stages are not needed")
        rewriter, gen_model = None, f"visu-hf:{params.captions.visu_hf.dataset}"
    else:
        rewriter, gen_model = make_rewriter(params, log), f"{params.base_llm.source}+sft+dpo"
    if world:
        make_image = world_image_maker(render_config(params.world))
    elif cfg.images.pipeline:
        from safeclip.data.nsfw_images import t2i_image_maker
        from safeclip.llm.model import llm_device

        make_image = t2i_image_maker(cfg.images, params.judge, llm_device(params.base))  # this process's GPU
    else:
        make_image = lambda row, text: (None, None)  # noqa: E731
    fp = fingerprint("visu", cfg.model_dump(), params.base.seed, params.world.model_dump(),
                     file_digest("data/captions"), None if skip_llm else file_digest("models/llm_dpo"),
                     *([] if world or skip_llm else [file_digest("data/pairs")]),
                     *([file_digest(params.judge.q16_prompts), params.judge.q16_clip]
                       if not world and "q16" in cfg.images.judges else []))
    prepare_checkpoint_dir(CKPT, fp, log, is_main=state.is_main_process)
    state.wait_for_everyone()
    make_shard = partial(build_shard, rewriter=rewriter, make_image=make_image, max_words=cfg.max_words,
                         world=world, gen_model=gen_model, judge_text=make_text_judge(params, log))
    shard = lambda rows, seed: make_shard(rows, shard_seed=seed)  # noqa: E731
    if not world and not skip_llm:
        shard = with_concept_tags(shard, pairs_tagger())
    metrics, tables = {}, {}
    for split in SPLITS:
        table, stats = build_split(split, captions[split], CKPT / "shards", cfg.shard_size, params.base.seed,
                                   shard, log, state.process_index, state.num_processes, state.wait_for_everyone)
        if not state.is_main_process:
            continue
        tables[split] = table
        stats = Counter(stats)
        metrics.update({f"visu.{split}.input": stats["input"], f"visu.{split}.kept": stats["kept"],
                        f"visu.{split}.no_image": stats["no_image"],
                        **{f"visu.{split}.dropped.{r}": stats[f"dropped.{r}"] for r in DROP_REASONS}})
        log.info("%s: %d in, %d kept, dropped %s, %d without image", split, stats["input"], stats["kept"],
                 {r: stats[f"dropped.{r}"] for r in DROP_REASONS if stats[f"dropped.{r}"]}, stats["no_image"])
    if not state.is_main_process:
        return
    with atomic_dir("data/visu") as out:
        for split, table in tables.items():
            write_split(out / f"{split}.parquet", table)
    write_metrics("metrics/visu.json", metrics)


if __name__ == "__main__":
    run_stage(main)
