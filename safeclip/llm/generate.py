"""Batched rewriting with a causal LM: left padding, KV cache, one call per batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from safeclip.llm.template import prompt_for


def clean_completion(text: str) -> str:
    """Keep the first line: a rewrite is one caption; anything after a newline is the model rambling."""
    text = text.strip()
    return text.split("\n", 1)[0].strip() if text else text


@torch.no_grad()
def rewrite(model, tokenizer, safe_captions: Sequence[str], *, batch_size: int = 64, max_new_tokens: int = 32,
            do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
            seed: int = 0, progress: bool = False) -> list[list[str]]:
    """For each safe caption, `num_return_sequences` rewrites (greedy when do_sample is False)."""
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: list[list[str]] = []
    batches = range(0, len(safe_captions), batch_size)
    for start in tqdm(batches, desc="generate", disable=not progress):
        chunk = [prompt_for(s) for s in safe_captions[start:start + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
        # per-batch seed so results do not depend on how many batches ran before (resumable generation)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             use_cache=True, **kwargs)
        texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        texts = [clean_completion(t) for t in texts]
        out += [texts[i:i + num_return_sequences] for i in range(0, len(texts), num_return_sequences)]
    return out


def shard_range(n: int, num_processes: int, rank: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous slice [a, b) of n items: the first n % num_processes ranks take one more, so the
    slices, concatenated in rank order, are the items in order."""
    q, r = divmod(n, num_processes)
    a = rank * q + min(rank, r)
    return a, a + q + (rank < r)


def rewrite_sharded(model, tokenizer, safe_captions: Sequence[str], *, state=None, gather=None, seed: int = 0,
                    cpu: bool = False, **kwargs) -> list[list[str]]:
    """`rewrite` with the captions split across the `accelerate launch` processes (each samples its slice on its
    own device) and gathered back in caption order on every rank, so every rank then builds the same preference
    set. One process: exactly `rewrite`. Each rank draws from its own seed (seed, rank).

    `cpu`: the processes run on the CPU (base.device `cpu`). accelerate must be told: without it each CPU process
    sees a world of one and samples every caption itself."""
    if state is None:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # not under `accelerate launch`: no process group to make
            return rewrite(model, tokenizer, safe_captions, seed=seed, **kwargs)
        from accelerate import PartialState

        state = PartialState(cpu=cpu)
    if state.num_processes == 1:
        return rewrite(model, tokenizer, safe_captions, seed=seed, **kwargs)
    if gather is None:
        from accelerate.utils import gather_object as gather
    a, b = shard_range(len(safe_captions), state.num_processes, state.process_index)
    mine = rewrite(model, tokenizer, safe_captions[a:b], seed=seed * 1_000_003 + state.process_index, **kwargs)
    return list(gather(mine))
