"""The tiny Stable Diffusion path on models small enough for a unit test, saved and re-loaded through
`from_pretrained` exactly as the paper's SD v1.4 would be: text-encoder swap, prompt states, resumable
training and generation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from safeclip.clip.model import build_world_clip, text_encoder
from safeclip.clip.training import TrainState, make_accelerator
from safeclip.eval.generation import Prompt
from safeclip.io import InputError
from safeclip.params import Base, WorldClip, WorldSd, WorldUnet, WorldVae
from safeclip.sd import models as sd_models
from safeclip.sd import train as sd_train
from safeclip.sd.pipeline import assemble, load_pipeline, swap_text_encoder, use_sampler
from safeclip.sd.sample import decode_png, generate, jobs

LOG = logging.getLogger("test")
VAE = WorldVae(block_out_channels=[8, 16], norm_num_groups=4, steps=4, batch_size=4, save_every=2)
UNET = WorldUnet(block_out_channels=[8, 16], attention_head_dim=4, norm_num_groups=4, steps=4, batch_size=4,
                 save_every=2, warmup_steps=1)
SD = WorldSd(vae=VAE, unet=UNET)


def clip(width: int):
    torch.manual_seed(0)
    return build_world_clip(WorldClip(hidden_size=width, intermediate_size=2 * width, num_layers=1, num_heads=2,
                                      projection_dim=16, patch_size=8), 32)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    torch.manual_seed(0)
    bundle = clip(16)
    vae = sd_models.build_vae(VAE, 32)
    unet = sd_models.build_unet(UNET, sd_models.latent_size(VAE, 32), VAE.latent_channels, 16)
    pipe = assemble(vae, unet, text_encoder(bundle.model), bundle.tokenizer,
                    sd_models.sample_scheduler(sd_models.train_scheduler(SD)))
    path = tmp_path_factory.mktemp("sd") / "pipe"
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def test_saved_pipeline_has_safetensors_only(pipe_dir):
    assert list(pipe_dir.rglob("*.safetensors"))
    assert not [p for p in pipe_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]


def test_swap_refuses_a_text_tower_of_the_wrong_width(pipe_dir):
    pipe = load_pipeline(pipe_dir)
    wrong = clip(24)
    with pytest.raises(InputError) as e:
        swap_text_encoder(pipe, text_encoder(wrong.model), wrong.tokenizer, "models/safe/x")
    msg = str(e.value)
    assert "models/safe/x" in msg and "hidden size is 24" in msg and "width 16" in msg


def test_swap_replaces_the_text_encoder(pipe_dir):
    pipe = load_pipeline(pipe_dir)
    other = clip(16)
    with torch.no_grad():
        for p in other.model.text_model.parameters():
            p.add_(0.1)
    enc = text_encoder(other.model)
    swapped = swap_text_encoder(pipe, enc, other.tokenizer)
    assert swapped.text_encoder is enc
    before = load_pipeline(pipe_dir).encode_prompt(["a red circle on the left on a blue background"], "cpu", 1,
                                                   False)[0]
    after = swapped.encode_prompt(["a red circle on the left on a blue background"], "cpu", 1, False)[0]
    assert not torch.allclose(before, after)


def test_encode_prompts_matches_the_pipeline(pipe_dir):
    pipe = load_pipeline(pipe_dir)
    prompts = ["a red circle on the left on a blue background", "", "a black gun at the top on a white background"]
    ours = sd_train.encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts)
    theirs = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    torch.testing.assert_close(ours, theirs)


def test_world_unet_attends_through_the_classic_processor_and_computes_what_sdpa_does():
    """build_unet swaps torch's SDPA for diffusers' classic processor (faster for the world's 8-wide heads on the
    CPU): every attention layer uses it, and the UNet's output and gradients are SDPA's to float rounding."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    torch.manual_seed(0)
    unet = sd_models.build_unet(UNET, 4, VAE.latent_channels, 16)
    assert unet.attn_processors and all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    x, t, c = torch.randn(3, VAE.latent_channels, 4, 4), torch.tensor([1, 500, 999]), torch.randn(3, 7, 16)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        unet.zero_grad()
        out = unet(x, t, encoder_hidden_states=c).sample
        out.square().mean().backward()
        return out.detach(), unet.conv_in.weight.grad.clone()

    classic = run()
    unet.set_attn_processor(AttnProcessor2_0())
    sdpa = run()
    assert not torch.equal(classic[0], torch.zeros_like(classic[0]))
    for a, b in zip(classic, sdpa, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_zero_terminal_snr_schedule():
    sched = sd_models.train_scheduler(SD)
    assert float(sched.alphas_cumprod[-1]) < 1e-6  # pure noise at the last step: the prompt sets the background
    sample = sd_models.sample_scheduler(sched)
    assert sample.config.prediction_type == "v_prediction" and sample.config.timestep_spacing == "trailing"
    sample.set_timesteps(5)
    assert int(sample.timesteps[0]) == 999  # trailing spacing starts at the terminal step


def test_snr_weights():
    sched = sd_models.train_scheduler(SD)
    t = torch.tensor([0, 500, 999])
    assert sd_train.snr_weights(sched, t, None) is None
    w = sd_train.snr_weights(sched, t, 5.0)
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    assert float(w[0]) == pytest.approx(5.0 / (float(snr[0]) + 1))  # high SNR: capped at gamma
    assert float(w[1]) == pytest.approx(float(snr[1]) / (float(snr[1]) + 1), rel=1e-5)
    assert float(w[2]) == 1.0  # the zero-SNR step keeps weight 1
    low = sd_train.snr_weights(sched, t, 5.0, keep_low_snr=True)
    assert float(low[0]) == pytest.approx(5.0 / (float(snr[0]) + 1))  # nearly clean: capped as min-SNR
    assert float(low[1]) == 1.0 and float(low[2]) == 1.0  # noisy steps (layout) keep weight 1


def test_timestep_sampling():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    uniform = sd_train.sample_timesteps(4000, 1000, WorldUnet(), gen())
    torch.testing.assert_close(uniform, torch.randint(0, 1000, (4000,), generator=gen()))  # the old draw
    mid = sd_train.sample_timesteps(8, 1000, WorldUnet(timestep_sampling="logit_normal", logit_std=1e-6), gen())
    assert set(mid.tolist()) <= {499, 500}  # sigmoid(0 +- 1e-6) = 1/2 of 1000 steps, floored
    edge = sd_train.sample_timesteps(8, 1000, WorldUnet(timestep_sampling="logit_normal", logit_mean=50.0), gen())
    assert edge.tolist() == [999] * 8  # sigmoid -> 1 stays inside [0, n_t)
    ln = sd_train.sample_timesteps(20000, 1000, WorldUnet(timestep_sampling="logit_normal"), gen()).float()
    # logit-normal(0, 1): P(t/T in [0.27, 0.73]) = P(|z| < logit(0.73) = 0.995) = 0.68; uniform would give 0.46
    assert float(((ln >= 270) & (ln < 730)).float().mean()) == pytest.approx(0.68, abs=0.015)


def tiny_data(n=12):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    return images, np.arange(n) % 3


def run_unet(tmp_path, name, steps):
    torch.manual_seed(0)
    images, labels = tiny_data()
    latents = torch.randn(len(images), 4, 16, 16, generator=torch.Generator().manual_seed(1))
    states = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(2))
    unet = sd_models.build_unet(UNET, 16, 4, 16)
    acc = make_accelerator(Base())
    state = TrainState(acc, tmp_path / name, "fp", LOG)
    return sd_train.train_unet(unet, latents, labels, states[:3], states[3], sd_models.train_scheduler(SD), UNET,
                               steps, 0, acc, state, LOG)


