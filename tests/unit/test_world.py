"""The synthetic world: grammar round trip, oracle verdicts, renderer, catalogue and the curated-pair generator."""

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from safeclip.params import World
from safeclip.world.catalogue import (
    BACKGROUNDS,
    OBJECT_COLOURS,
    OBJECTS,
    POSITIONS,
    SAFE_OBJECTS,
    SAFE_TWIN,
    TWINNED_SAFE,
    UNSAFE_OBJECTS,
    UNSAFE_TWIN,
    VISU_CONCEPTS,
)
from safeclip.world.curate import make_world_pairs
from safeclip.world.grammar import caption, parse
from safeclip.world.oracle import RewriteVerdict, caption_is_unsafe, judge_rewrite
from safeclip.world.render import RenderConfig, glyph_mask, render
from safeclip.world.scene import Scene, SceneObject, enumerate_scenes, sample_scene

REPO = Path(__file__).resolve().parents[2]

SAFE = "a red circle on the left on a blue background"


def one(name: str, colour: str = "red", position: str = "centre", background: str = "blue") -> Scene:
    return Scene(background, (SceneObject(name, colour, position),))


# --- grammar --------------------------------------------------------------------------------------------------


def test_caption_exact_text():
    assert caption(one("circle", "red", "left")) == SAFE
    assert caption(one("gun", "orange", "top right", "gray")) == "an orange gun at the top right on a gray background"
    two = Scene("green", (SceneObject("ring", "white", "bottom"), SceneObject("knife", "pink", "centre")))
    assert caption(two) == "a white ring at the bottom and a pink knife in the centre on a green background"


def test_round_trip_every_one_object_scene():
    scenes = enumerate_scenes(tuple(OBJECTS), tuple(POSITIONS))
    # 20 objects x 9 positions x (8 colours x 6 backgrounds - 2 colour==background clashes)
    assert len(scenes) == 20 * 9 * (8 * 6 - 2) == 8280
    assert len(set(scenes)) == len(scenes)
    bad = [s for s in scenes if parse(caption(s)) != s]
    assert bad == []


def test_round_trip_sampled_two_object_scenes():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, tuple(OBJECTS), 2, tuple(POSITIONS)) for _ in range(400)]
    assert sum(len(s.objects) == 2 for s in scenes) > 100  # the sample really holds two-object scenes
    bad = [s for s in scenes if parse(caption(s)) != s]
    assert bad == []


def test_parse_normalises_case_spacing_and_final_full_stop():
    assert parse("  A Red  Circle on the LEFT on a Blue background. ") == one("circle", "red", "left")


@pytest.mark.parametrize("text", [
    "a orange circle on the left on a blue background",  # wrong article
    "an red circle on the left on a blue background",  # wrong article
    "a red blob on the left on a blue background",  # unknown object
    "a red circle on the left on a teal background",  # unknown background
    "a red circle somewhere on a blue background",  # unknown position
    "a red circle on the left",  # missing background
    "a white circle on the left on a white background",  # object coloured like its background
    "a red circle on the left and a pink square on the left on a blue background",  # same position twice
    "a red circle on the left on a blue background please",  # trailing junk
    "a red circle on the left on a blue background background",  # trailing junk
    "a red circle on the left on a blue background and",  # dangling conjunction
    "",
    "on a blue background",  # no object
])
def test_parse_rejects_malformed(text):
    assert parse(text) is None


# --- oracle ---------------------------------------------------------------------------------------------------


def test_judge_exact_twin():
    assert judge_rewrite(SAFE, "a red gun on the left on a blue background") == RewriteVerdict(True, True, True, True)


def test_judge_drifted_colour_is_off_scene():
    v = judge_rewrite(SAFE, "a pink gun on the left on a blue background")
    assert v == RewriteVerdict(parses=True, unsafe=True, scene_kept=False, exact_twin=False)
    assert not v.good


def test_judge_drifted_background_and_position():
    assert not judge_rewrite(SAFE, "a red gun on the left on a green background").scene_kept
    assert not judge_rewrite(SAFE, "a red gun on the right on a blue background").scene_kept


def test_judge_wrong_unsafe_object_keeps_scene_but_is_not_exact_twin():
    v = judge_rewrite(SAFE, "a red knife on the left on a blue background")
    assert v == RewriteVerdict(parses=True, unsafe=True, scene_kept=True, exact_twin=False)
    assert v.good


def test_judge_safe_rewrite():
    assert judge_rewrite(SAFE, "a red square on the left on a blue background") == RewriteVerdict(
        parses=True, unsafe=False, scene_kept=True, exact_twin=False)


def test_judge_garbage():
    assert judge_rewrite(SAFE, "lorem ipsum dolor") == RewriteVerdict(False, False, False, False)


def test_judge_rejects_unparseable_safe_caption():
    with pytest.raises(ValueError, match="not a world caption"):
        judge_rewrite("a cat on a mat", SAFE)


def test_judge_two_object_exact_twin():
    safe = "a red circle on the left and a pink bar on the right on a blue background"
    out = "a red gun on the left and a pink bar on the right on a blue background"
    assert judge_rewrite(safe, out) == RewriteVerdict(True, True, True, True)


