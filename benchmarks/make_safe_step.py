"""Samples/s of our Safe-CLIP training step vs a minimal hand-written PyTorch loop: the overhead of our code.

    python benchmarks/make_safe_step.py [--threads 1] [--warmup 5] [--steps 15] [--blocks 2]
    python benchmarks/make_safe_step.py --size vit-l --device cuda --batch 64   # GPU, also prints MFU (bf16)

"ours" is the trainer's per-step sequence of `safeclip.methods.trainer.finetune`, verbatim: the global batch from
`global_batch`, `local_slice`, `Quadruples.batch(idx, device)`, `SafeClipObjective(model, reference, batch)`,
`check_finite`, `zero_grad(set_to_none=True)`, `accelerator.backward`, `opt.step()` and the dict of float
terms, on a peft-LoRA model and Adam prepared by a real `accelerate.Accelerator` (`make_accelerator`), with the
reference a `frozen_copy` taken before `add_lora` and embedded once (`embed_reference`), as finetune does.

"hand" is what a minimal loop would do: the same architecture with the same peft LoRA (same seed, same initial
weights), its own frozen reference, the eight terms written inline with plain torch, a few pre-built batches
already in memory (no indexing), plain `torch.optim.Adam`, `loss.backward()` and one `float(loss)`.

Both run in one process, in alternating timed blocks (order swapped each block) after their warm-up steps, so
that load from other jobs on a shared machine hits both alike. overhead = (hand - ours) / hand in samples/s.

MFU (CUDA and --size vit-l only), the usual 2-FLOPs-per-parameter-per-token estimate:
    forward FLOPs of a tower on one input ~= 2 * P_tower * tokens   (P: the tower's parameters incl. its projection;
                                                                     tokens: 77 text positions, 257 image patches+CLS)
    FLOPs/step ~= 3 * forward(trained model on t, t*, v, v*)  [forward + backward ~= 2x forward]
                + 1 * forward(reference on t, v)               [no_grad; "hand" only: ours embeds it once]
    MFU = (FLOPs/step * steps/s) / (peak FLOP/s, --peak-tflops; 989 = H100 SXM bf16 dense)
It leaves out attention's token x token matmuls (a few % at 77/257 tokens) and counts a full weight-gradient
backward although LoRA freezes the base weights (the real backward is nearer 2x than 3x forward), so it is an
upper estimate of the work; the same convention as most published MFU figures.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from safeclip.clip.training import check_finite, global_batch, local_slice, make_accelerator
from safeclip.methods.lora import add_lora, frozen_copy
from safeclip.methods.quadruples import Quadruples, embed_reference
from safeclip.methods.safe_clip import LAMBDAS, SafeClipObjective
from safeclip.params import Base, ClipLora, SafeClipMethod, WorldClip

POOL = 1933  # training quadruples of the world default (make_safe@safe_clip)


def build_model(size: str):
    """(CLIPModel with random weights, text length, image size, eos id, pad id, vocab size)."""
    from transformers import CLIPConfig, CLIPModel

    if size == "world":
        from safeclip.clip.model import build_world_clip

        bundle = build_world_clip(WorldClip(), 32)
        tok = bundle.tokenizer
        return bundle.model, 16, 32, tok.eos_token_id, tok.pad_token_id, len(tok)  # world captions: 13-16 tokens
    config = CLIPConfig(  # ViT-L/14 at 224 px (openai/clip-vit-large-patch14's shapes)
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, pad_token_id=1, bos_token_id=49406,
                         eos_token_id=49407),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14),
        projection_dim=768)
    return CLIPModel(config), 77, 224, 49407, 1, 49408


def random_quadruples(n: int, text_len: int, image_size: int, eos: int, pad: int, vocab: int, seed: int) -> Quadruples:
    """`n` quadruples of random token ids (a random length, EOS last, then padding) and random pixels."""
    g = torch.Generator().manual_seed(seed)

    def tokens() -> dict[str, torch.Tensor]:
        ids = torch.randint(3, vocab - 1, (n, text_len), generator=g)
        lengths = torch.randint(text_len // 2, text_len + 1, (n,), generator=g)
        pos = torch.arange(text_len)[None, :]
        ids[pos == (lengths - 1)[:, None]] = eos
        ids[pos >= lengths[:, None]] = pad
        return {"input_ids": ids, "attention_mask": (pos < lengths[:, None]).long()}

    shape = (n, 3, image_size, image_size)
    px = (torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    q = Quadruples(ids=[str(i) for i in range(n)], safe_text=[""] * n, unsafe_text=[""] * n, safe_images=[None] * n,
                   unsafe_images=[None] * n, tags=[None] * n, tokens_safe=tokens(), tokens_unsafe=tokens(),
                   bundle=None, where="benchmark", _pixels=px)
    return q


class Ours:
    """The per-step body of `finetune`, on an accelerate-prepared peft model."""

    def __init__(self, base_model, q: Quadruples, batch_size: int, lr: float, base: Base, seed: int):
        cfg = SafeClipMethod()
        self.accelerator = make_accelerator(base)
        self.reference = frozen_copy(base_model)  # before add_lora, as finetune does
        torch.manual_seed(seed)
        model = add_lora(base_model, ClipLora())
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(trainable, lr=lr)
        self.model, self.opt = self.accelerator.prepare(model, opt)
        self.device = self.accelerator.device
        self.reference.to(self.device)
        self.objective = SafeClipObjective(cfg.lambdas, cfg.logit_scale)
        # finetune embeds the frozen reference once; its batches then carry the rows (extra keys "hand" ignores)
        q.reference = embed_reference(self.reference, q, self.objective.reference_sides, batch_size, self.device,
                                      self.accelerator.autocast)
        self.q, self.batch_size, self.seed, self.step = q, batch_size, seed, 0
        self.model.train()

    def sampler(self, step: int) -> np.ndarray:
        return global_batch(step, len(self.q), self.batch_size, self.seed)

    def batching_seconds(self, n: int = 50) -> float:
        """Seconds per step of the batch assembly alone (sampler, local_slice, Quadruples.batch)."""
        acc = self.accelerator
        start = time.perf_counter()
        for step in range(n):
            self.q.batch(local_slice(self.sampler(step), acc.process_index, acc.num_processes), self.device)
        return (time.perf_counter() - start) / n

    def run(self, n_steps: int) -> None:
        acc, model, opt = self.accelerator, self.model, self.opt
        for _ in range(n_steps):
            step = self.step
            idx = local_slice(self.sampler(step), acc.process_index, acc.num_processes)
            loss, parts = self.objective(model, self.reference, self.q.batch(idx, self.device))
            check_finite(loss, step, parts)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            terms = {k: float(v.detach()) for k, v in parts.items()}  # noqa: F841 (the trainer keeps them)
            value = float(loss.detach())  # noqa: F841
            self.step += 1


def cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(x, y, dim=-1)).mean()


def nce(x: torch.Tensor, y: torch.Tensor, scale: float, labels: torch.Tensor) -> torch.Tensor:
    logits = scale * F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class Hand:
    """A minimal loop: same LoRA model, the eight terms inline, pre-built batches, plain Adam."""

    def __init__(self, base_model, q: Quadruples, batch_size: int, lr: float, device: str, bf16: bool, seed: int):
        self.device = torch.device(device)
        self.reference = copy.deepcopy(base_model).eval().requires_grad_(False).to(self.device)
        torch.manual_seed(seed)
        self.model = add_lora(base_model, ClipLora()).to(self.device).train()
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=lr)
        w = torch.tensor(LAMBDAS, dtype=torch.float32)
        self.w = (w / w.sum()).tolist()
        rng = np.random.default_rng(seed)
        self.batches = []
        for _ in range(4):  # pre-built, already on the device
            b = q.batch(rng.permutation(len(q))[:batch_size], self.device)
            self.batches.append((torch.cat([b["safe_input_ids"], b["unsafe_input_ids"]]),
                                 torch.cat([b["safe_attention_mask"], b["unsafe_attention_mask"]]),
                                 torch.cat([b["safe_pixels"], b["unsafe_pixels"]])))
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
        self.step = 0

    def run(self, n_steps: int) -> None:
        w, s = self.w, 100.0
        for _ in range(n_steps):
            ids, mask, px = self.batches[self.step % len(self.batches)]
            n = ids.shape[0] // 2
            with self.autocast:
                out = self.model(input_ids=ids, attention_mask=mask, pixel_values=px)
                with torch.no_grad():
                    ref = self.reference(input_ids=ids[:n], attention_mask=mask[:n], pixel_values=px[:n])
            t, ts, v, vs = out.text_embeds[:n], out.text_embeds[n:], out.image_embeds[:n], out.image_embeds[n:]
            t0, v0 = ref.text_embeds, ref.image_embeds
            lab = torch.arange(n, device=ids.device)
            loss = (w[0] * cos(t, t0) + w[1] * cos(ts, t0) + w[2] * cos(v, v0) + w[3] * cos(vs, v0)
                    + w[4] * nce(t, v0, s, lab) + w[5] * nce(ts, v0, s, lab) + w[6] * nce(v, t0, s, lab)
                    + w[7] * nce(vs, t0, s, lab)) / 8
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            float(loss.detach())
            self.step += 1


def tower_params(model) -> tuple[int, int]:
    """(text tower + text projection, vision tower + visual projection) parameter counts."""
    def count(*mods):
        return sum(p.numel() for m in mods for p in m.parameters())
    return count(model.text_model, model.text_projection), count(model.vision_model, model.visual_projection)


def flops_per_step(p_text: int, p_vis: int, text_len: int, vis_tokens: int, batch: int,
                   reference: bool = True) -> float:
    """See the module docstring: 3 x forward of the trained model on t, t*, v, v* + forward of the reference on t, v
    (`reference`: "hand" runs it every step; ours reads the rows finetune embedded once)."""
    fwd_text, fwd_vis = 2 * p_text * text_len, 2 * p_vis * vis_tokens  # per input
    return batch * (3 * (2 * fwd_text + 2 * fwd_vis) + (fwd_text + fwd_vis) * reference)


def timed(runner, steps: int, sync) -> float:
    sync()
    start = time.perf_counter()
    runner.run(steps)
    sync()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["world", "vit-l"], default="world")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128, help="quadruples per step (world default 128)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per block and loop")
    ap.add_argument("--blocks", type=int, default=2, help="alternating timed blocks per loop")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cpu" and args.size != "world":
        print("note: vit-l on CPU is very slow; it is meant for a GPU")
    bf16 = args.device == "cuda"
    base_model, text_len, image_size, eos, pad, vocab = build_model(args.size)
    p_text, p_vis = tower_params(base_model)
    q = random_quadruples(max(POOL, args.batch), text_len, image_size, eos, pad, vocab, args.seed)
    lr = SafeClipMethod().learning_rate
    hand = Hand(copy.deepcopy(base_model), q, args.batch, lr, args.device, bf16, args.seed)
    ours = Ours(base_model, q, args.batch, lr,
                Base(device=args.device, mixed_precision="bf16" if bf16 else "no"), args.seed)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    for r in (ours, hand):
        r.run(args.warmup)
    times: dict[str, list[float]] = {"ours": [], "hand": []}
    for block in range(args.blocks):
        order = (("ours", ours), ("hand", hand)) if block % 2 == 0 else (("hand", hand), ("ours", ours))
        for name, r in order:
            times[name].append(timed(r, args.steps, sync))

    sps = {k: args.batch * args.steps * len(v) / sum(v) for k, v in times.items()}
    overhead = (sps["hand"] - sps["ours"]) / sps["hand"]
    print(f"size={args.size} device={args.device} threads={args.threads} batch={args.batch} quadruples "
          f"text_len={text_len} image={image_size}px params text={p_text:,} vision={p_vis:,} "
          f"warmup={args.warmup} blocks={args.blocks}x{args.steps} steps")
    print(f"{'loop':<6} {'samples/s':>10} {'s/step':>8}   per-block samples/s (sorted)")
    for k in ("ours", "hand"):
        per = sorted(args.batch * args.steps / t for t in times[k])
        blocks = (" ".join(f"{x:8.4g}" for x in per) if len(per) <= 8
                  else f"min {per[0]:.4g} median {statistics.median(per):.4g} max {per[-1]:.4g}")
        print(f"{k:<6} {sps[k]:10.4g} {args.batch / sps[k]:8.4f}   {blocks}")
    paired = sorted(1 - h / o for o, h in zip(times["ours"], times["hand"], strict=True))  # same-block pairs
    shown = " ".join(f"{100 * p:+.1f}%" for p in paired) if len(paired) <= 8 else \
        f"{100 * paired[0]:+.1f}% .. {100 * paired[-1]:+.1f}%"
    print(f"overhead of ours: {100 * overhead:+.1f}% (goal <= 10%); per block pair: {shown} "
          f"(median {100 * statistics.median(paired):+.1f}%)")
    batching = ours.batching_seconds()
    print(f"batch assembly alone (global_batch + local_slice + Quadruples.batch): {1e3 * batching:.2f} ms/step "
          f"= {100 * batching * sps['ours'] / args.batch:.1f}% of our step")
    if args.device == "cuda" and args.size == "vit-l":
        vis_tokens = (image_size // 14) ** 2 + 1
        for k in ("ours", "hand"):
            f = flops_per_step(p_text, p_vis, text_len, vis_tokens, args.batch, reference=k == "hand")
            achieved = f * sps[k] / args.batch
            print(f"MFU {k}: {100 * achieved / (args.peak_tflops * 1e12):.1f}% "
                  f"({achieved / 1e12:.1f} TFLOP/s of {args.peak_tflops:.0f}; {f / 1e12:.2f} TFLOP/step)")
    else:
        print("MFU: needs a GPU and --size vit-l (bf16)")


if __name__ == "__main__":
    main()