def test_unet_training_resumes_to_the_same_weights(tmp_path, caplog):
    full, curve = run_unet(tmp_path, "a", 4)  # saves its state at step 2
    assert (tmp_path / "a" / "state" / "progress.json").exists()
    with caplog.at_level(logging.INFO):
        resumed, curve2 = run_unet(tmp_path, "a", 4)
    assert "resuming from the checkpoint at step 2" in caplog.text
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    assert curve == curve2


def test_vae_training_reduces_reconstruction_error(tmp_path):
    images = np.zeros((16, 32, 32, 3), np.uint8)
    images[:, 8:24, 8:24] = 200
    torch.manual_seed(0)
    vae = sd_models.build_vae(VAE, 32)
    acc = make_accelerator(Base())
    cfg = VAE.model_copy(update={"learning_rate": 3e-3, "save_every": 100})
    curve = sd_train.train_vae(vae, images, cfg, 40, 0, acc, TrainState(acc, tmp_path / "v", "fp", LOG), LOG)
    assert curve[-1]["psnr"] > curve[0]["psnr"] + 3


def test_generation_resumes_after_the_last_shard(pipe_dir, tmp_path, caplog):
    pipe = load_pipeline(pipe_dir)
    prompts = [Prompt(f"p{i}", f"a red circle on the {side} on a blue background", "safe", ("x",))
               for i, side in enumerate(["left", "right", "left", "right", "left"])]
    work = jobs(prompts, [0, 1], 1)
    kw = dict(num_inference_steps=2, guidance_scale=3.0, guidance_rescale=0.0, height=None, width=None, log=LOG)
    first = generate(pipe, work, 4, tmp_path / "shards", **kw)
    assert len(first) == 10 and len({r["seed"] for r in first}) == 10
    (tmp_path / "shards" / "shard-00002.parquet").unlink()  # as if killed before the last batch
    (tmp_path / "shards" / "shard-00001.parquet").unlink()
    with caplog.at_level(logging.INFO):
        second = generate(pipe, work, 4, tmp_path / "shards", **kw)
    assert "1 of 3 prompt batches already generated" in caplog.text
    assert [r["png"] for r in second] == [r["png"] for r in first]