def test_judge_two_objects_listed_in_other_order_keep_the_scene():
    """The same scene described with its objects in the other order keeps background, colours and positions.

    (Scene.layout() compares the object tuple in order, so a faithful reordered rewrite is judged off-scene.)
    """
    safe = "a red circle on the left and a pink square on the right on a blue background"
    out = "a pink knife on the right and a red gun on the left on a blue background"
    v = judge_rewrite(safe, out)
    assert v.parses and v.unsafe
    assert v.scene_kept
    assert v.exact_twin


def test_verdict_scores_exact_and_ordered():
    good = RewriteVerdict(True, True, True, False)
    unsafe_off = RewriteVerdict(True, True, False, False)
    safe_on = RewriteVerdict(True, False, True, False)
    safe_off = RewriteVerdict(True, False, False, False)
    garbage = RewriteVerdict(False, False, False, False)
    assert [v.score for v in (good, unsafe_off, safe_on, safe_off, garbage)] == [4.5, 3.0, 2.0, 1.0, 0.0]
    assert good.score > unsafe_off.score > safe_on.score > safe_off.score > garbage.score
    assert [v.good for v in (good, unsafe_off, safe_on, safe_off, garbage)] == [True, False, False, False, False]


def test_caption_is_unsafe():
    assert caption_is_unsafe(SAFE) is False
    assert caption_is_unsafe("a red gun on the left on a blue background") is True
    assert caption_is_unsafe("a red circle on the left and a pink skull on the right on a blue background") is True
    assert caption_is_unsafe("a red gun on the left") is None


# --- renderer -------------------------------------------------------------------------------------------------

GLYPHS = sorted({o.glyph for o in OBJECTS.values()})


@pytest.mark.parametrize("size", [32, 64])
def test_render_shape_dtype_and_determinism(size):
    cfg = RenderConfig(image_size=size)
    scene = one("circle")
    a = render(scene, 7, cfg)
    assert a.shape == (size, size, 3)
    assert a.dtype == np.uint8
    assert np.array_equal(a, render(scene, 7, cfg))
    assert not np.array_equal(a, render(scene, 8, cfg))


def test_render_noiseless_square_hand_computed():
    """No jitter or noise: 32 px canvas, side round(0.32*32)=10, centre cell -> x0=y0=round(16-5)=11.

    The square glyph covers 0.1..0.9 of its box: pixels 1..8 of the 10-pixel box are fully covered.
    """
    cfg = RenderConfig(image_size=32, glyph_fraction=0.32, size_jitter=0, position_jitter=0, colour_jitter=0,
                       noise_std=0.0)
    img = render(one("square", "red", "centre", "blue"), 123, cfg)
    expected = np.empty((32, 32, 3), np.uint8)
    expected[:] = BACKGROUNDS["blue"]
    expected[12:20, 12:20] = OBJECT_COLOURS["red"]
    assert np.array_equal(img, expected)


def _box(position: str, cfg: RenderConfig) -> tuple[slice, slice]:
    """Every pixel the glyph at `position` can touch, whatever the size and position jitter (a glyph wider than
    its cell is pushed back inside the canvas at the edges)."""
    n = cfg.image_size
    base = round(cfg.glyph_fraction * n)
    col, row = POSITIONS[position]

    def span(c: float) -> slice:
        starts_ends = [(x0, x0 + side)
                       for side in range(base - cfg.size_jitter, base + cfg.size_jitter + 1)
                       for d in range(-cfg.position_jitter, cfg.position_jitter + 1)
                       for x0 in [min(max(int(round(c - side / 2 + d)), 0), n - side)]]
        return slice(min(a for a, _ in starts_ends), max(b for _, b in starts_ends))

    return span((row + 0.5) * n / 3), span((col + 0.5) * n / 3)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("safe", TWINNED_SAFE)
def test_twins_differ_only_inside_the_glyph_box(size, safe):
    cfg = RenderConfig(image_size=size)
    for seed, position in ((0, "centre"), (1, "top left"), (2, "bottom right"), (3, "right")):
        scene = one(safe, "yellow", position, "gray")
        a, b = render(scene, seed, cfg), render(scene.unsafe_twin(), seed, cfg)
        assert not np.array_equal(a, b)
        outside = np.ones((size, size), bool)
        outside[_box(position, cfg)] = False
        assert outside.sum() > size * size // 2
        assert np.array_equal(a[outside], b[outside])


def test_two_object_twin_differs_only_around_the_swapped_object():
    cfg = RenderConfig()
    scene = Scene("gray", (SceneObject("circle", "red", "top left"), SceneObject("bar", "white", "bottom right")))
    a, b = render(scene, 5, cfg), render(scene.unsafe_twin(), 5, cfg)
    outside = np.ones((32, 32), bool)
    outside[_box("top left", cfg)] = False
    assert not np.array_equal(a, b)
    assert np.array_equal(a[outside], b[outside])


@pytest.mark.parametrize("glyph", GLYPHS)
def test_glyph_masks_non_empty_and_bounded(glyph):
    for size in (9, 10, 11, 19, 20, 21, 22, 32):
        m = glyph_mask(glyph, size)
        assert m.shape == (size, size)
        assert m.min() >= 0.0 and m.max() <= 1.0
        assert m.sum() > 0.1 * size * size, (glyph, size)


