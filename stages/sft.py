"""sft: fine-tune the base LLM to rewrite safe captions into unsafe ones (trl SFTTrainer, full or LoRA)."""

from pathlib import Path

from safeclip.checkpoint import file_digest, fingerprint
from safeclip.data.schemas import CAPTIONS, PAIRS
from safeclip.data.skip import llm_stages_skipped
from safeclip.io import read_parquet, write_metrics, write_plot_csv
from safeclip.llm.model import llm_dtype, load_causal_lm, run_dtype, save_model_dir
from safeclip.llm.quality import judged_rewrites
from safeclip.llm.sft import build_sft_trainer, merged_model, prompt_completion
from safeclip.llm.training import last_value, loss_curve, train_resumably
from safeclip.stage import entry_point, run_stage, start

CKPT = Path("checkpoints/sft")


@entry_point
def main() -> None:
    params, log = start("sft")
    cfg = params.sft
    if llm_stages_skipped(params, "sft", "models/llm_sft", "metrics/sft.json", log):
        write_plot_csv("plots/sft.csv", [])
        return
    train = read_parquet("data/pairs/train.parquet", PAIRS)
    val = read_parquet("data/pairs/val.parquet", PAIRS)
    model, tok = load_causal_lm("models/base_llm", llm_dtype(params.base, cfg.finetune))
    epochs = cfg.epochs  # not scaled: the curated set is small already, and fewer epochs do not learn the task
    trainer = build_sft_trainer(model, tok, prompt_completion(train), prompt_completion(val), cfg, params.base,
                                CKPT, epochs)
    fp = fingerprint("sft", cfg.model_dump(), params.base.model_dump(), file_digest("data/pairs"),
                     file_digest("models/base_llm"))
    train_resumably(trainer, CKPT, fp, log)
    if not trainer.accelerator.is_main_process:
        return
    model = merged_model(trainer)
    save_model_dir(model, tok, "models/llm_sft", run_dtype(params.base))
    history = trainer.state.log_history
    metrics = {"sft.epochs": epochs, "sft.steps": trainer.state.global_step,
               "sft.train_loss": last_value(history, "loss"), "sft.eval_loss": last_value(history, "eval_loss")}
    if params.base.profile == "world":
        metrics.update(world_quality(model, tok, val, cfg.eval, params.base.seed, log))
    write_metrics("metrics/sft.json", metrics)
    write_plot_csv("plots/sft.csv", loss_curve(history))


def world_quality(model, tok, val_pairs, ev, seed: int, log) -> dict:
    """Greedy rewrites of the val pairs and of held-out world captions, judged by the oracle."""
    captions = read_parquet("data/captions/val.parquet", CAPTIONS).column("caption").to_pylist()[:ev.n_val_captions]
    return judged_rewrites(model, tok, {"val_pairs": (val_pairs.column("safe").to_pylist(), {}),
                                        "val_captions": (captions, {})},
                           prefix="sft", batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, seed=seed,
                           log=log)


if __name__ == "__main__":
    run_stage(main)
