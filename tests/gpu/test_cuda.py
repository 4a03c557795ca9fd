"""The GPU paths, on CUDA: opt-in (`SAFECLIP_GPU_TESTS=1 make test-gpu` on a machine with a GPU); CI and a CPU
machine skip them (tests/conftest.py). Each is a small piece the paper profile runs on GPUs: a bf16 LoRA step of
the LLM, seeded sampling (as DPO's sharded sampling does it), a Safe-CLIP step in bf16 autocast, and a batch of
Stable Diffusion samples."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.llm.test_generate import tiny_llm  # noqa: F401 (fixture)
from tests.sd.test_sd import pipe_dir  # noqa: F401 (fixture)

pytestmark = pytest.mark.gpu
CUDA = "cuda:0"


def test_bf16_lora_step_of_the_llm(tiny_llm) -> None:  # noqa: F811
    from peft import LoraConfig, get_peft_model

    from safeclip.llm.model import llm_device, llm_dtype, run_dtype
    from safeclip.llm.template import prompt_for
    from safeclip.params import Base

    base = Base(device="cuda", mixed_precision="bf16")
    assert llm_device(base) == CUDA and llm_dtype(base, "lora") == torch.bfloat16 == run_dtype(base)
    model, tok = tiny_llm
    model = get_peft_model(copy.deepcopy(model).to(CUDA, torch.bfloat16),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    enc = tok([prompt_for("a red circle in the centre on a blue background")], return_tensors="pt").to(CUDA)
    loss = model(**enc, labels=enc["input_ids"]).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, p.detach()) for a, p in zip(before, trainable,
                                                                                           strict=True))
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert {p.dtype for p in frozen} == {torch.bfloat16}


def test_seeded_sampling_on_the_gpu_repeats_and_shards_in_order(tiny_llm) -> None:  # noqa: F811
    from safeclip.llm.generate import rewrite, rewrite_sharded
    from tests.llm.test_generate import CAPTIONS
    from tests.llm.test_precision import FakeState

    model, tok = tiny_llm
    model = copy.deepcopy(model).to(CUDA)
    kw = dict(batch_size=2, max_new_tokens=6, do_sample=True, num_return_sequences=2, seed=3)
    first = rewrite(model, tok, CAPTIONS, **kw)
    assert first == rewrite(model, tok, CAPTIONS, **kw) and len(first) == len(CAPTIONS)
    mine = {r: rewrite_sharded(model, tok, CAPTIONS, state=FakeState(2, r), gather=lambda x: x, **kw)
            for r in range(2)}
    out = rewrite_sharded(model, tok, CAPTIONS, state=FakeState(2, 0), gather=lambda m: mine[0] + mine[1], **kw)
    assert len(out) == len(CAPTIONS) and all(len(c) == 2 for c in out)


def test_a_safe_clip_step_in_bf16_autocast() -> None:
    from safeclip.clip.model import build_world_clip, tokenize
    from safeclip.methods.lora import add_lora, frozen_copy
    from safeclip.methods.safe_clip import SafeClipObjective
    from safeclip.params import ClipLora, SafeClipMethod, WorldClip

    torch.manual_seed(0)
    bundle = build_world_clip(WorldClip(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                        projection_dim=16, patch_size=8), 32)
    reference = frozen_copy(bundle.model).to(CUDA)
    model = add_lora(bundle.model, ClipLora()).to(CUDA)
    cfg = SafeClipMethod()
    objective = SafeClipObjective(cfg.lambdas, cfg.logit_scale)
    safe = tokenize(bundle.tokenizer, ["a red circle in the centre on a blue background"] * 4)
    unsafe = tokenize(bundle.tokenizer, ["a red gun in the centre on a blue background"] * 4)
    batch = {**{f"safe_{k}": v for k, v in safe.items()}, **{f"unsafe_{k}": v for k, v in unsafe.items()},
             "safe_pixels": torch.randn(4, 3, 32, 32), "unsafe_pixels": torch.randn(4, 3, 32, 32)}
    batch = {k: v.to(CUDA) for k, v in batch.items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, parts = objective(model, reference, batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())


def test_a_batch_of_stable_diffusion_samples(pipe_dir) -> None:  # noqa: F811
    import numpy as np

    from safeclip.sd.pipeline import load_pipeline

    pipe = load_pipeline(pipe_dir).to(CUDA)
    gens = [torch.Generator(CUDA).manual_seed(i) for i in range(3)]
    images = pipe(["a red circle in the centre on a blue background"] * 3, num_inference_steps=3,
                  guidance_scale=3.0, generator=gens, output_type="np").images
    assert images.shape == (3, 32, 32, 3) and np.isfinite(images).all()
