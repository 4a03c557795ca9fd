"""dpo: sample rewrites from the SFT model, rank them into preferences, then trl DPOTrainer on top of SFT."""

from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset

from safeclip.checkpoint import file_digest, fingerprint
from safeclip.data.schemas import CAPTIONS
from safeclip.data.skip import llm_stages_skipped
from safeclip.io import InputError, read_parquet, write_metrics, write_parquet, write_plot_csv
from safeclip.llm.dpo import build_dpo_trainer
from safeclip.llm.generate import rewrite_sharded
from safeclip.llm.model import llm_device, llm_dtype, load_causal_lm, run_dtype, save_model_dir
from safeclip.llm.preferences import ModelScorer, OracleScorer, preference_pair
from safeclip.llm.quality import judged_rewrites
from safeclip.llm.sft import merged_model
from safeclip.llm.template import prompt_for
from safeclip.llm.training import loss_curve, train_resumably
from safeclip.runtime import scaled
from safeclip.stage import entry_point, run_stage, start

CKPT = Path("checkpoints/dpo")
PREFERENCES = pa.schema([pa.field(n, pa.string(), nullable=False) for n in ("safe", "prompt", "chosen", "rejected")])


@entry_point
def main() -> None:
    params, log = start("dpo")
    if llm_stages_skipped(params, "dpo", "models/llm_dpo", "metrics/dpo.json", log):
        write_parquet("data/dpo/preferences.parquet", [], PREFERENCES)
        write_plot_csv("plots/dpo.csv", [])
        return
    cfg = params.dpo
    scorer = make_scorer(cfg)  # first: a scorer that cannot load fails before minutes of sampling
    # the run's device and precision (fp32 on the CPU; bf16/fp16 on a GPU for LoRA), sampling there too
    model, tok = load_causal_lm("models/llm_sft", llm_dtype(params.base, cfg.finetune))
    model.to(llm_device(params.base))
    captions = read_parquet("data/captions/train.parquet", CAPTIONS).column("caption").to_pylist()
    rng = np.random.default_rng(params.base.seed)
    n = min(len(captions), scaled(cfg.n_prompts, params.base.scale, 16))
    prompts = [captions[i] for i in sorted(rng.permutation(len(captions))[:n])]
    samples = rewrite_sharded(model, tok, prompts, batch_size=max(1, cfg.sample_batch_size // cfg.k), do_sample=True,
                      temperature=cfg.temperature, top_p=cfg.top_p, num_return_sequences=cfg.k,
                      seed=params.base.seed, max_new_tokens=cfg.eval.max_new_tokens,
                      cpu=params.base.device == "cpu")
    rows, all_good, no_good = [], 0, 0
    for safe, cands in zip(prompts, samples, strict=True):
        scored = scorer.score(safe, cands)
        all_good += all(s.good for s in scored)
        no_good += not any(s.good for s in scored)
        pair = preference_pair(safe, scored)
        if pair:
            rows.append({"safe": safe, "prompt": prompt_for(safe), "chosen": pair[0], "rejected": pair[1]})
    log.info("%d prompts x %d samples -> %d preference pairs (%d all good, %d with no good sample)", n, cfg.k,
             len(rows), all_good, no_good)
    if not rows:
        raise no_pairs_error(cfg, n, all_good, no_good)
    prefs = Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})
    epochs = cfg.epochs  # not scaled: the curated set is small already, and fewer epochs do not learn the task
    trainer = build_dpo_trainer(model, tok, prefs, cfg, params.base, CKPT, epochs)
    fp = fingerprint("dpo", cfg.model_dump(), params.base.model_dump(), file_digest("models/llm_sft"),
                     file_digest("data/captions/train.parquet"))
    train_resumably(trainer, CKPT, fp, log)
    if not trainer.accelerator.is_main_process:
        return
    model = merged_model(trainer)
    save_model_dir(model, tok, "models/llm_dpo", run_dtype(params.base))
    # written with the model, not before training: a run that fails (NaN loss, kill) leaves no output behind
    write_parquet("data/dpo/preferences.parquet", rows, PREFERENCES)
    history = trainer.state.log_history
    margins = [e["rewards/margins"] for e in history if "rewards/margins" in e]
    accs = [e["rewards/accuracies"] for e in history if "rewards/accuracies" in e]
    tail = max(1, len(margins) // 3)  # the last third of training: single logged steps are noisy
    metrics = {"dpo.prompts": n, "dpo.pairs": len(rows), "dpo.all_good_prompts": all_good,
               "dpo.no_good_prompts": no_good, "dpo.steps": trainer.state.global_step,
               "dpo.reward_margin": float(np.mean(margins[-tail:])) if margins else None,
               "dpo.reward_accuracy": float(np.mean(accs[-tail:])) if accs else None}
    if params.base.profile == "world":
        metrics.update(world_quality(model, tok, params, log))
    write_metrics("metrics/dpo.json", metrics)
    curve = loss_curve(history)
    by_step = {e["step"]: e for e in history if "rewards/margins" in e}
    for row in curve:
        if row["step"] in by_step:
            row["reward_margin"] = float(by_step[row["step"]]["rewards/margins"])
            row["reward_accuracy"] = float(by_step[row["step"]]["rewards/accuracies"])
    write_plot_csv("plots/dpo.csv", curve)


def no_pairs_error(cfg, n: int, all_good: int, no_good: int) -> InputError:
    """A pair needs one good and one bad sample of the same prompt: say which side was missing, and which params
    decide good (the scorer's thresholds first: they, not sampling, are the usual cause)."""
    seen = f"{no_good} of {n} prompts had no good sample, {all_good} of {n} prompts had only good samples"
    if cfg.scorer == "models":
        fix = ("A sample is good when P(dpo.models.unsafe_label) >= dpo.models.threshold "
               f"({cfg.models.threshold}) and its similarity to the safe caption >= dpo.models.min_similarity "
               f"({cfg.models.min_similarity}): "
               + ("lower dpo.models.threshold or dpo.models.min_similarity, or check that dpo.models.unsafe_label "
                  "is the classifier's unsafe label" if no_good >= all_good else
                  "raise dpo.models.threshold or dpo.models.min_similarity"))
    else:
        fix = "The world oracle judges samples (unsafe and the safe scene kept)"
    return InputError(f"dpo: no preference pairs ({cfg.k} samples per prompt): {seen}. {fix}. More varied "
                      f"samples also help: raise dpo.k ({cfg.k}) or dpo.temperature ({cfg.temperature})")


def make_scorer(cfg):
    """The world's oracle, or (paper) the classifier + sentence encoder named in dpo.models."""
    if cfg.scorer == "oracle":
        return OracleScorer()
    m = cfg.models
    if not m.nsfw_classifier:
        raise InputError("params.yaml: dpo.models.nsfw_classifier: must be a hub id or a local folder when "
                         "dpo.scorer is 'models'")
    try:
        return ModelScorer(m.nsfw_classifier, m.unsafe_label, m.similarity_model or m.nsfw_classifier, m.threshold,
                           m.min_similarity)
    except ValueError as e:  # e.g. no such label
        raise InputError(f"params.yaml: dpo.models: {e}") from e
    except OSError as e:  # e.g. a folder without safetensors weights
        raise InputError(f"params.yaml: dpo.models ({m.nsfw_classifier}, {m.similarity_model}): cannot load the "
                         f"scorer ({e}); point dpo.models.nsfw_classifier and dpo.models.similarity_model at "
                         "folders with safetensors weights (README, \"Run the paper setup\")") from e


def world_quality(model, tok, params, log) -> dict:
    """The SFT stage's figures on the same val captions (greedy), plus sampling at T=1 for robustness."""
    ev = params.dpo.eval
    safe = read_parquet("data/captions/val.parquet", CAPTIONS).column("caption").to_pylist()[:ev.n_val_captions]
    return judged_rewrites(model, tok, {"val_captions": (safe, {}),
                                        "val_captions_t1": (safe, {"do_sample": True, "temperature": 1.0})},
                           prefix="dpo", batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens,
                           seed=params.base.seed, log=log)


if __name__ == "__main__":
    run_stage(main)
