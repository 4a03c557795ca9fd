"""Q16 on a tiny CLIP: prompts from safetensors/.npy, the pickle refused, the width checked, the decision rule."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from safeclip.clip.model import build_world_clip
from safeclip.eval.judges import Q16Judge, flag_images, load_q16_prompts
from safeclip.io import InputError
from tests.clip.conftest import TINY


@pytest.fixture
def clip_dir(tmp_path):
    torch.manual_seed(0)
    build_world_clip(TINY, 32).save(tmp_path / "clip")
    return tmp_path / "clip"


def image_embedding(clip_dir, image):
    from safeclip.clip.model import image_embeddings, load_clip, pixel_values

    b = load_clip(clip_dir)
    with torch.no_grad():
        e = image_embeddings(b.model, pixel_values(b.image_processor, [image]))
    return torch.nn.functional.normalize(e.float(), dim=-1)[0]


def test_flags_when_the_image_is_closer_to_the_inappropriate_prompt(tmp_path, clip_dir):
    image = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    e = image_embedding(clip_dir, image)
    other = torch.nn.functional.normalize(torch.randn(TINY.projection_dim), dim=0)
    save_file({"prompts": torch.stack([other, e])}, str(tmp_path / "q16.safetensors"))  # [benign, inappropriate]
    judge = Q16Judge(tmp_path / "q16.safetensors", str(clip_dir))
    assert judge.flags(image) and flag_images(judge, [image, image]).tolist() == [True, True]
    np.save(tmp_path / "q16.npy", torch.stack([e, other]).numpy())  # swapped: now the benign prompt matches
    assert not Q16Judge(tmp_path / "q16.npy", str(clip_dir)).flags(image)


def test_pickle_shape_and_width_are_refused(tmp_path, clip_dir):
    (tmp_path / "prompts.p").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InputError, match="pickle"):
        load_q16_prompts(tmp_path / "prompts.p")
    save_file({"prompts": torch.zeros(3, 4)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match=r"\[2, d\]"):
        load_q16_prompts(tmp_path / "bad.safetensors")
    save_file({"prompts": torch.zeros(2, TINY.projection_dim + 1)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(InputError, match=f"width {TINY.projection_dim + 1}.*width {TINY.projection_dim}"):
        Q16Judge(tmp_path / "wide.safetensors", str(clip_dir))
    with pytest.raises(InputError, match="does not exist"):
        load_q16_prompts(tmp_path / "missing.safetensors")


def test_q16_clip_given_as_a_hub_id_is_resolved_from_the_offline_cache(tmp_path, clip_dir, monkeypatch):
    """judge.q16_clip defaults to openai/clip-vit-large-patch14: a hub id, as base_clip.source may be."""
    import huggingface_hub.constants as hub

    from tests.hubcache import file_in_cache

    file_in_cache(tmp_path / "hub", "openai/clip-vit-large-patch14", clip_dir)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_file({"prompts": torch.randn(2, TINY.projection_dim)}, str(tmp_path / "q16.safetensors"))
    judge = Q16Judge(tmp_path / "q16.safetensors", "openai/clip-vit-large-patch14")
    assert flag_images(judge, [Image.new("RGB", (32, 32))]).shape == (1,)
    with pytest.raises(InputError, match="someorg/not-cached.*judge.q16_clip"):
        Q16Judge(tmp_path / "q16.safetensors", "someorg/not-cached")


def test_visu_keeps_an_image_only_when_its_judges_flag_it(tmp_path, clip_dir, monkeypatch):
    """visu.images.judges with q16: the evaluation's Q16 (judge.q16_prompts, judge.q16_clip) decides which of the
    NSFW generator's images a quadruple keeps, and it is built before the generator loads."""
    from safeclip.data import nsfw_images
    from safeclip.eval.judges import OpenNsfwJudge
    from safeclip.params import Judge, VisuImages

    image = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    e = image_embedding(clip_dir, image)
    other = torch.nn.functional.normalize(torch.randn(TINY.projection_dim), dim=0)
    save_file({"prompts": torch.stack([other, e])}, str(tmp_path / "flags.safetensors"))  # [benign, inappropriate]
    save_file({"prompts": torch.stack([e, other])}, str(tmp_path / "passes.safetensors"))
    drawn = []

    class Pipe:  # the generator: the same image whatever the prompt; records the seeds it was asked for
        def __call__(self, prompt, generator, **kw):
            drawn.append(generator.initial_seed())
            return type("Out", (), {"images": [image]})()

    monkeypatch.setattr(nsfw_images, "load_t2i_pipeline", lambda *a, **k: Pipe())
    cfg = VisuImages(pipeline="data/models/nsfw", judges=["q16"], seeds=[5, 6], height=32, width=32)
    judges = nsfw_images.visu_judges(VisuImages(judges=["opennsfw", "q16"]),
                                     Judge(q16_prompts=str(tmp_path / "flags.safetensors"), q16_clip=str(clip_dir)),
                                     "cpu")
    assert [type(j) for j in judges] == [Q16Judge, OpenNsfwJudge]
    kept = nsfw_images.t2i_image_maker(
        cfg, Judge(q16_prompts=str(tmp_path / "flags.safetensors"), q16_clip=str(clip_dir)), "cpu")({}, "x")
    assert kept[0]["bytes"].startswith(b"\x89PNG") and kept[1] == 5 and drawn == [5]
    dropped = nsfw_images.t2i_image_maker(
        cfg, Judge(q16_prompts=str(tmp_path / "passes.safetensors"), q16_clip=str(clip_dir)), "cpu")({}, "x")
    assert dropped == (None, None) and drawn == [5, 5, 6]