def test_same_prompt_same_noise_gives_the_same_image_in_any_batch(pipe_dir, tmp_path):
    pipe = load_pipeline(pipe_dir)
    p = [Prompt("p0", "a red circle on the left on a blue background", "safe", ("x",))]
    others = [Prompt(f"q{i}", "a black gun at the top on a white background", "unsafe", ("x",)) for i in range(3)]
    kw = dict(num_inference_steps=2, guidance_scale=3.0, guidance_rescale=0.0, height=None, width=None, log=LOG)
    alone = generate(pipe, jobs(p, [0], 1), 4, tmp_path / "a", **kw)
    mixed = generate(pipe, jobs(others + p, [0], 1), 4, tmp_path / "b", **kw)
    a = np.asarray(decode_png(alone[0]["png"]), np.int16)
    b = np.asarray(decode_png(mixed[-1]["png"]), np.int16)
    assert np.abs(a - b).max() <= 1  # batched matmuls may differ in the last bit, never in content


def test_dpm_solver_keeps_the_training_schedule_and_draws(pipe_dir, tmp_path):
    """`eval_generation.sampler: dpm_solver` swaps in DPM-Solver++ built from the pipeline's own config: the
    same betas, v-prediction, trailing spacing and zero-terminal-SNR rescaling; 'pipeline' keeps DDIM."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    assert isinstance(use_sampler(load_pipeline(pipe_dir), "pipeline").scheduler, DDIMScheduler)
    pipe = use_sampler(load_pipeline(pipe_dir), "dpm_solver")
    sched = pipe.scheduler
    assert isinstance(sched, DPMSolverMultistepScheduler) and sched.config.algorithm_type == "dpmsolver++"
    for key in ("prediction_type", "timestep_spacing", "rescale_betas_zero_snr", "beta_schedule"):
        assert sched.config[key] == load_pipeline(pipe_dir).scheduler.config[key], key
    sched.set_timesteps(5)
    assert int(sched.timesteps[0]) == SD.num_train_timesteps - 1  # trailing: starts at pure noise
    p = [Prompt("p0", "a red circle on the left on a blue background", "safe", ("x",))]
    out = generate(pipe, jobs(p, [0], 1), 4, tmp_path / "s", num_inference_steps=5, guidance_scale=3.0,
                   guidance_rescale=0.0, height=None, width=None, log=LOG)
    assert np.isfinite(np.asarray(decode_png(out[0]["png"]), np.float32)).all()
    with pytest.raises(ValueError, match="unknown sampler"):
        use_sampler(load_pipeline(pipe_dir), "euler")


def test_object_weight_maps_by_hand() -> None:
    from safeclip.world.scene import Scene, SceneObject

    scenes = [Scene("blue", (SceneObject("circle", "red", "centre"),)),
              Scene("blue", (SceneObject("gun", "red", "top left"),))]
    assert sd_train.object_weight_maps(scenes, 6, 1.0) is None  # plain MSE
    maps = sd_train.object_weight_maps(scenes, 6, 3.0)
    # a 6x6 latent: each grid cell is 2x2; 4 positions at 3, 32 at 1 -> mean 44/36, scaled to mean 1
    hi, lo = 3 * 36 / 44, 36 / 44
    want = torch.full((2, 1, 6, 6), lo)
    want[0, 0, 2:4, 2:4] = hi
    want[1, 0, 0:2, 0:2] = hi
    assert torch.allclose(maps, want)
    # a 16x16 latent: cells of 16/3 positions, the border rows/columns shared by both neighbours (floor, ceil)
    big = sd_train.object_weight_maps(scenes[:1], 16, 2.0)[0, 0]
    assert (big[5:11, 5:11] > 1).all() and (big[:5] < 1).all() and (big[11:] < 1).all()


def test_object_weight_changes_the_loss_only_where_it_weighs(tmp_path) -> None:
    """Weights of 1 everywhere give exactly the plain-MSE training; other maps give another run."""
    clip = build_world_clip(WorldClip(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                      projection_dim=8), image_size=8)
    enc = text_encoder(clip.model)
    states = sd_train.encode_prompts(clip.tokenizer, enc, ["a red circle in the centre on a blue background", ""])
    cfg = WorldUnet(block_out_channels=[8, 16], norm_num_groups=4, attention_head_dim=4, steps=3, batch_size=2,
                    warmup_steps=0)
    latents = torch.randn(4, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    labels = np.zeros(4, np.int64)

    def run(maps, name):
        torch.manual_seed(0)
        unet = sd_models.build_unet(cfg, 6, 4, enc.config.hidden_size)
        acc = make_accelerator(Base())
        state = TrainState(acc, tmp_path / name, name, logging.getLogger("t"))
        return sd_train.train_unet(unet, latents, labels, states[:1], states[1], sd_models.train_scheduler(WorldSd()),
                                   cfg, 3, 0, acc, state, logging.getLogger("t"), weight_maps=maps)[1]

    plain, ones = run(None, "a"), run(torch.ones(1, 1, 6, 6), "b")
    assert [r["loss"] for r in plain] == [r["loss"] for r in ones]
    maps = torch.ones(1, 1, 6, 6)
    maps[..., :3, :] = 0.0
    assert run(maps, "c")[0]["loss"] != plain[0]["loss"]
