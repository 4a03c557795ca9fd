"""Safe-CLIP fine-tuning: the reference really frozen (and embedded once), LoRA merged export equal to the LoRA
model, resume."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import CLIPModel, CLIPTextModel

from safeclip.checkpoint import fingerprint
from safeclip.clip.model import load_clip
from safeclip.clip.training import TrainState, make_accelerator
from safeclip.methods.lora import add_lora, frozen_copy, merged
from safeclip.methods.quadruples import embed_reference, load_quadruples
from safeclip.methods.safe_clip import SafeClipObjective
from safeclip.methods.safer_clip import SaferClipObjective, attach_targets
from safeclip.methods.trainer import Schedule, finetune
from safeclip.params import Base, ClipLora, SaferClipWeights
from safeclip.runtime import NonFiniteLoss

LOG = logging.getLogger("test")
LORA = ClipLora(r=4, alpha=4.0, dropout=0.1)


def outputs(model, batch):
    with torch.no_grad():
        out = model(input_ids=batch["safe_input_ids"], attention_mask=batch["safe_attention_mask"],
                    pixel_values=batch["safe_pixels"])
    return out.text_embeds.clone(), out.image_embeds.clone()


def train_steps(model, reference, batch, steps=5, lr=1e-2):
    objective = SafeClipObjective([0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5], 100.0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss, _ = objective(model, reference, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_frozen_reference_never_moves(tiny_bundle, visu_dir):
    q, _ = load_quadruples(str(visu_dir / "train.parquet"), tiny_bundle)
    batch = q.batch(range(8))
    reference = frozen_copy(tiny_bundle.model)
    before = outputs(reference, batch)
    model = add_lora(tiny_bundle.model, LORA)
    start = outputs(model, batch)
    train_steps(model, reference, batch)
    after = outputs(reference, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not any(p.requires_grad for p in reference.parameters())
    moved = outputs(model, batch)
    assert not torch.allclose(moved[0], start[0]), "the LoRA model did not train"
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_stopgrad_current_shares_weights(tiny_bundle, visu_dir):
    """The released script's reference is the live model: it moves with training."""
    q, _ = load_quadruples(str(visu_dir / "train.parquet"), tiny_bundle)
    batch = q.batch(range(8))
    model = add_lora(tiny_bundle.model, LORA)
    before = outputs(model, batch)
    train_steps(model, model, batch)
    assert not torch.allclose(outputs(model, batch)[0], before[0])


def test_lora_targets_both_towers_and_patch_embedding(tiny_bundle):
    model = add_lora(tiny_bundle.model, ClipLora())
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    for part in ("text_model", "vision_model"):
        for module in ("k_proj", "v_proj", "out_proj", "fc1", "fc2"):
            assert any(part in n and module in n for n in names), (part, module)
    assert any("patch_embedding" in n for n in names)
    assert not any("q_proj" in n for n in names)


