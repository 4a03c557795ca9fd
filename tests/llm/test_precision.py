"""The LLM stages' precision and placement: fp32 on the CPU (the world, bit for bit as before); on a GPU the
run's precision (base.mixed_precision) for a LoRA run's frozen base and for the merged model saved; DPO's
sampling split across processes and gathered in prompt order."""

import json

import pytest
import torch
from safetensors import safe_open

from safeclip.llm.generate import rewrite, rewrite_sharded, shard_range
from safeclip.llm.model import llm_device, llm_dtype, run_dtype, save_model_dir
from safeclip.params import Base
from tests.llm.test_generate import CAPTIONS, tiny_llm  # noqa: F401 (fixture)


def test_dtypes_and_device(monkeypatch):
    cpu = Base(device="cpu", mixed_precision="bf16")
    assert llm_dtype(cpu, "lora") == torch.float32 and llm_device(cpu) == "cpu"
    assert run_dtype(cpu) == torch.float32  # trained in fp32 on the CPU, so saved in fp32, whatever bf16 says
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = Base(device="cuda", mixed_precision="bf16")
    assert llm_dtype(gpu, "lora") == torch.bfloat16 and llm_device(gpu) == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert llm_device(gpu) == "cuda:3"
    assert llm_dtype(gpu, "full") == torch.float32  # full fine-tuning keeps fp32 master weights (autocast)
    assert llm_dtype(Base(device="cuda", mixed_precision="fp16"), "lora") == torch.float16
    assert run_dtype(gpu) == torch.bfloat16 and run_dtype(Base()) == torch.float32


def test_merged_model_saved_in_the_run_precision(tiny_llm, tmp_path):  # noqa: F811
    model, tok = tiny_llm
    save_model_dir(model, tok, tmp_path / "m", dtype=torch.bfloat16)
    with safe_open(str(tmp_path / "m/model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((tmp_path / "m/config.json").read_text())["dtype"] == "bfloat16"
    assert next(model.parameters()).dtype == torch.float32, "the caller's model is left as it was"


@pytest.mark.parametrize("n, parts", [(5, 2), (7, 3), (2, 4), (0, 2)])
def test_shards_cover_every_prompt_once_in_order(n, parts):
    ranges = [shard_range(n, parts, r) for r in range(parts)]
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))


class FakeState:
    def __init__(self, num_processes, process_index):
        self.num_processes, self.process_index = num_processes, process_index


def test_sharded_sampling_gathers_every_rank_in_prompt_order(tiny_llm):  # noqa: F811
    model, tok = tiny_llm
    kw = dict(batch_size=2, max_new_tokens=6, do_sample=True, num_return_sequences=2, seed=3)
    per_rank = [rewrite_sharded(model, tok, CAPTIONS, state=FakeState(2, r), gather=lambda x: x, **kw)
                for r in range(2)]
    assert [len(p) for p in per_rank] == [3, 2]  # each rank samples its own shard only

    def gather(mine):  # what accelerate's gather_object returns on every rank: rank 0's list, then rank 1's
        return per_rank[0] + per_rank[1]
    out = rewrite_sharded(model, tok, CAPTIONS, state=FakeState(2, 0), gather=gather, **kw)
    assert len(out) == len(CAPTIONS) and all(len(c) == 2 for c in out)
    assert rewrite_sharded(model, tok, CAPTIONS, state=FakeState(1, 0), **kw) == rewrite(model, tok, CAPTIONS, **kw)


@pytest.mark.parametrize("n, parts", [(5, 2), (7, 3), (2, 3)])
def test_sharded_sampling_returns_each_caption_s_samples_at_its_place(monkeypatch, n, parts):
    """Each rank's `mine` through a gather that concatenates in rank order (accelerate's gather_object): the
    result is one entry per caption, in caption order, each sampled by the rank that owned it with its seed."""
    from safeclip.llm import generate

    monkeypatch.setattr(generate, "rewrite",
                        lambda model, tok, caps, *, seed, **kw: [[f"{c}#{seed}"] for c in caps])
    captions = [f"caption {i}" for i in range(n)]
    mine = {}
    for rank in range(parts):  # every rank samples its shard; the gather hands back all of them, rank by rank
        rewrite_sharded(None, None, captions, state=FakeState(parts, rank), seed=3,
                        gather=lambda m, rank=rank: mine.setdefault(rank, m))
    out = rewrite_sharded(None, None, captions, state=FakeState(parts, 0), seed=3,
                          gather=lambda m: [x for r in range(parts) for x in mine[r]])
    owner = [r for r in range(parts) for _ in range(*shard_range(n, parts, r))]
    assert out == [[f"caption {i}#{3 * 1_000_003 + owner[i]}"] for i in range(n)]