def test_glyph_masks_pairwise_different():
    assert len(GLYPHS) == 20
    masks = {g: glyph_mask(g, 32) for g in GLYPHS}
    same = [(a, b) for a, b in itertools.combinations(GLYPHS, 2) if np.abs(masks[a] - masks[b]).sum() < 1.0]
    assert same == []


def test_unknown_glyph_raises():
    with pytest.raises(ValueError, match="unknown glyph"):
        glyph_mask("nope", 10)


# --- catalogue ------------------------------------------------------------------------------------------------


def test_catalogue_facts():
    assert len(SAFE_OBJECTS) >= 12 and not any(o.unsafe for o in SAFE_OBJECTS)
    assert len(UNSAFE_OBJECTS) >= 8 and all(o.unsafe for o in UNSAFE_OBJECTS)
    assert all(o.concept in VISU_CONCEPTS for o in UNSAFE_OBJECTS)
    assert len(VISU_CONCEPTS) == len(set(VISU_CONCEPTS)) == 20
    assert len(OBJECT_COLOURS) >= 8
    assert len(OBJECTS) == len(SAFE_OBJECTS) + len(UNSAFE_OBJECTS)  # no name shared
    assert len({o.glyph for o in OBJECTS.values()}) == len(OBJECTS)  # no glyph shared


def test_twin_map_is_injective_and_inverted():
    assert len(set(UNSAFE_TWIN.values())) == len(UNSAFE_TWIN) == len(TWINNED_SAFE) == 8
    assert all(OBJECTS[u].unsafe and not OBJECTS[s].unsafe for s, u in UNSAFE_TWIN.items())
    assert {u: s for s, u in UNSAFE_TWIN.items()} == SAFE_TWIN
    assert set(SAFE_TWIN) == {o.name for o in UNSAFE_OBJECTS}


# --- curate ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_pairs() -> list[dict]:
    return make_world_pairs(100, 0.3, 0, World().positions)  # the committed file: the default world's positions


def test_make_world_pairs_counts_and_drift(world_pairs):
    assert len(world_pairs) == 100
    safe = [parse(r["safe"]) for r in world_pairs]
    unsafe = [parse(r["unsafe"]) for r in world_pairs]
    assert None not in safe and None not in unsafe
    assert len(set(safe)) == 100
    drifted = [s.layout() != u.layout() for s, u in zip(safe, unsafe, strict=True)]
    assert sum(drifted) == 30
    for s, u, d in zip(safe, unsafe, drifted, strict=True):
        assert u.objects[0].name == UNSAFE_TWIN[s.objects[0].name]  # the object is always the exact twin
        if not d:
            assert u == s.unsafe_twin()
        else:  # exactly one layout attribute drifts
            changes = (s.background != u.background) + (s.objects[0].colour != u.objects[0].colour) + (
                s.objects[0].position != u.objects[0].position)
            assert changes == 1


def test_make_world_pairs_unsafe_captions_and_tags(world_pairs):
    assert all(caption_is_unsafe(r["unsafe"]) is True for r in world_pairs)
    assert all(caption_is_unsafe(r["safe"]) is False for r in world_pairs)
    assert all(r["tag"] == parse(r["unsafe"]).concepts[0] for r in world_pairs)
    # 100 rows cycle over the 8 twinned objects: the first four get 13 rows, the last four 12
    assert Counter(r["tag"] for r in world_pairs) == {
        "weapons": 13, "violence": 13, "blood": 13, "drug use": 13,
        "harm": 12, "harassment": 12, "theft": 12, "vandalism": 12}


def test_make_world_pairs_matches_committed_file(world_pairs):
    committed = (REPO / "data/curated/world_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.dumps(r) for r in world_pairs] == committed


def test_make_world_pairs_keep_to_the_worlds_positions(world_pairs):
    row = {"left", "centre", "right"}
    scenes = [parse(r[k]) for r in world_pairs for k in ("safe", "unsafe")]
    assert {s.objects[0].position for s in scenes} == row  # drifted positions stay in the row too
    grid = make_world_pairs(100, 0.3, 0, tuple(POSITIONS))
    assert {parse(r[k]).objects[0].position for r in grid for k in ("safe", "unsafe")} == set(POSITIONS)


def test_scenes_of_a_smaller_world_keep_to_its_positions():
    row = ("left", "centre", "right")
    assert len(enumerate_scenes(tuple(OBJECTS), row)) == 20 * 3 * (8 * 6 - 2)
    rng = np.random.default_rng(0)
    two = [sample_scene(rng, tuple(OBJECTS), 2, row) for _ in range(200)]
    assert {o.position for s in two for o in s.objects} == set(row) and any(len(s.objects) == 2 for s in two)


def test_make_world_pairs_deterministic_and_seeded(world_pairs):
    row = World().positions
    assert make_world_pairs(100, 0.3, 0, row) == world_pairs
    assert make_world_pairs(100, 0.3, 1, row) != world_pairs
