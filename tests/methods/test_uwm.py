"""UWM (Unsafe Weights Manipulation) scoring, selection and manipulation against values worked out by hand.

Notation for the hand derivations below. For one sample and input feature k: a_k = L2 norm over the tokens,
s_k = unbiased std over the tokens, m_k = mean_j |W_jk|; in_k = a_k * m_k; out_j = mean_k a_k |W_jk|;
psi[j, k] = out_j * in_k / s_k. The per-pair ratio psi_u / psi_s is (out_u_j / out_s_j) * (in_u_k/s_u_k) /
(in_s_k/s_s_k): the m_k cancel, so only the out ratio per row and the (a/s) ratio per column matter.

Four-token columns used below (unbiased std, divide by 3):
  (0, 0, 0, 2):  a = 2, mean 0.5, devs -.5,-.5,-.5,1.5 -> s^2 = (3 * .25 + 2.25) / 3 = 1    -> s = 1
  (1, 1, 1, -1): a = 2, mean 0.5, devs .5,.5,.5,-1.5   -> s^2 = 1                          -> s = 1
  (4, 4, 4, 1):  a = 7 (48 + 1 = 49), mean 3.25, devs .75 x3, -2.25 -> s^2 = (1.6875 + 5.0625) / 3 = 2.25
                 -> s = 1.5
  (4, 4, 4, -1): a = 7, mean 2.75, devs 1.25 x3, -3.75 -> s^2 = (4.6875 + 14.0625) / 3 = 6.25 -> s = 2.5
  (0, 1, 0, 0):  a = 1, mean .25, devs -.25 x3, .75     -> s^2 = (.1875 + .5625) / 3 = .25    -> s = 0.5
  (2, 2, 2, -2): a = 4, mean 1, devs 1 x3, -3           -> s^2 = (3 + 9) / 3 = 4             -> s = 2
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from safeclip.methods.uwm import (
    apply_uwm,
    calibrate_tower,
    calibration_indices,
    captured_inputs,
    manipulate,
    target_layers,
    top_mass_mask,
    uwm_layer_scores,
)

RTOL = 1e-7  # the eps = 1e-8 added to sigma moves the ratios by ~1e-8 relative
R3 = math.sqrt(3)

# |W| = [[1, 2, 2], [3, 0, 1]]; m = mean_j |W_jk| = [2, 1, 1.5]
W = torch.tensor([[1.0, -2.0, 2.0], [3.0, 0.0, -1.0]], dtype=torch.float64)
ABS_W = [[1.0, 2.0, 2.0], [3.0, 0.0, 1.0]]

# safe sample, columns (0,0,0,2), (1,1,1,-1), (4,4,4,1): a_s = [2, 2, 7], s_s = [1, 1, 1.5]
X_SAFE = torch.tensor([[0.0, 1.0, 4.0],
                       [0.0, 1.0, 4.0],
                       [0.0, 1.0, 4.0],
                       [2.0, -1.0, 1.0]], dtype=torch.float64)
# unsafe sample, columns (4,4,4,-1), (0,1,0,0), (2,2,2,-2): a_u = [7, 1, 4], s_u = [2.5, 0.5, 2]
X_UNSAFE = torch.tensor([[4.0, 0.0, 2.0],
                         [4.0, 1.0, 2.0],
                         [4.0, 0.0, 2.0],
                         [-1.0, 0.0, -2.0]], dtype=torch.float64)

# out_s = [(2*1 + 2*2 + 7*2)/3, (2*3 + 2*0 + 7*1)/3] = [20/3, 13/3]
# out_u = [(7*1 + 1*2 + 4*2)/3, (7*3 + 1*0 + 4*1)/3] = [17/3, 25/3]  -> out ratio [17/20, 25/13]
# in_s/s_s = [2*2/1, 2*1/1, 7*1.5/1.5] = [4, 2, 7];  in_u/s_u = [7*2/2.5, 1*1/.5, 4*1.5/2] = [5.6, 2, 3]
#   -> column ratio [5.6/4, 2/2, 3/7] = [1.4, 1, 3/7]
# score[j, k] = out ratio[j] * column ratio[k]
HAND = [[0.85 * 1.4, 0.85 * 1.0, 0.85 * 3 / 7],        # [1.19, 0.85, 51/140]
        [25 / 13 * 1.4, 25 / 13 * 1.0, 25 / 13 * 3 / 7]]  # [35/13, 25/13, 75/91]


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def close(actual: torch.Tensor, expected, rtol: float = RTOL) -> None:
    torch.testing.assert_close(actual, t64(expected), rtol=rtol, atol=1e-12)


# ---------------------------------------------------------------- scores


def test_layer_scores_one_pair_by_hand():
    scores = uwm_layer_scores(W, X_SAFE[None], X_UNSAFE[None])
    assert scores.shape == (2, 3) and scores.dtype == torch.float64
    close(scores, [[1.19, 0.85, 51 / 140], [35 / 13, 25 / 13, 75 / 91]])
    close(scores, HAND)


def test_layer_scores_magnitude_prior_multiplies_by_abs_weight():
    scores = uwm_layer_scores(W, X_SAFE[None], X_UNSAFE[None], magnitude_prior=True)
    # HAND * |W| = [[1.19*1, 0.85*2, 51/140*2], [35/13*3, 25/13*0, 75/91*1]]
    close(scores, [[1.19, 1.7, 51 / 70], [105 / 13, 0.0, 75 / 91]])


def test_layer_scores_two_pairs_mean_of_ratios_not_ratio_of_means():
    # pair 2 is pair 1 with the roles swapped, so its ratio is 1 / ratio_1 entrywise. The mean of the ratios is
    # (r + 1/r) / 2; a ratio of the means would be (psi_u1 + psi_s1) / (psi_s1 + psi_u1) = 1 everywhere, and a
    # sum without the division by the pair count r + 1/r.
    safe = torch.stack([X_SAFE, X_UNSAFE])
    unsafe = torch.stack([X_UNSAFE, X_SAFE])
    expected = [[(1.19 + 1 / 1.19) / 2, (0.85 + 1 / 0.85) / 2, (51 / 140 + 140 / 51) / 2],
                [(35 / 13 + 13 / 35) / 2, (25 / 13 + 13 / 25) / 2, (75 / 91 + 91 / 75) / 2]]
    # e.g. (1.19 + 0.840336...) / 2 = 1.015168...
    assert expected[0][0] == pytest.approx(1.0151680672, rel=1e-9)
    close(uwm_layer_scores(W, safe, unsafe), expected)
    # with the prior: x |W| = [[1, 2, 2], [3, 0, 1]]
    prior = uwm_layer_scores(W, safe, unsafe, magnitude_prior=True)
    close(prior, [[e * a for e, a in zip(er, ar, strict=True)] for er, ar in zip(expected, ABS_W, strict=True)])


def test_layer_scores_keep_the_weight_dtype():
    scores = uwm_layer_scores(W.float(), X_SAFE[None].float(), X_UNSAFE[None].float())
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, t64(HAND).float(), rtol=1e-6, atol=0)


def test_layer_scores_zero_rows_and_columns_score_zero():
    # A zero column k of W makes in_k = a_k * 0 = 0 on both sides: the safe factor is floored at eps and the
    # ratio is 0 / eps = 0 (finite). W = [[1, 0, 2], [3, 0, -1]]:
    #   out_s = [(2*1 + 0 + 7*2)/3, (2*3 + 0 + 7*1)/3] = [16/3, 13/3]; out_u = [(7 + 0 + 8)/3, (21 + 0 + 4)/3]
    #   -> out ratio [15/16, 25/13]; column ratio [1.4, 0, 3/7]
    zero_col = t64([[1.0, 0.0, 2.0], [3.0, 0.0, -1.0]])
    close(uwm_layer_scores(zero_col, X_SAFE[None], X_UNSAFE[None]),
          [[15 / 16 * 1.4, 0.0, 15 / 16 * 3 / 7], [25 / 13 * 1.4, 0.0, 25 / 13 * 3 / 7]])
    # A zero row j: out_j = 0 on both sides -> 0. W = [[0, 0, 0], [3, 2, -1]]: m = [1.5, 1, .5] (cancels);
    #   out_s row 1 = (2*3 + 2*2 + 7*1)/3 = 17/3, out_u row 1 = (7*3 + 1*2 + 4*1)/3 = 27/3 -> 27/17
    zero_row = t64([[0.0, 0.0, 0.0], [3.0, 2.0, -1.0]])
    close(uwm_layer_scores(zero_row, X_SAFE[None], X_UNSAFE[None]),
          [[0.0, 0.0, 0.0], [27 / 17 * 1.4, 27 / 17, 27 / 17 * 3 / 7]])


# ---------------------------------------------------------------- token masks

GARBAGE = torch.tensor([[100.0, -50.0, 7.0]], dtype=torch.float64)


def test_padded_safe_token_is_ignored():
    # a 5th token of large values on both sides, masked out: the scores are those of the 4 real tokens
    safe = torch.cat([X_SAFE, GARBAGE])[None]
    unsafe = torch.cat([X_UNSAFE, -3 * GARBAGE])[None]
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    masked = uwm_layer_scores(W, safe, unsafe, token_mask_safe=mask, token_mask_unsafe=mask)
    close(masked, HAND)
    torch.testing.assert_close(masked, uwm_layer_scores(W, X_SAFE[None], X_UNSAFE[None]), rtol=1e-12, atol=0)
    # the padding does matter when it is not masked (so the mask is what removes it)
    unmasked = uwm_layer_scores(W, safe, unsafe)
    assert not torch.allclose(unmasked, t64(HAND), rtol=1e-3)


def test_masks_may_differ_between_safe_and_unsafe():
    # safe padded at the end, unsafe padded at the start (left padding): same 4 real tokens each
    safe = torch.cat([X_SAFE, GARBAGE])[None]
    unsafe = torch.cat([GARBAGE * 2, X_UNSAFE])[None]
    scores = uwm_layer_scores(W, safe, unsafe, token_mask_safe=torch.tensor([[1, 1, 1, 1, 0]]),
                              token_mask_unsafe=torch.tensor([[0, 1, 1, 1, 1]]))
    close(scores, HAND)


def test_different_token_counts_use_the_unbiased_std():
    # safe: the 4 tokens of X_SAFE, no mask. unsafe: 3 real tokens + 1 padded one, columns
    #   (0, 0, 3):  a = 3, mean 1,   devs -1,-1,2         -> s^2 = (1 + 1 + 4) / 2 = 3      -> s = sqrt 3
    #   (-1, 2, 2): a = 3, mean 1,   devs -2,1,1          -> s^2 = (4 + 1 + 1) / 2 = 3      -> s = sqrt 3
    #   (1, 2, 2):  a = 3, mean 5/3, devs -2/3,1/3,1/3    -> s^2 = (6/9) / 2 = 1/3           -> s = 1/sqrt 3
    # out_u = 3 * mean_k |W_jk| = [3 * 5/3, 3 * 4/3] = [5, 4]; out ratio = [5 / (20/3), 4 / (13/3)] = [3/4, 12/13]
    # in_u/s_u = [3*2/sqrt3, 3*1/sqrt3, 3*1.5*sqrt3] = [2 sqrt3, sqrt3, 4.5 sqrt3]; over in_s/s_s = [4, 2, 7]:
    #   column ratio = [sqrt3/2, sqrt3/2, 9 sqrt3/14]
    # A biased std (divide by the count) would scale the column ratio by sqrt(3/4) / sqrt(2/3) = 1.06.
    unsafe = torch.tensor([[0.0, -1.0, 1.0],
                           [0.0, 2.0, 2.0],
                           [3.0, 2.0, 2.0],
                           [50.0, -7.0, 9.0]], dtype=torch.float64)[None]
    scores = uwm_layer_scores(W, X_SAFE[None], unsafe, token_mask_unsafe=torch.tensor([[1, 1, 1, 0]]))
    close(scores, [[3 * R3 / 8, 3 * R3 / 8, 27 * R3 / 56],
                   [6 * R3 / 13, 6 * R3 / 13, 54 * R3 / 91]])


def test_fewer_than_two_tokens_is_an_error():
    with pytest.raises(ValueError, match="2 unmasked tokens"):
        uwm_layer_scores(W, X_SAFE[None], X_UNSAFE[None], token_mask_safe=torch.tensor([[0, 0, 1, 0]]))


# ---------------------------------------------------------------- shape errors


def test_mismatched_safe_and_unsafe_shapes():
    with pytest.raises(ValueError, match="same shape"):
        uwm_layer_scores(W, X_SAFE[None], X_UNSAFE[None, :3])
    with pytest.raises(ValueError, match="same shape"):
        uwm_layer_scores(W, torch.stack([X_SAFE, X_SAFE]), X_UNSAFE[None])


def test_feature_size_must_match_the_layer():
    x = torch.ones(1, 4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="2 features, the layer takes 3"):
        uwm_layer_scores(W, x, x)


# ---------------------------------------------------------------- top_mass_mask

# masses 0.5, 0.3, 0.15, 0.05 laid out [[0.15, 0.5], [0.05, 0.3]]; sorted ascending 0.05, 0.15, 0.3, 0.5 with
# cumulative sums 0.05, 0.2, 0.5, 1.0. Rule: take the weights whose cumulative sum is > 1 - tau.
MASS = t64([[0.15, 0.5], [0.05, 0.3]])


@pytest.mark.parametrize(("tau", "expected"), [
    (0.2, [[False, True], [False, False]]),   # > 0.8: only 1.0 -> {0.5}
    (0.5, [[False, True], [False, False]]),   # > 0.5: 0.5 is not > 0.5 -> {0.5}, which holds exactly tau
    (0.6, [[False, True], [False, True]]),    # > 0.4: 0.5, 1.0 -> {0.3, 0.5} (0.3 crosses the line: 0.8 >= 0.6)
    (0.8, [[False, True], [False, True]]),    # > 0.2: 0.2 is not > 0.2 -> {0.3, 0.5} = 0.8 exactly
    (0.81, [[True, True], [False, True]]),    # > 0.19: 0.2, 0.5, 1.0 -> {0.15, 0.3, 0.5}
    (1.0, [[True, True], [True, True]]),      # > 0: all
])
def test_top_mass_mask_by_hand(tau, expected):
    mask = top_mass_mask(MASS, tau)
    assert mask.dtype == torch.bool and mask.shape == (2, 2)
    assert mask.tolist() == expected
    # unnormalised scores (x 20: 3, 10, 1, 6) select the same weights
    assert top_mass_mask(t64([[3.0, 10.0], [1.0, 6.0]]), tau).tolist() == expected
    assert top_mass_mask(MASS.float() * 1e-3, tau).tolist() == expected


@pytest.mark.parametrize("tau", [0.02, 0.1, 0.37, 0.5, 0.9])
def test_top_mass_mask_is_the_smallest_top_set_holding_tau(tau):
    gen = torch.Generator().manual_seed(7)
    scores = torch.rand(16, 24, generator=gen, dtype=torch.float64) ** 3
    p = scores / scores.sum()
    mask = top_mass_mask(scores, tau)
    held = float(p[mask].sum())
    smallest = float(p[mask].min())
    assert held >= tau - 1e-12          # the 1e-12 is the rule's own float guard
    assert held - smallest < tau        # one weight fewer would not hold tau
    assert smallest >= float(p[~mask].max())  # they are the top weights
    assert 0 < int(mask.sum()) < scores.numel()


def test_top_mass_mask_errors():
    with pytest.raises(ValueError, match="sum to 0"):
        top_mass_mask(torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        top_mass_mask(t64([[1.0, -0.1]]), 0.5)
    with pytest.raises(ValueError, match="finite"):
        top_mass_mask(t64([[1.0, float("nan")]]), 0.5)
    with pytest.raises(ValueError, match="finite"):
        top_mass_mask(t64([[1.0, float("inf")]]), 0.5)
    for tau in (0.0, -0.1, 1.0001, 2.0, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            top_mass_mask(MASS, tau)


# ---------------------------------------------------------------- manipulation


def _linear(weight, bias) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight)).double()
    with torch.no_grad():
        layer.weight.copy_(t64(weight))
        layer.bias.copy_(t64(bias))
    return layer


def test_manipulate_negates_only_the_mask_and_keeps_the_bias():
    layer = _linear([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]], [0.5, -0.5])
    mask = torch.tensor([[True, False, False], [False, True, True]])
    assert manipulate(layer, mask, -1.0) == 3
    assert layer.weight.tolist() == [[-1.0, -2.0, 3.0], [4.0, -5.0, 6.0]]
    assert layer.bias.tolist() == [0.5, -0.5]
    assert manipulate(layer, torch.tensor([[False, True, False], [False, False, False]]), 0.0) == 1  # pruning
    assert layer.weight.tolist() == [[-1.0, 0.0, 3.0], [4.0, -5.0, 6.0]]


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = _linear([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [1.0, 1.0])
        self.b = _linear([[7.0, 8.0, 9.0], [10.0, 11.0, 12.0]], [2.0, 2.0])


def test_apply_uwm_touches_only_the_scored_layers():
    m = TwoLayers()
    b_before = m.b.weight.clone()
    # scores / 10 = [[.5, 0, .15], [.3, .05, 0]]; tau 0.6 -> cumulative 0, 0, .05, .2, .5, 1 -> > .4: {.3, .5}
    scores = t64([[5.0, 0.0, 1.5], [3.0, 0.5, 0.0]])
    record = apply_uwm({"text": ({"a": m.a}, {"a": scores})}, tau=0.6, alpha=-1.0)
    assert record == {"text.a": {"negated": 2, "weights": 6}}
    assert m.a.weight.tolist() == [[-1.0, 2.0, 3.0], [-4.0, 5.0, 6.0]]
    assert m.a.bias.tolist() == [1.0, 1.0]
    torch.testing.assert_close(m.b.weight, b_before, rtol=0, atol=0)
    assert m.b.bias.tolist() == [2.0, 2.0]


def test_apply_uwm_records_every_tower_and_layer():
    m = TwoLayers()
    ones = torch.ones(2, 3, dtype=torch.float64)
    # uniform scores: cumulative 1/6 .. 6/6; tau 0.5 -> > 0.5: 4/6, 5/6, 1 -> 3 weights; tau 1 -> all 6
    record = apply_uwm({"text": ({"a": m.a}, {"a": ones}), "vision": ({"b": m.b}, {"b": ones})}, tau=0.5, alpha=-1.0)
    assert record == {"text.a": {"negated": 3, "weights": 6}, "vision.b": {"negated": 3, "weights": 6}}
    assert int((m.a.weight < 0).sum()) == 3 and int((m.b.weight < 0).sum()) == 3


# ---------------------------------------------------------------- target_layers


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(2, 2)
        self.out_proj = nn.Linear(2, 2)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 2)
        self.my_out_proj = nn.Linear(2, 2)  # ends with "out_proj" but not ".out_proj"


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = Attn()
        self.mlp = Mlp()


class Tree(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Module()
        self.head.out_proj = nn.Identity()  # named out_proj but not a Linear


def test_target_layers_matches_dotted_suffixes_of_linears_only():
    tree = Tree()
    found = target_layers(tree, ["out_proj"])
    assert sorted(found) == ["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]
    assert found["layers.1.self_attn.out_proj"] is tree.layers[1].self_attn.out_proj
    both = target_layers(tree, ["out_proj", "fc2"])
    assert sorted(both) == ["layers.0.mlp.fc2", "layers.0.self_attn.out_proj",
                            "layers.1.mlp.fc2", "layers.1.self_attn.out_proj"]
    with pytest.raises(ValueError, match="no linear layer"):
        target_layers(tree, ["k_proj"])
    with pytest.raises(ValueError, match="no linear layer"):
        target_layers(tree, ["proj"])  # a suffix of a name component is not a match


# ---------------------------------------------------------------- calibration


class Tower(nn.Module):
    """pre (identity or a fixed linear) -> blk.out_proj; forward takes the keyword inputs a batch dict holds."""

    def __init__(self, pre: nn.Module):
        super().__init__()
        self.pre = pre
        self.blk = nn.Module()
        self.blk.out_proj = _linear(W.tolist(), [0.25, -0.25])

    def forward(self, x, attention_mask=None):
        return self.blk.out_proj(self.pre(x))


def test_calibrate_tower_scores_the_hooked_layer_input():
    tower = Tower(nn.Identity())
    layers = {"blk.out_proj": tower.blk.out_proj}
    scores = calibrate_tower(tower, layers, [({"x": X_SAFE[None]}, {"x": X_UNSAFE[None]})], 1e-8, False)
    assert list(scores) == ["blk.out_proj"]
    close(scores["blk.out_proj"], HAND)
    prior = calibrate_tower(tower, layers, [({"x": X_SAFE[None]}, {"x": X_UNSAFE[None]})], 1e-8, True)
    close(prior["blk.out_proj"], [[1.19, 1.7, 51 / 70], [105 / 13, 0.0, 75 / 91]])
    assert not tower.blk.out_proj._forward_pre_hooks
    assert tower.blk.out_proj.weight.tolist() == W.tolist()  # calibration changes nothing


def test_calibrate_tower_equals_direct_scores_on_the_captured_inputs():
    pre = _linear([[1.0, 0.5, 0.0], [0.0, 2.0, -1.0], [0.25, 0.0, 3.0]], [0.1, -0.2, 0.3])
    tower = Tower(pre)
    layers = {"blk.out_proj": tower.blk.out_proj}
    gen = torch.Generator().manual_seed(3)
    safe = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    unsafe = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    mask_s = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    mask_u = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    got = calibrate_tower(tower, layers, [({"x": safe, "attention_mask": mask_s},
                                           {"x": unsafe, "attention_mask": mask_u})], 1e-8, False)
    with torch.no_grad():
        direct = uwm_layer_scores(tower.blk.out_proj.weight, pre(safe), pre(unsafe), mask_s, mask_u)
    torch.testing.assert_close(got["blk.out_proj"], direct, rtol=1e-12, atol=0)
    # the hooked input is pre(x), not x: scoring x itself gives something else
    assert not torch.allclose(direct, uwm_layer_scores(tower.blk.out_proj.weight, safe, unsafe, mask_s, mask_u))


def test_calibrate_tower_uses_the_attention_mask():
    # the 3-real-token unsafe input of test_different_token_counts_use_the_unbiased_std, its padding masked
    tower = Tower(nn.Identity())
    unsafe = torch.tensor([[0.0, -1.0, 1.0], [0.0, 2.0, 2.0], [3.0, 2.0, 2.0], [50.0, -7.0, 9.0]],
                          dtype=torch.float64)[None]
    batch = ({"x": X_SAFE[None], "attention_mask": torch.ones(1, 4)},
             {"x": unsafe, "attention_mask": torch.tensor([[1, 1, 1, 0]])})
    scores = calibrate_tower(tower, {"o": tower.blk.out_proj}, [batch], 1e-8, False)["o"]
    close(scores, [[3 * R3 / 8, 3 * R3 / 8, 27 * R3 / 56], [6 * R3 / 13, 6 * R3 / 13, 54 * R3 / 91]])


def test_calibrate_tower_streams_the_mean_over_all_pairs():
    tower = Tower(nn.Identity())
    layers = {"blk.out_proj": tower.blk.out_proj}
    # two batches of one pair: (safe, unsafe) then the swap -> mean of r and 1/r, as in the two-pair test
    two = calibrate_tower(tower, layers, [({"x": X_SAFE[None]}, {"x": X_UNSAFE[None]}),
                                          ({"x": X_UNSAFE[None]}, {"x": X_SAFE[None]})], 1e-8, False)
    one = calibrate_tower(tower, layers, [({"x": torch.stack([X_SAFE, X_UNSAFE])},
                                           {"x": torch.stack([X_UNSAFE, X_SAFE])})], 1e-8, False)
    expected = [[(1.19 + 1 / 1.19) / 2, (0.85 + 1 / 0.85) / 2, (51 / 140 + 140 / 51) / 2],
                [(35 / 13 + 13 / 35) / 2, (25 / 13 + 13 / 25) / 2, (75 / 91 + 91 / 75) / 2]]
    close(two["blk.out_proj"], expected)
    torch.testing.assert_close(two["blk.out_proj"], one["blk.out_proj"], rtol=1e-12, atol=0)
    # uneven batches (1 pair, then 2) average over the 3 pairs, not over the 2 batches:
    # pairs r, 1/r, r -> (2r + 1/r) / 3; a mean of batch means would give (r + (1/r + r)/2) / 2
    uneven = calibrate_tower(tower, layers, [({"x": X_SAFE[None]}, {"x": X_UNSAFE[None]}),
                                             ({"x": torch.stack([X_UNSAFE, X_SAFE])},
                                              {"x": torch.stack([X_SAFE, X_UNSAFE])})], 1e-8, False)
    close(uneven["blk.out_proj"], [[(2 * r + 1 / r) / 3 for r in row] for row in HAND])
    assert uneven["blk.out_proj"][0, 0].item() == pytest.approx((2 * 1.19 + 1 / 1.19) / 3, rel=1e-7)


def test_captured_inputs_records_and_removes_its_hooks():
    tower = Tower(nn.Identity())
    layers = target_layers(tower, ["out_proj"])
    x = torch.arange(6, dtype=torch.float64).view(1, 2, 3)
    with captured_inputs(layers) as seen:
        assert len(tower.blk.out_proj._forward_pre_hooks) == 1
        tower(x)
        torch.testing.assert_close(seen["blk.out_proj"], x, rtol=0, atol=0)
        tower(2 * x)  # the latest pass wins
        torch.testing.assert_close(seen["blk.out_proj"], 2 * x, rtol=0, atol=0)
    assert not tower.blk.out_proj._forward_pre_hooks
    assert all(not m._forward_pre_hooks for m in tower.modules())
    with pytest.raises(RuntimeError, match="boom"), captured_inputs(layers):
        raise RuntimeError("boom")
    assert not tower.blk.out_proj._forward_pre_hooks  # removed on an error too


# ---------------------------------------------------------------- calibration subset


def test_calibration_indices():
    idx = calibration_indices(10, 4, seed=0)
    assert len(idx) == 4 and len(set(idx.tolist())) == 4
    assert all(0 <= i < 10 for i in idx.tolist())
    np.testing.assert_array_equal(idx, calibration_indices(10, 4, seed=0))
    assert not np.array_equal(calibration_indices(100, 10, seed=0), calibration_indices(100, 10, seed=1))
    everything = calibration_indices(5, 8, seed=3)
    assert sorted(everything.tolist()) == [0, 1, 2, 3, 4]
    assert sorted(calibration_indices(5, 5, seed=3).tolist()) == [0, 1, 2, 3, 4]
