"""SafeR-CLIP: relative redirection loss, the eight-term objective, nearest-safe targets and the curriculum, against
values worked out by hand on tiny 2-D / 3-D examples.

Notation: u(a, r) is the 2-D vector of length r at `a` degrees; sp(z) = log(1 + e^z) (softplus). With logit scale 1
and unit rows, a 2-row InfoNCE row costs log(e^{c_ii} + e^{c_ij}) - c_ii = sp(c_ij - c_ii).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from safeclip.io import InputError
from safeclip.methods.safer_clip import (
    TERMS,
    CurriculumPlan,
    attach_targets,
    easy_first_order,
    nearest_safe,
    redirection_targets,
    relative_redirection,
    safer_clip_loss,
)
from safeclip.params import SaferClipWeights

TOL = 1e-12
R2, R3 = math.sqrt(2), math.sqrt(3)


def u(deg: float, r: float = 1.0) -> list[float]:
    return [r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))]


def rows(*vectors: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(vectors, dtype=torch.float64, requires_grad=grad)


def sp(z: float) -> float:
    """log(1 + e^z), written out so the expected values read as the hand derivation."""
    return math.log(1 + math.exp(z))


# ---------------------------------------------------------------- relative redirection


def test_relative_redirection_hand_values():
    x, own, target = rows([1.0, 0.0]), rows([1.0, 0.0]), rows([0.0, 1.0])
    # cos(x, own) = 1, cos(x, target) = 0 -> sp(1) = log(1 + e) ~= 1.3132617
    assert relative_redirection(x, own, target).item() == pytest.approx(math.log(1 + math.e), abs=TOL)
    assert relative_redirection(x, own, target).item() == pytest.approx(1.3132616875, abs=1e-9)
    # scale 2: sp(2 * (1 - 0)) = log(1 + e^2) ~= 2.1269280
    assert relative_redirection(x, own, target, scale=2.0).item() == pytest.approx(math.log(1 + math.e ** 2), abs=TOL)
    # magnitudes do not matter (cosines): x = 3 e1, own = 0.5 e1, target = 4 e2 -> the same sp(1)
    assert relative_redirection(rows([3.0, 0.0]), rows([0.5, 0.0]), rows([0.0, 4.0])).item() == pytest.approx(
        sp(1.0), abs=TOL)
    # a batch is the mean of its rows: row 2 sits on its target: cos 0 - cos 1 = -1 -> sp(-1)
    xb, ownb, tb = rows([1.0, 0.0], [0.0, 1.0]), rows([1.0, 0.0], [1.0, 0.0]), rows([0.0, 1.0], [0.0, 1.0])
    assert relative_redirection(xb, ownb, tb).item() == pytest.approx((sp(1.0) + sp(-1.0)) / 2, abs=TOL)
    # at 60 degrees: x = u(0), own = u(60), target = u(-90) -> sp(0.5 - 0) ~= 0.9740770
    assert relative_redirection(rows(u(0)), rows(u(60)), rows(u(-90))).item() == pytest.approx(sp(0.5), abs=TOL)
    # the order of own / target matters: swapped -> sp(-1)
    assert relative_redirection(x, target, own).item() == pytest.approx(sp(-1.0), abs=TOL)


def test_relative_redirection_gradient_reaches_only_x():
    x, own, target = rows([1.0, 0.0], grad=True), rows([1.0, 0.0], grad=True), rows([0.0, 1.0], grad=True)
    relative_redirection(x, own, target).backward()
    assert own.grad is None and target.grad is None
    # d cos(x, y)/dx = y/(|x||y|) - (x.y) x/(|x|^3 |y|): at x = e1 it is 0 for y = e1 and e2 for y = e2, so
    # dL/dx = sigmoid(1) * (0 - e2) = [0, -e/(1+e)] = [0, -0.7310586]
    torch.testing.assert_close(x.grad, rows([0.0, -math.e / (1 + math.e)]), rtol=0, atol=1e-12)
    x2 = rows([1.0, 0.0], grad=True)
    relative_redirection(x2, own, target, scale=2.0).backward()
    # scale 2: sigmoid(2) * 2 * (0 - e2) = [0, -2 e^2/(1+e^2)] = [0, -1.7615942]
    torch.testing.assert_close(x2.grad, rows([0.0, -2 * math.e ** 2 / (1 + math.e ** 2)]), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- the eight-term objective

# Safe side, two rows so that the InfoNCE terms have a negative:
#   T(t) = [u(0, 2), u(90)], T0(t) = [u(60), u(150)], V(v) = [u(0), u(90, 3)], V0(v) = [u(0), u(90)]
#   cos_text_safe  = 1 - cos 60 = 0.5 (both rows)              (against V0(v) it would be 0)
#   cos_image_safe = 1 - cos 0 = 0                              (against T0(t) it would be 0.5)
#   nce_text_safe  = InfoNCE(T(t), V0(v)): logits I -> each row/column sp(0 - 1) = sp(-1) ~= 0.3132617
#   nce_image_safe = InfoNCE(V(v), T0(t)): logits [[cos -60, cos -150], [cos 30, cos -60]]
#                  = [[.5, -sqrt3/2], [sqrt3/2, .5]]; rows: sp(-sqrt3/2 - .5), sp(sqrt3/2 - .5); columns the same two
#                  -> (sp(-(sqrt3+1)/2) + sp((sqrt3-1)/2)) / 2 ~= 0.5600222
# Unsafe side, the same direction in both rows (lengths differ):
#   T(t*) = u(0, 2|1), V(v*) = u(90), T0(t*) = u(180), V0(v*) = u(0), T0(t^) = u(30), V0(v^) = u(135)
#   rel_text  = sp(cos(T(t*), V0(v*)) - cos(T(t*), V0(v^))) = sp(cos 0 - cos 135) = sp(1 + sqrt2/2) ~= 1.8737984
#               (with the text references T0(t*), T0(t^): sp(cos 180 - cos 30) = sp(-1 - sqrt3/2))
#   rel_image = sp(cos(V(v*), T0(t*)) - cos(V(v*), T0(t^))) = sp(cos 90 - cos 60) = sp(-0.5) ~= 0.4740770
#               (with the image references V0(v*), V0(v^): sp(cos 90 - cos 45) = sp(-sqrt2/2))
#   uni_text  = 1 - cos(T(t*), T0(t^)) = 1 - cos 30 = 1 - sqrt3/2  (to T0(t*): 2; to V0(v^): 1 + sqrt2/2)
#   uni_image = 1 - cos(V(v*), V0(v^)) = 1 - cos 45 = 1 - sqrt2/2  (to T0(t^): 1 - cos 60 = 0.5)
NCE_IMAGE = (sp(-(R3 + 1) / 2) + sp((R3 - 1) / 2)) / 2
HAND_TERMS = {
    "rel_text": sp(1 + R2 / 2),
    "rel_image": sp(-0.5),
    "uni_text": 1 - R3 / 2,
    "uni_image": 1 - R2 / 2,
    "cos_text_safe": 0.5,
    "cos_image_safe": 0.0,
    "nce_text_safe": sp(-1.0),
    "nce_image_safe": NCE_IMAGE,
}


def _inputs(grad: bool = False) -> dict[str, torch.Tensor]:
    return {
        "text_safe": rows(u(0, 2.0), u(90), grad=grad),
        "text_unsafe": rows(u(0, 2.0), u(0), grad=grad),
        "image_safe": rows(u(0), u(90, 3.0), grad=grad),
        "image_unsafe": rows(u(90), u(90, 0.5), grad=grad),
        "ref_text_safe": rows(u(60), u(150), grad=grad),
        "ref_image_safe": rows(u(0), u(90), grad=grad),
        "ref_text_unsafe": rows(u(180), u(180), grad=grad),
        "ref_image_unsafe": rows(u(0), u(0, 2.0), grad=grad),
        "ref_text_target": rows(u(30), u(30), grad=grad),
        "ref_image_target": rows(u(135), u(135), grad=grad),
    }


def test_term_names():
    assert TERMS == ("rel_text", "rel_image", "uni_text", "uni_image", "cos_text_safe", "cos_image_safe",
                     "nce_text_safe", "nce_image_safe")
    assert tuple(SaferClipWeights().model_dump().values()) == (0.25, 0.5, 0.1, 0.2, 0.1, 0.1, 0.35, 0.35)


def test_hand_values_are_what_they_say():
    # the literals behind the derivation above, so a slip in the derivation shows here
    assert HAND_TERMS["rel_text"] == pytest.approx(1.8737984, abs=1e-6)
    assert HAND_TERMS["rel_image"] == pytest.approx(0.474077, abs=1e-6)
    assert HAND_TERMS["nce_text_safe"] == pytest.approx(0.3132617, abs=1e-7)
    assert HAND_TERMS["nce_image_safe"] == pytest.approx(0.5600222, abs=1e-6)


def test_each_term_by_hand():
    _, terms = safer_clip_loss(**_inputs(), logit_scale=1.0)
    assert tuple(terms) == TERMS
    for k, want in HAND_TERMS.items():
        assert terms[k].item() == pytest.approx(want, abs=TOL), k


def _hand_total(nce: float) -> float:
    """sum_k w_k * term_k / sum(w) / 8 for the weights (0.25, 0.5, 0.1, 0.2, 0.1, 0.1, nce, nce), from the hand
    values (cos_text_safe is 0.5 and cos_image_safe 0 by construction of the inputs)."""
    h = HAND_TERMS
    weighted = (0.25 * h["rel_text"] + 0.5 * h["rel_image"] + 0.1 * h["uni_text"] + 0.2 * h["uni_image"]
                + 0.1 * 0.5 + 0.1 * 0.0 + nce * h["nce_text_safe"] + nce * h["nce_image_safe"])
    return weighted / (1.25 + 2 * nce) / 8


def test_total_with_the_carried_over_weights():
    # the paper profile's weights (Safe-CLIP's for the terms they replace): sum 1.75
    carried = SaferClipWeights(nce_text_safe=0.25, nce_image_safe=0.25)
    total, _ = safer_clip_loss(**_inputs(), logit_scale=1.0, weights=carried)
    assert total.item() == pytest.approx(_hand_total(0.25), abs=TOL)
    # ~= (0.468450 + 0.237038 + 0.013397 + 0.058579 + 0.05 + 0 + 0.078315 + 0.140006) / 14 ~= 0.0746989
    assert total.item() == pytest.approx(0.0746989, abs=1e-6)


def test_total_with_the_world_default_weights():
    # nce 0.35 each: sum 1.95, the other terms' share shrinks with it
    total, _ = safer_clip_loss(**_inputs(), logit_scale=1.0)
    assert total.item() == pytest.approx(_hand_total(0.35), abs=TOL)


def test_total_with_a_single_weight():
    zero = dict.fromkeys(TERMS, 0.0)
    # only uni_image, weight 3: normalised to 1 -> total = uni_image / 8 = (1 - sqrt2/2) / 8 ~= 0.0366117
    total, _ = safer_clip_loss(**_inputs(), weights=SaferClipWeights(**(zero | {"uni_image": 3.0})), logit_scale=1.0)
    assert total.item() == pytest.approx((1 - R2 / 2) / 8, abs=TOL)
    total, _ = safer_clip_loss(**_inputs(), weights=SaferClipWeights(**(zero | {"rel_image": 0.5})), logit_scale=1.0)
    assert total.item() == pytest.approx(sp(-0.5) / 8, abs=TOL)
    # two weights 1 and 3: (1 * 0.5 + 3 * 0) / 4 / 8 = 0.015625
    total, _ = safer_clip_loss(**_inputs(), weights=SaferClipWeights(**(zero | {"cos_text_safe": 1.0,
                                                                                 "cos_image_safe": 3.0})),
                               logit_scale=1.0)
    assert total.item() == pytest.approx(0.5 / 4 / 8, abs=TOL)
    with pytest.raises(ValueError, match="positive sum"):
        safer_clip_loss(**_inputs(), weights=SaferClipWeights(**zero), logit_scale=1.0)


def test_relative_scale_and_logit_scale_reach_their_terms():
    _, terms = safer_clip_loss(**_inputs(), logit_scale=2.0, relative_scale=2.0)
    assert terms["rel_text"].item() == pytest.approx(sp(2 * (1 + R2 / 2)), abs=TOL)
    assert terms["rel_image"].item() == pytest.approx(sp(-1.0), abs=TOL)  # 2 * -0.5
    # InfoNCE with logits 2 * I: sp(-2) per row/column; the cosine terms ignore both scales
    assert terms["nce_text_safe"].item() == pytest.approx(sp(-2.0), abs=TOL)
    assert terms["uni_text"].item() == pytest.approx(1 - R3 / 2, abs=TOL)


def test_no_gradient_reaches_the_references():
    x = _inputs(grad=True)
    total, _ = safer_clip_loss(**x, logit_scale=1.0)
    total.backward()
    for name, t in x.items():
        if name.startswith("ref_"):
            assert t.grad is None, name
        else:
            assert t.grad is not None and bool(t.grad.abs().sum() > 0), name


# ---------------------------------------------------------------- nearest safe caption

# safe pool: 0 [3, 4], 1 [5, 0], 2 [0, 0.2], 3 [6, 8] (same direction as 0), 4 [1, 1]
SAFE = torch.tensor([[3.0, 4.0], [5.0, 0.0], [0.0, 0.2], [6.0, 8.0], [1.0, 1.0]])
# queries, with the cosines to the pool and what Euclid / dot product would pick instead:
#   [1, 0]:    cos [.6, 1, 0, .6, .707]      -> 1, sim 1     (Euclid: 4 at distance 1; dot: 3 with 6)
#   [0, 3]:    cos [.8, 0, 1, .8, .707]      -> 2, sim 1     (Euclid: 4 at sqrt5;        dot: 3 with 24)
#   [0.3, .4]: cos [1, .6, .8, 1, .99]       -> tie 0 / 3 -> 0, sim 1 (Euclid: 2; dot: 3; last maximum: 3)
#   [1, 2]:    cos [11/(5 sqrt5) = .98387, 1/sqrt5, 2/sqrt5, .98387, 3/sqrt10 = .94868] -> tie 0 / 3 -> 0
#              (Euclid: 4 at distance 1; dot: 3 with 22)
UNSAFE = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.3, 0.4], [1.0, 2.0]])


def test_nearest_safe_is_by_cosine_with_lowest_index_on_ties():
    idx, sim = nearest_safe(UNSAFE, SAFE)
    assert idx.dtype == np.int64 and sim.dtype == np.float32
    assert idx.tolist() == [1, 2, 0, 0]
    np.testing.assert_allclose(sim, [1.0, 1.0, 1.0, 11 / (5 * math.sqrt(5))], rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 4, 100])
def test_nearest_safe_chunking_changes_nothing(chunk):
    idx, sim = nearest_safe(UNSAFE, SAFE, chunk=chunk)
    assert idx.tolist() == [1, 2, 0, 0]
    np.testing.assert_allclose(sim, [1.0, 1.0, 1.0, 11 / (5 * math.sqrt(5))], rtol=0, atol=1e-6)


def test_nearest_safe_edges():
    with pytest.raises(ValueError, match="at least one safe caption"):
        nearest_safe(UNSAFE, torch.zeros(0, 2))
    idx, sim = nearest_safe(torch.zeros(0, 2), SAFE)
    assert idx.shape == (0,) and sim.shape == (0,)


# ---------------------------------------------------------------- redirection targets

VEC = {
    "dog": [1.0, 0.0, 0.0], "cat": [0.0, 1.0, 0.0], "car": [0.0, 0.0, 1.0],
    "u_a": [0.0, 2.0, 1.0],   # cos dog 0, cat 2/sqrt5, car 1/sqrt5          -> cat (row b); partner dog: 0
    "u_b": [3.0, 0.0, 4.0],   # cos dog .6, cat 0, car .8                    -> car (row d); partner cat: 0
    "u_c": [4.0, 0.0, 3.0],   # cos dog .8 (rows a and c), car .6            -> dog, first row a; partner dog: .8
    "u_d": [1.0, 1.0, 1.0],   # cos 1/sqrt3 to all four                     -> tie, row a; partner car: 1/sqrt3
}


def test_redirection_targets_by_hand():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return torch.tensor([VEC[t] for t in texts])

    ids = ["a", "b", "c", "d"]
    safe_text = ["dog", "cat", "dog", "car"]
    out = redirection_targets(ids, safe_text, ["u_a", "u_b", "u_c", "u_d"], encode)
    # each distinct caption embedded once: a repeated caption must not get a second, slightly different vector
    assert calls == [["dog", "cat", "car"], ["u_a", "u_b", "u_c", "u_d"]]
    assert [r["id"] for r in out] == ids
    assert [r["target_id"] for r in out] == ["b", "d", "a", "a"]
    np.testing.assert_allclose([r["target_similarity"] for r in out], [2 / math.sqrt(5), 0.8, 0.8, 1 / R3],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose([r["partner_similarity"] for r in out], [0.0, 0.0, 0.8, 1 / R3], rtol=0, atol=1e-6)
    # c's target is row a, not c itself, but a's caption is c's own caption "dog": that counts as its partner.
    # d's target similarity equals its partner similarity, yet the target caption ("dog") is not d's ("car").
    assert [r["target_is_partner"] for r in out] == [False, False, True, False]
    assert all(isinstance(r["target_similarity"], float) and isinstance(r["target_is_partner"], bool) for r in out)


# ---------------------------------------------------------------- attach_targets


def _q():
    return SimpleNamespace(ids=["a", "b", "c"], where="data/visu/train.parquet", targets=None)


def test_attach_targets_sets_row_indices():
    q = _q()
    rows_ = [{"id": "b", "target_id": "c", "target_similarity": 0.5},
             {"id": "a", "target_id": "a", "target_similarity": 0.9},
             {"id": "c", "target_id": "b", "target_similarity": 0.25}]
    sim = attach_targets(q, rows_, "data/safer_clip/train.parquet")
    # in the order of q.ids: a -> a (row 0), b -> c (row 2), c -> b (row 1)
    assert q.targets.dtype == np.int64 and q.targets.tolist() == [0, 2, 1]
    assert sim.dtype == np.float32 and sim.tolist() == [0.8999999761581421, 0.5, 0.25]  # float32(0.9)
    np.testing.assert_allclose(sim, [0.9, 0.5, 0.25], rtol=1e-6)


def test_attach_targets_unknown_target_names_file_row_and_field():
    q = _q()
    rows_ = [{"id": "a", "target_id": "a", "target_similarity": 0.9},
             {"id": "b", "target_id": "zz", "target_similarity": 0.5},
             {"id": "c", "target_id": "b", "target_similarity": 0.25}]
    with pytest.raises(InputError) as err:
        attach_targets(q, rows_, "data/safer_clip/train.parquet")
    msg = str(err.value)
    for part in ("data/safer_clip/train.parquet", "row 1", "'target_id'", "'zz'", "data/visu/train.parquet"):
        assert part in msg, (part, msg)
    assert q.targets is None


def test_attach_targets_missing_quadruple_names_its_id():
    q = _q()
    rows_ = [{"id": "a", "target_id": "c", "target_similarity": 0.9},
             {"id": "c", "target_id": "a", "target_similarity": 0.25}]
    with pytest.raises(InputError) as err:
        attach_targets(q, rows_, "data/safer_clip/val.parquet")
    msg = str(err.value)
    for part in ("data/safer_clip/val.parquet", "'b'", "1 quadruple", "'id'"):
        assert part in msg, (part, msg)
    assert q.targets is None


# ---------------------------------------------------------------- curriculum


def test_easy_first_order_descending_and_stable():
    # similarities 0.2, 0.9, 0.5, 0.9, 0.1 -> 0.9 (index 1, then 3: stable), 0.5 (2), 0.2 (0), 0.1 (4)
    assert easy_first_order(np.array([0.2, 0.9, 0.5, 0.9, 0.1])).tolist() == [1, 3, 2, 0, 4]
    assert easy_first_order([0.3, 0.3, 0.3]).tolist() == [0, 1, 2]
    assert easy_first_order(np.array([-1.0, 0.0, -0.5], dtype=np.float32)).tolist() == [1, 2, 0]


EASY = np.array([5, 11, 0, 7, 3, 9, 1, 10, 2, 8, 4, 6])  # 12 items, easiest first


def _plan(fractions=(0.33, 0.67), batch=2, seed=0) -> CurriculumPlan:
    return CurriculumPlan(easy_first=EASY, fractions=list(fractions), batch_size=batch, seed=seed)


def test_curriculum_sizes_and_steps():
    plan = _plan()
    # round(0.33 * 12 = 3.96) = 4, round(0.67 * 12 = 8.04) = 8, then all 12; one epoch each: 4/2, 8/2 steps
    assert plan.phase_sizes == [4, 8, 12]
    assert plan.phase_steps == [2, 4]
    assert plan.steps_for(1) == 2
    assert plan.steps_for(2) == 2 + 4
    assert plan.steps_for(3) == 2 + 4 + 12 // 2
    assert plan.steps_for(5) == 2 + 4 + 3 * 6
    assert plan.steps_for(0) == 0
    assert [plan.phase(s) for s in (0, 1, 2, 5, 6, 20)] == [(0, 0), (0, 1), (1, 0), (1, 3), (2, 0), (2, 14)]


def test_curriculum_batches_draw_from_the_easy_pools():
    plan = _plan()
    batches = [plan(s) for s in range(18)]
    assert all(len(b) == 2 for b in batches)
    # phase 1 (steps 0-1): one epoch over the 4 easiest, each exactly once
    phase1 = np.concatenate(batches[0:2])
    assert sorted(phase1.tolist()) == sorted([5, 11, 0, 7])
    # phase 2 (steps 2-5): one epoch over the 8 easiest, each exactly once
    phase2 = np.concatenate(batches[2:6])
    assert sorted(phase2.tolist()) == sorted([5, 11, 0, 7, 3, 9, 1, 10])
    # then every item: steps 6-11 are one epoch over all 12, steps 12-17 the next one
    assert sorted(np.concatenate(batches[6:12]).tolist()) == list(range(12))
    assert sorted(np.concatenate(batches[12:18]).tolist()) == list(range(12))
    assert not np.array_equal(np.concatenate(batches[6:12]), np.concatenate(batches[12:18]))  # reshuffled


def test_curriculum_is_a_pure_function_of_the_step():
    plan = _plan()
    forward = [plan(s).tolist() for s in range(20)]
    again = [plan(s).tolist() for s in range(20)]
    backward = [_plan()(s).tolist() for s in reversed(range(20))][::-1]
    assert forward == again == backward
    assert [plan(s).tolist() for s in (7, 3, 7)] == [forward[7], forward[3], forward[7]]
    other = [_plan(seed=1)(s).tolist() for s in range(20)]
    assert other != forward  # the seed matters


def test_curriculum_without_fractions_uses_everything_from_the_start():
    plan = _plan(fractions=())
    assert plan.phase_sizes == [12] and plan.phase_steps == []
    assert plan.steps_for(1) == 6 and plan.steps_for(3) == 18
    assert sorted(np.concatenate([plan(s) for s in range(6)]).tolist()) == list(range(12))


def test_curriculum_small_pool_is_raised_to_one_batch():
    # round(0.05 * 12 = 0.6) = 1 item < batch 4 -> 4 items (the 4 easiest), one step
    plan = _plan(fractions=(0.05,), batch=4)
    assert plan.phase_sizes == [4, 12]
    assert plan.phase_steps == [1]
    assert plan.steps_for(2) == 1 + 3
    assert sorted(plan(0).tolist()) == sorted([5, 11, 0, 7])


def test_attach_targets_refuses_rows_of_other_data_and_duplicates():
    rows_ = [{"id": i, "target_id": "a", "target_similarity": 0.5} for i in ("a", "b", "c")]
    with pytest.raises(InputError, match=r"t.parquet: row 3: field 'id' 'zzz' is not a quadruple of"):
        attach_targets(_q(), rows_ + [{"id": "zzz", "target_id": "a", "target_similarity": 0.1}], "t.parquet")
    with pytest.raises(InputError, match=r"t.parquet: row 3: field 'id' 'a' appears twice"):
        attach_targets(_q(), rows_ + [{"id": "a", "target_id": "b", "target_similarity": 0.1}], "t.parquet")