def test_merged_export_matches_lora_model(tiny_bundle, visu_dir, tmp_path):
    q, _ = load_quadruples(str(visu_dir / "train.parquet"), tiny_bundle)
    batch = q.batch(range(8))
    reference = frozen_copy(tiny_bundle.model)
    model = add_lora(tiny_bundle.model, LORA)
    train_steps(model, reference, batch)
    lora_text, lora_image = outputs(model, batch)
    with torch.no_grad():
        lora_hidden = model.base_model.model.text_model(input_ids=batch["safe_input_ids"],
                                                        attention_mask=batch["safe_attention_mask"]).last_hidden_state
    tiny_bundle.model = merged(model)
    tiny_bundle.save(tmp_path / "safe")
    reloaded = CLIPModel.from_pretrained(tmp_path / "safe").eval()
    assert type(reloaded) is CLIPModel
    text, image = outputs(reloaded, batch)
    torch.testing.assert_close(text, lora_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(image, lora_image, atol=1e-5, rtol=1e-4)
    text_tower = CLIPTextModel.from_pretrained(tmp_path / "safe").eval()
    with torch.no_grad():
        hidden = text_tower(input_ids=batch["safe_input_ids"], attention_mask=batch["safe_attention_mask"])
    torch.testing.assert_close(hidden.last_hidden_state, lora_hidden, atol=1e-5, rtol=1e-4)
    bundle = load_clip(tmp_path / "safe")  # tokenizer and image processor travel with the model
    assert bundle.tokenizer(["a red circle on the left on a blue background"])["input_ids"][0][-1] == \
        bundle.tokenizer.eos_token_id


@pytest.mark.parametrize("method", ["safe_clip", "safer_clip"])
def test_cached_reference_rows_give_the_loss_of_a_reference_forward(tiny_bundle, visu_dir, method):
    """A frozen reference embedded once (`embed_reference`, in batches of another size and order) gives a batch
    the loss and terms that a forward of the reference over that batch gives, and the reference then never
    runs. SafeR-CLIP's targets are read from the cached safe rows."""
    q, _ = load_quadruples(str(visu_dir / "train.parquet"), tiny_bundle)
    if method == "safer_clip":
        attach_targets(q, [{"id": i, "target_id": q.ids[(n + 2) % len(q)], "target_similarity": 0.5}
                           for n, i in enumerate(q.ids)], "targets")
        objective = SaferClipObjective(SaferClipWeights(), 100.0, 2.0)
    else:
        objective = SafeClipObjective([0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5], 100.0)
    reference = frozen_copy(tiny_bundle.model)
    model = add_lora(tiny_bundle.model, ClipLora(r=4, alpha=4.0)).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: move it, so the model is not its reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    idx = [5, 0, 3, 7, 2]
    expected, expected_terms = objective(model, reference, q.batch(idx))
    q.reference = embed_reference(reference, q, objective.reference_sides, 3, "cpu")

    def refuses(**_):
        raise AssertionError("the reference ran although the batch carries its embeddings")
    loss, terms = objective(model, refuses, q.batch(idx))
    assert max(float(v.detach()) for k, v in expected_terms.items() if "cos" in k) > 1e-4  # model != its reference
    # float32's tolerance, not 0: a row's embedding can depend on its batch's size in the last bits (bit-equal on
    # the Intel Xeon of stop 43; up to 3e-6 of an InfoNCE term of ~7 on the AMD EPYC of stop 44), while reading
    # the wrong rows moves a term by 1e-2 or more
    torch.testing.assert_close(loss, expected, rtol=1.3e-6, atol=1e-5)
    for k, v in expected_terms.items():
        torch.testing.assert_close(terms[k], v, rtol=1.3e-6, atol=1e-5, msg=k)
    with pytest.raises(ValueError, match="sides"):
        embed_reference(reference, q, ("target",), 3, "cpu")


@pytest.mark.parametrize("mode", ["frozen", "stopgrad_current"])
def test_finetune_embeds_a_frozen_reference_once_and_a_live_one_every_step(visu_dir, tmp_path, tiny_bundle, mode):
    inner = SafeClipObjective([0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5], 100.0)
    seen = []

    def objective(model, reference, batch):
        seen.append(sorted(k for k in batch if k.startswith("ref_")))
        return inner(model, reference, batch)
    objective.reference_sides = inner.reference_sides
    run_finetune(tiny_bundle, visu_dir, tmp_path / "ckpt", steps=2, objective=objective, reference=mode)
    cached = ["ref_image_safe", "ref_text_safe"] if mode == "frozen" else []
    assert len(seen) > 2 and all(s == cached for s in seen), seen  # training and validation batches alike


def run_finetune(bundle, visu_dir, ckpt, steps=6, objective=None, keep="last", patience=10, reference="frozen"):
    train, _ = load_quadruples(str(visu_dir / "train.parquet"), bundle)
    val, _ = load_quadruples(str(visu_dir / "val.parquet"), bundle)
    acc = make_accelerator(Base())
    state = TrainState(acc, ckpt, fingerprint("test", steps, keep), LOG)
    schedule = Schedule(learning_rate=1e-2, batch_size=8, steps=steps, eval_every=2, patience=patience, keep=keep)
    objective = objective or SafeClipObjective([0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5], 100.0)
    torch.manual_seed(0)
    return finetune(bundle, objective, train, val, LORA, schedule, reference, 0, acc, state, ckpt, LOG, "test")


def test_killed_finetune_resumes_to_the_same_weights(visu_dir, tmp_path, tiny_bundle):
    from safeclip.clip.model import build_world_clip
    from tests.clip.conftest import TINY, counting, killed_at

    torch.manual_seed(0)
    full = run_finetune(build_world_clip(TINY, 32), visu_dir, tmp_path / "a")
    assert full.steps == 6 and len([c for c in full.curve if "val_loss" in c]) == 3

    inner = SafeClipObjective([0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5], 100.0)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(build_world_clip(TINY, 32), visu_dir, tmp_path / "b", objective=killed_at(5, inner))
    count = counting(inner)
    torch.manual_seed(0)
    resumed = run_finetune(build_world_clip(TINY, 32), visu_dir, tmp_path / "b", objective=count)
    assert resumed.steps == 6
    assert count.trained == 2, "resumed from the step-4 checkpoint, so only steps 5 and 6 train"
    assert resumed.curve[0] == full.curve[0]  # the curve before the kill came back from the checkpoint
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_early_stopping_and_nan_stop(visu_dir, tmp_path):
    from safeclip.clip.model import build_world_clip
    from tests.clip.conftest import TINY

    def constant(model, reference, batch):  # never improves after the first validation
        loss = sum(p.sum() * 0 for p in model.parameters() if p.requires_grad) + 1.0
        return loss, {"x": loss}
    res = run_finetune(build_world_clip(TINY, 32), visu_dir, tmp_path / "c", steps=20, objective=constant,
                       patience=2)
    assert res.stopped_early and res.steps == 6  # evals at 2 (best), 4 and 6 (no improvement twice)

    def nan(model, reference, batch):
        loss = sum(p.sum() for p in model.parameters() if p.requires_grad) * float("nan")
        return loss, {"nce.text_unsafe": loss}
    with pytest.raises(NonFiniteLoss, match=r"step 0.*nce.text_unsafe"):
        run_finetune(build_world_clip(TINY, 32), visu_dir, tmp_path / "d", objective=nan)
