"""base_llm: world -> train a tokenizer and a tiny Llama on world text; paper -> resolve the hub id or path."""

from pathlib import Path

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from safeclip.checkpoint import fingerprint
from safeclip.data.skip import llm_stages_skipped
from safeclip.hub import resolve_model_dir
from safeclip.io import atomic_dir, write_metrics, write_plot_csv
from safeclip.llm.model import build_world_llm, save_model_dir, tokenizer_corpus, world_corpus, write_pointer
from safeclip.llm.training import common_args, last_value, loss_curve, train_resumably
from safeclip.runtime import scaled
from safeclip.stage import entry_point, run_stage, start
from safeclip.world.grammar import parse
from safeclip.world.tokenizer import train_word_tokenizer

CKPT = "checkpoints/base_llm"


@entry_point
def main() -> None:
    params, log = start("base_llm")
    cfg = params.base_llm
    if llm_stages_skipped(params, "base_llm", "models/base_llm", "metrics/base_llm.json", log):
        write_plot_csv("plots/base_llm.csv", [])
        return
    if cfg.source != "world":
        path = resolve_model_dir(cfg.source, cfg.revision, param="base_llm.source")
        with atomic_dir("models/base_llm") as out:
            write_pointer(out, cfg.source, cfg.revision, path)
        write_metrics("metrics/base_llm.json", {"base_llm.pretrain_steps": 0})
        write_plot_csv("plots/base_llm.csv", [])
        log.info("resolved %s -> %s", cfg.source, path)
        return
    w = cfg.world
    tok = train_word_tokenizer(tokenizer_corpus(), append_eos=False, model_max_length=w.max_position_embeddings)
    torch.manual_seed(params.base.seed)
    model = build_world_llm(w, tok)
    corpus = world_corpus(scaled(w.pretrain_captions, params.base.scale, 64), params.base.seed,
                          params.world.max_objects, params.world.positions)
    steps = scaled(w.pretrain_steps, params.base.scale, 5)
    args = SFTConfig(max_steps=steps, per_device_train_batch_size=w.batch_size, learning_rate=w.learning_rate,
                     lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), max_length=64,
                     **common_args(params.base, Path(CKPT), save_steps=max(10, steps // 3),
                                   logging_steps=max(1, steps // 30)))
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": corpus}),
                         processing_class=tok)
    fp = fingerprint("base_llm", cfg.model_dump(), params.base.model_dump(), params.world.max_objects)
    train_resumably(trainer, Path(CKPT), fp, log)
    if not trainer.accelerator.is_main_process:
        return
    model = trainer.model.eval()
    n = 200
    with torch.no_grad():
        torch.manual_seed(params.base.seed)
        ids = model.generate(input_ids=torch.full((n, 1), tok.bos_token_id), attention_mask=torch.ones(n, 1,
                             dtype=torch.long), do_sample=True, max_new_tokens=32, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    samples = tok.batch_decode(ids[:, 1:], skip_special_tokens=True)
    grammatical = sum(parse(s) is not None for s in samples) / n
    save_model_dir(model, tok, "models/base_llm")
    history = trainer.state.log_history
    write_metrics("metrics/base_llm.json", {"base_llm.pretrain_steps": steps,
                                            "base_llm.final_loss": last_value(history, "loss"),
                                            "base_llm.grammatical": grammatical})
    write_plot_csv("plots/base_llm.csv", loss_curve(history))
    log.info("pretrained %d steps; %.1f%% of %d samples are grammatical, e.g. %r", steps, 100 * grammatical, n,
             samples[0])


if __name__ == "__main__":
    run_stage(main)
