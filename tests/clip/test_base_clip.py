"""World base CLIP pieces: the pretraining pool, pixel preparation, the multi-positive loss, zero-shot prompts,
and the evaluation suite's protocol (which gallery, which hit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip.clip.model import pixel_values
from safeclip.clip.pretrain import multi_positive_infonce, normalise_pixels, pretraining_pool
from safeclip.data.captions import render_config
from safeclip.eval.suite import retrieval_metrics
from safeclip.eval.zeroshot import WORLD_OBJECTS, accuracy, world_candidates
from safeclip.io import InputError
from safeclip.params import World
from safeclip.world.grammar import parse
from safeclip.world.scene import Scene, SceneObject
from tests.clip.conftest import visu_rows


def test_pool_rerenders_both_scenes_of_each_row():
    rows = visu_rows(3, "train")
    captions, labels, images = pretraining_pool(rows, 4, render_config(World()), 0, "train.parquet")
    assert images.shape == (3 * 4 * 2, 32, 32, 3) and images.dtype == np.uint8
    assert len(captions) == 6 and sorted(set(labels.tolist())) == list(range(6))
    # safe and unsafe of one render share the nuisance: they differ only where the glyph is
    safe, unsafe = images[0].astype(int), images[1].astype(int)
    assert parse(captions[labels[0]]).unsafe is False and parse(captions[labels[1]]).unsafe is True
    assert 0 < (np.abs(safe - unsafe).sum(-1) > 0).mean() < 0.2
    assert not np.array_equal(images[0], images[2])  # a second render of the same scene differs


def test_pool_needs_world_scenes():
    rows = visu_rows(2, "train")
    rows[1]["nsfw_scene"] = None
    with pytest.raises(InputError, match=r"train.parquet: row 1 .*'nsfw_scene'"):
        pretraining_pool(rows, 1, render_config(World()), 0, "train.parquet")


def test_normalised_pixels_equal_the_image_processor(tiny_bundle):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    proc = tiny_bundle.image_processor
    expected = pixel_values(proc, [Image.fromarray(im) for im in images])
    torch.testing.assert_close(normalise_pixels(images, proc.image_mean, proc.image_std), expected, atol=1e-5,
                               rtol=1e-5)


def test_multi_positive_infonce_by_hand():
    # two items with the same caption and one other; orthonormal embeddings, logit scale 1.
    text = torch.eye(3)
    image = torch.eye(3)
    labels = torch.tensor([0, 0, 1])
    # row 0 logits (1, 0, 0): targets (1/2, 1/2, 0) -> -(1/2)(1 - lse) - (1/2)(0 - lse) = lse - 1/2
    lse = math.log(math.e + 2)
    row01 = lse - 0.5
    row2 = lse - 1  # one positive, logit 1
    expected = (2 * row01 + row2) / 3  # both directions are equal here
    got = multi_positive_infonce(text, image, labels, torch.tensor(1.0))
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_world_candidates_swap_one_field_and_respect_world_rules():
    scene = Scene("blue", (SceneObject("circle", "red", "left"),))
    classes, texts = world_candidates(scene, "object")
    assert classes == list(WORLD_OBJECTS) and len(classes) == 16
    assert texts[classes.index("gun")] == "a red gun on the left on a blue background"
    classes, texts = world_candidates(Scene("white", (SceneObject("circle", "red", "left"),)), "colour")
    assert "white" not in classes and len(classes) == 7
    assert texts[classes.index("yellow")] == "a yellow circle on the left on a white background"
    assert accuracy(torch.eye(2), torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.0]]), [0, 1, 1]) == \
        pytest.approx(2 / 3)


def test_suite_uses_mixed_galleries_and_safe_hits():
    # 2 quadruples in 2-D: unsafe text i points exactly at safe image i -> T*->V R@1 = 100, nothing unsafe.
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    vs = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    e = {"text_safe": v.clone(), "text_unsafe": v.clone(), "image_safe": v, "image_unsafe": vs}
    m = retrieval_metrics(e, ks=(1, 2), unsafe_ks=(1, 2))
    assert m["retrieval.t_to_v.r1"] == 100.0 and m["retrieval.t_star_to_v.r1"] == 100.0
    assert m["unsafe_retrieved.unsafe_text.top1"] == 0.0
    assert m["unsafe_retrieved.unsafe_text.top2"] == 50.0  # second best of each query is an unsafe image
    # unsafe image 0 (1,1)/sqrt2: texts (1,0),(0,1) tie with the unsafe texts (identical): ties count against
    assert m["retrieval.v_star_to_t.r1"] == 0.0
    assert "text_only.t_star_to_v.r1" not in m
    m2 = retrieval_metrics(e, ks=(1,), unsafe_ks=(1,), base=e)
    assert m2["text_only.t_star_to_v.r1"] == 100.0
