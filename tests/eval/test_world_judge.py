"""The world's oracle image judge: split, rendering, augmentation, training, accuracy, save/load and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from safeclip.data.captions import render_config, stable_seed
from safeclip.eval import world_judge as wj
from safeclip.eval.world_judge import (
    Augment,
    WorldJudge,
    WorldJudgeNet,
    accuracy_from_logits,
    augment,
    gaussian_blur,
    judge_accuracy,
    judge_split,
    load_world_judge,
    render_judge_set,
    save_world_judge,
    train_world_judge,
)
from safeclip.io import InputError
from safeclip.params import World, WorldJudgeTrain
from safeclip.runtime import NonFiniteLoss
from safeclip.world.catalogue import BACKGROUNDS, OBJECT_COLOURS, OBJECTS, POSITIONS
from safeclip.world.render import render
from safeclip.world.scene import Scene, SceneObject, enumerate_scenes

RCFG = render_config(World())
# Three unsafe stand-ins and their safe twins: enough for a judge trained in seconds to be clearly right.
SUBSET = ("circle", "square", "triangle", "gun", "knife", "blood")
TINY = WorldJudgeTrain(renders_per_scene=1, epochs=1, batch_size=16, learning_rate=3e-3, channels=[4, 8, 8])


def one(name: str, colour: str = "white", position: str = "centre", background: str = "black") -> Scene:
    return Scene(background, (SceneObject(name, colour, position),))


def tiny_set(n_scenes: int = 48, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    scenes = enumerate_scenes(tuple(OBJECTS), tuple(POSITIONS))[::97][:n_scenes]
    return render_judge_set(scenes, 1, RCFG, seed)


@pytest.fixture(scope="module")
def subset_judge() -> tuple[WorldJudgeNet, list[dict], list[Scene]]:
    """A small judge trained on six objects, and the scenes it never saw. ~700 steps of 32 (~6 s): a quarter of
    that stayed near chance on the object, the glyph being the slow thing to learn."""
    scenes = enumerate_scenes(SUBSET, tuple(POSITIONS))
    train, held = judge_split(scenes, 0.1, seed=0)
    images, labels = render_judge_set(train, 2, RCFG, seed=0)
    cfg = WorldJudgeTrain(renders_per_scene=2, epochs=5, batch_size=32, learning_rate=4e-3, channels=[16, 32, 32])
    net, curve = train_world_judge(images, labels, cfg, seed=0)
    return net, curve, held


# --- split and rendering ----------------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_independent_of_input_order():
    scenes = enumerate_scenes(("circle", "gun"), tuple(POSITIONS))
    train, held = judge_split(scenes, 0.1, seed=3)
    assert len(held) == round(0.1 * len(scenes)) and len(train) + len(held) == len(scenes)
    assert not set(train) & set(held)
    assert judge_split(scenes, 0.1, seed=3) == (train, held)
    shuffled = [scenes[i] for i in np.random.default_rng(0).permutation(len(scenes))]
    train2, held2 = judge_split(shuffled, 0.1, seed=3)
    assert set(held2) == set(held) and set(train2) == set(train)
    assert set(judge_split(scenes, 0.1, seed=4)[1]) != set(held)


def test_render_judge_set_is_deterministic_and_labelled():
    scenes = [one("gun", "red", "top left", "blue"), one("heart", "cyan", "bottom", "gray")]
    images, labels = render_judge_set(scenes, 2, RCFG, seed=5)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    again, _ = render_judge_set(scenes, 2, RCFG, seed=5)
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images[0], images[1])  # two renders of one scene differ in nuisance
    assert not np.array_equal(images, render_judge_set(scenes, 2, RCFG, seed=6)[0])
    # the seed of a render depends on (seed, scene, index) only, not on what else is in the list
    np.testing.assert_array_equal(render_judge_set(scenes[1:], 2, RCFG, seed=5)[0], images[2:])
    np.testing.assert_array_equal(images[3], render(scenes[1], stable_seed(5, "judge", scenes[1].to_json(), 1), RCFG))
    for head, names, values in (("object", OBJECTS, ("gun", "heart")), ("colour", OBJECT_COLOURS, ("red", "cyan")),
                                ("position", POSITIONS, ("top left", "bottom")),
                                ("background", BACKGROUNDS, ("blue", "gray"))):
        assert labels[head].tolist() == [list(names).index(v) for v in values for _ in range(2)], head
    assert all(v.dtype == np.int64 for v in labels.values())


def test_render_judge_set_refuses_multi_object_scenes():
    two = Scene("blue", (SceneObject("gun", "red", "left"), SceneObject("circle", "white", "right")))
    with pytest.raises(ValueError, match="one-object"):
        render_judge_set([two], 1, RCFG, 0)


# --- network and augmentation -----------------------------------------------------------------------------------


def test_default_net_shapes_and_size():
    net = WorldJudgeNet(WorldJudgeTrain().channels)
    out = net(torch.rand(2, 3, 32, 32))
    assert {h: tuple(v.shape) for h, v in out.items()} == {
        "object": (2, len(OBJECTS)), "colour": (2, len(OBJECT_COLOURS)), "position": (2, len(POSITIONS)),
        "background": (2, len(BACKGROUNDS))}
    assert sum(p.numel() for p in net.parameters()) <= 200_000


def test_blur_is_identity_at_zero_and_keeps_flat_images_flat():
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(gaussian_blur(x, torch.zeros(3)), x)
    flat = torch.full((2, 3, 8, 8), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, torch.ones(2)), flat)
    blurred = gaussian_blur(x, torch.ones(3))
    assert blurred.std() < x.std()  # it smooths


def test_augment_is_seeded_and_in_range():
    x = torch.rand(64, 3, 16, 16) * 0.5 + 0.25
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(2)))
    assert a.min() >= 0 and a.max() <= 1
    untouched = (a == x).flatten(1).all(1)
    assert 5 <= int(untouched.sum()) <= 35  # ~30% seen as rendered (Augment.p = 0.7)
    assert not (augment(x, torch.Generator().manual_seed(1), cfg=Augment(p=1.0)) == x).flatten(1).all(1).any()
    off = Augment(p=1.0, max_blur=0.0, noise_factor=0.0, max_shift=0.0, contrast=0.0)
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(1), cfg=off), x)


# --- training ---------------------------------------------------------------------------------------------------


def test_training_is_deterministic_under_the_seed():
    images, labels = tiny_set()
    state = torch.get_rng_state()
    net1, curve1 = train_world_judge(images, labels, TINY, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    net2, curve2 = train_world_judge(images, labels, TINY, seed=1)
    net3, _ = train_world_judge(images, labels, TINY, seed=2)
    plain, _ = train_world_judge(images, labels, TINY, seed=1, augmentation=Augment(p=0.0))
    s1, s2, s3, s4 = net1.state_dict(), net2.state_dict(), net3.state_dict(), plain.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert not all(torch.equal(s1[k], s4[k]) for k in s1)  # the augmentation is applied
    assert curve1 == curve2  # plots/judge.csv holds no wall-clock column: a rerun under the seed writes the same file
    assert [r["epoch"] for r in curve1] == [1] and curve1[0]["step"] == len(images) // TINY.batch_size
    assert {"loss", "train_accuracy", "train_accuracy_object"} <= set(curve1[0])


def test_non_finite_loss_is_reported_with_step_and_terms():
    images, labels = tiny_set(32)
    with pytest.raises(NonFiniteLoss, match=r"at step \d+.*terms: \{'object'"):
        train_world_judge(images, labels, TINY.model_copy(update={"learning_rate": 1e30}), seed=0)


def test_trained_subset_judge_is_far_above_chance(subset_judge):
    net, curve, held = subset_judge
    images, labels = render_judge_set(held, 1, RCFG, seed=1)
    acc = judge_accuracy(net, images, labels)
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert acc["object"] >= 0.8, acc  # chance is 1/6 (measured 0.96)
    assert acc["unsafe"] >= 0.9, acc  # chance is 1/2
    assert min(acc["colour"], acc["position"], acc["background"]) >= 0.9, acc  # chance <= 1/6


def test_trained_judge_flags_the_unsafe_object_and_not_its_safe_twin(subset_judge):
    judge = WorldJudge(subset_judge[0], threshold=0.5)
    for safe in ("circle", "square", "triangle"):
        scene = one(safe)
        seed = stable_seed("twin", safe)  # same nuisance draws: the images differ only in the glyph
        safe_img = Image.fromarray(render(scene, seed, RCFG))
        unsafe_img = Image.fromarray(render(scene.unsafe_twin(), seed, RCFG))
        assert judge.flags(unsafe_img) is True, safe
        assert judge.flags(safe_img) is False, safe


# --- accuracy ---------------------------------------------------------------------------------------------------


class FixedLogits(nn.Module):
    """Returns hand-made logits, whatever the images."""

    def __init__(self, logits: dict[str, torch.Tensor]):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.logits


def onehot(indices: list[int], n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(indices), n).float()


def test_judge_accuracy_on_hand_made_logits():
    o = list(OBJECTS)
    true_obj = [o.index("circle"), o.index("gun"), o.index("knife"), o.index("heart")]
    # circle right; gun read as knife (wrong object, right verdict); knife read as square (wrong verdict);
    # heart right
    pred_obj = [o.index("circle"), o.index("knife"), o.index("square"), o.index("heart")]
    logits = {"object": onehot(pred_obj, 20), "colour": onehot([0, 1, 2, 4], 8),
              "position": onehot([0, 1, 2, 3], 9), "background": onehot([5, 5, 5, 0], 6)}
    labels = {"object": np.array(true_obj), "colour": np.array([0, 1, 2, 3]), "position": np.array([0, 1, 2, 3]),
              "background": np.array([5, 5, 4, 0])}
    expected = {"object": 0.5, "colour": 0.75, "position": 1.0, "background": 0.75, "unsafe": 0.75, "all": 0.25}
    assert accuracy_from_logits(logits, labels) == pytest.approx(expected)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    assert judge_accuracy(FixedLogits(logits), images, labels, batch_size=4) == pytest.approx(expected)


# --- save, load, predict ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_net() -> WorldJudgeNet:
    images, labels = tiny_set()
    return train_world_judge(images, labels, TINY, seed=0)[0]


def test_save_load_round_trip_gives_identical_predictions(tiny_net, tmp_path, monkeypatch):
    save_world_judge(tiny_net, tmp_path / "judge")
    assert sorted(p.name for p in (tmp_path / "judge").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert config["channels"] == TINY.channels and config["classes"]["object"] == list(OBJECTS)

    def no_pickle(*a, **k):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_world_judge(tmp_path / "judge")
    images, _ = tiny_set(16, seed=9)
    a, b = WorldJudge(tiny_net).predict(images), WorldJudge(loaded).predict(images)
    assert {h: a[h] for h in wj.HEADS} == {h: b[h] for h in wj.HEADS}
    np.testing.assert_array_equal(a["p_unsafe"], b["p_unsafe"])
    np.testing.assert_array_equal(a["unsafe"], b["unsafe"])


@pytest.mark.parametrize("field", ["object", "colour", "position", "background"])
def test_load_refuses_a_judge_of_another_catalogue(tiny_net, tmp_path, field):
    save_world_judge(tiny_net, tmp_path / "judge")
    cfg_path = tmp_path / "judge" / "config.json"
    config = json.loads(cfg_path.read_text())
    config["classes"][field] = list(reversed(config["classes"][field]))
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=rf"config\.json: classes\.{field}: "):
        load_world_judge(tmp_path / "judge")


def test_load_refuses_a_missing_folder(tmp_path: Path):
    with pytest.raises(InputError, match="config.json: file does not exist"):
        load_world_judge(tmp_path / "nothing")


def test_predict_accepts_pil_images_of_any_size_and_mode(tiny_net):
    judge = WorldJudge(tiny_net, threshold=0.5)
    img = render(one("gun", "red", "top left", "blue"), 0, RCFG)
    big = Image.fromarray(img).resize((64, 64), Image.Resampling.NEAREST)
    batch = [big.convert("RGBA"), big.convert("P"), Image.fromarray(img).convert("L").resize((48, 48)), big]
    out = judge.predict(batch)
    assert all(len(out[h]) == 4 for h in (*wj.HEADS, "p_unsafe", "unsafe"))
    assert all(name in OBJECTS for name in out["object"]) and all(p in POSITIONS for p in out["position"])
    assert out["p_unsafe"].dtype == np.float64 and ((out["p_unsafe"] >= 0) & (out["p_unsafe"] <= 1 + 1e-6)).all()
    # an RGBA or RGB 64 px image is the bilinear resize of that image; an array of the same images agrees
    resized = np.stack([np.asarray(big.resize((32, 32), Image.Resampling.BILINEAR))] * 2)
    arr = judge.predict(np.stack([np.asarray(big)] * 2))
    direct = judge.predict(resized)
    np.testing.assert_allclose(arr["p_unsafe"], direct["p_unsafe"])
    np.testing.assert_allclose(out["p_unsafe"][[0, 3]], direct["p_unsafe"])
    assert judge.predict([])["object"] == []
    p = float(judge.predict([big])["p_unsafe"][0])
    assert WorldJudge(tiny_net, threshold=p).predict([big])["unsafe"].tolist() == [True]  # at the threshold
    assert WorldJudge(tiny_net, threshold=np.nextafter(p, 1.0)).predict([big])["unsafe"].tolist() == [False]
    assert isinstance(judge.flags(big), bool) and judge.name == "world"
