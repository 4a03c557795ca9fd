"""SafeGround against indicator values worked out by hand on 2-D quadruples.

u(a) is the 2-D vector at `a` degrees, so f(x, y) = cos(angle difference). Indicators per quadruple:
P_t_s = f(vs,ts) > f(vu,ts), P_t_u = f(vs,tu) > f(vu,tu), P_v_s = f(vs,ts) > f(vs,tu), P_v_u = f(vu,ts) > f(vu,tu).
"""

import math

import pytest
import torch

from safeclip.eval.safeground import safeground

KEYS = ("P_t_s", "P_t_u", "P_v_s", "P_v_u", "txt_s", "img_s", "PS", "PU", "GS")


def u(deg: float, r: float = 1.0) -> list[float]:
    return [r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))]


def quads(*angles: tuple[float, float, float, float], scales=None) -> list[torch.Tensor]:
    """(ts, tu, vs, vu) angles per quadruple -> the four [N, 2] tensors, optionally with per-vector magnitudes."""
    scales = scales or [(1.0, 1.0, 1.0, 1.0)] * len(angles)
    return [torch.tensor([u(a[j], s[j]) for a, s in zip(angles, scales, strict=True)]) for j in range(4)]


# (ts, tu, vs, vu) in degrees, with the four cosines each indicator compares:
Q1 = (10, 30, 0, -30)  # P_t_s cos10 > cos40 1 | P_t_u cos30 > cos60 1 | P_v_s cos10 > cos30 1 | P_v_u cos40 > cos60 1
Q2 = (10, 90, 0, 100)  # P_t_s cos10 > cos90 1 | P_t_u cos90 > cos10 0 | P_v_s cos10 > cos90 1 | P_v_u cos90 > cos10 0
Q3 = (100, 10, 0, 90)  # P_t_s cos100 > cos10 0 | P_t_u cos10 > cos80 1 | P_v_s cos100 > cos10 0 | P_v_u cos10 > cos80 1
Q4 = (0, 90, 0, 40)    # P_t_s cos0 > cos40 1 | P_t_u cos90 > cos50 0 | P_v_s cos0 > cos90 1 | P_v_u cos40 > cos50 1
Q5 = (0, 40, -60, 10)  # P_t_s cos60 > cos10 0 | P_t_u cos100 > cos30 0 | P_v_s cos60 > cos100 1 | P_v_u cos10 > cos30 1
#        P_t_s P_t_u P_v_s P_v_u | txt_s=Pvs*Pvu img_s=Pts*Ptu PS=Pts*Pvs PU=Ptu*Pvu GS=all
# Q1      1     1     1     1    |   1     1     1     1     1
# Q2      1     0     1     0    |   0     0     1     0     0
# Q3      0     1     0     1    |   0     0     0     1     0
# Q4      1     0     1     1    |   1     0     1     0     0
# Q5      0     0     1     1    |   1     0     0     0     0
# sums    3     2     4     4    |   3     1     3     2     1   -> / 5
FIVE = {"P_t_s": 0.6, "P_t_u": 0.4, "P_v_s": 0.8, "P_v_u": 0.8, "txt_s": 0.6, "img_s": 0.2, "PS": 0.6, "PU": 0.4,
        "GS": 0.2}
PER_ITEM = {
    Q1: (1, 1, 1, 1, 1, 1, 1, 1, 1),
    Q2: (1, 0, 1, 0, 0, 0, 1, 0, 0),
    Q3: (0, 1, 0, 1, 0, 0, 0, 1, 0),
    Q4: (1, 0, 1, 1, 1, 0, 1, 0, 0),
    Q5: (0, 0, 1, 1, 1, 0, 0, 0, 0),
}


def approx(d: dict) -> object:
    return pytest.approx(d, abs=1e-6)


@pytest.mark.parametrize("q", list(PER_ITEM), ids=["Q1", "Q2", "Q3", "Q4", "Q5"])
def test_each_hand_quadruple(q):
    assert safeground(*quads(q)) == approx(dict(zip(KEYS, PER_ITEM[q], strict=True)))


def test_five_quadruples_every_key():
    got = safeground(*quads(Q1, Q2, Q3, Q4, Q5))
    assert set(got) == set(KEYS)
    assert got == approx(FIVE)


def test_four_quadruples_every_key():
    # Q1..Q4 only: P_t_s 3/4, P_t_u 2/4, P_v_s 3/4, P_v_u 3/4, txt_s 2/4, img_s 1/4, PS 3/4, PU 2/4, GS 1/4
    got = safeground(*quads(Q1, Q2, Q3, Q4))
    assert got == approx({"P_t_s": 0.75, "P_t_u": 0.5, "P_v_s": 0.75, "P_v_u": 0.75, "txt_s": 0.5, "img_s": 0.25,
                          "PS": 0.75, "PU": 0.5, "GS": 0.25})


def test_scale_invariance():
    # the same five quadruples with arbitrary positive magnitudes per vector
    scales = [(3.0, 0.2, 7.5, 1.0), (0.01, 4.0, 1.0, 9.0), (2.0, 2.0, 0.5, 0.25), (100.0, 1.0, 0.3, 6.0),
              (0.7, 11.0, 2.5, 0.05)]
    assert safeground(*quads(Q1, Q2, Q3, Q4, Q5, scales=scales)) == approx(FIVE)
    # random data with power-of-two rescaling (exact, so no rounding can move a comparison)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 5, generator=g) for _ in range(4)]
    factors = [2.0 ** torch.randint(-6, 7, (64, 1), generator=g).float() for _ in range(4)]
    assert safeground(*[x * f for x, f in zip(xs, factors, strict=True)]) == safeground(*xs)
    # float64 inputs give the same answer as float32
    assert safeground(*[x.double() for x in quads(Q1, Q2, Q3, Q4, Q5)]) == approx(FIVE)


def test_ties_are_not_preferences():
    # T1: ts = u(0), tu = u(90), vs = u(30), vu = u(-30): vs and vu mirror each other about ts, so
    #     f(vs,ts) = f(vu,ts) = cos30 exactly (x * 1 + y * 0 with the same x) -> P_t_s = 0 (tie);
    #     P_t_u: f(vs,tu) = sin30 = .5 > f(vu,tu) = -.5 -> 1; P_v_s: cos30 > .5 -> 1; P_v_u: cos30 > -.5 -> 1
    #     -> [0, 1, 1, 1]: txt_s 1, img_s 0, PS 0, PU 1, GS 0
    # T2: ts = u(30), tu = u(-30), vs = u(0), vu = u(90): f(vs,ts) = f(vs,tu) = cos30 -> P_v_s = 0 (tie);
    #     P_t_s: cos30 > cos60 -> 1; P_t_u: cos30 > cos120 -> 1; P_v_u: cos60 > cos120 -> 1
    #     -> [1, 1, 0, 1]: txt_s 0, img_s 1, PS 0, PU 1, GS 0
    t1, t2 = (0, 90, 30, -30), (30, -30, 0, 90)
    assert safeground(*quads(t1)) == approx(dict(zip(KEYS, (0, 1, 1, 1, 1, 0, 0, 1, 0), strict=True)))
    assert safeground(*quads(t2)) == approx(dict(zip(KEYS, (1, 1, 0, 1, 0, 1, 0, 1, 0), strict=True)))
    # both together: means of the two rows
    assert safeground(*quads(t1, t2)) == approx({"P_t_s": 0.5, "P_t_u": 1.0, "P_v_s": 0.5, "P_v_u": 1.0,
                                                 "txt_s": 0.5, "img_s": 0.5, "PS": 0.0, "PU": 1.0, "GS": 0.0})


def test_identical_twins_tie_everywhere():
    # vs == vu: both P_t_* compare a cosine with itself -> 0; ts == tu: both P_v_* -> 0
    ts, tu, vs, vu = quads((0, 70, 20, 20))
    got = safeground(ts, tu, vs, vu)
    assert got["P_t_s"] == 0.0 and got["P_t_u"] == 0.0
    assert got["P_v_s"] == 1.0 and got["P_v_u"] == 1.0  # cos20 > cos50 for both (identical) images
    ts, tu, vs, vu = quads((10, 10, 0, 90))
    got = safeground(ts, tu, vs, vu)
    assert got["P_v_s"] == 0.0 and got["P_v_u"] == 0.0
    assert got["P_t_s"] == 1.0 and got["P_t_u"] == 1.0  # cos10 > cos80 for both (identical) texts


def test_collapsed_model_scores_zero():
    # every embedding the same vector: every comparison is a tie -> all nine keys 0 (not 0.5)
    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, 16, generator=g)
    same = row.expand(8, 16).clone()
    assert safeground(same, same, same, same) == {k: 0.0 for k in KEYS}
    # per quadruple collapsed (different vectors across quadruples, the four of a quadruple equal): also all 0
    per = torch.randn(8, 16, generator=g)
    assert safeground(per, per.clone(), per.clone(), per.clone()) == {k: 0.0 for k in KEYS}
    # and with the twins at different magnitudes (power-of-two, so normalisation is exact)
    assert safeground(per, 4 * per, 0.5 * per, 2 * per) == {k: 0.0 for k in KEYS}


def test_products_agree_per_item():
    # one call per quadruple gives that item's 0/1 indicators; the batch means are the means of those, and
    # GS = mean(txt_s * img_s) = mean(PS * PU) = mean(all four)
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(200, 3, generator=g) for _ in range(4)]
    # pull the safe image towards the safe text half the time, so all indicators vary
    xs[2][:100] += 2 * xs[0][:100]
    batch = safeground(*xs)
    items = [safeground(*[x[i:i + 1] for x in xs]) for i in range(200)]
    for it in items:
        assert set(it.values()) <= {0.0, 1.0}
        assert it["txt_s"] == it["P_v_s"] * it["P_v_u"]
        assert it["img_s"] == it["P_t_s"] * it["P_t_u"]
        assert it["PS"] == it["P_t_s"] * it["P_v_s"]
        assert it["PU"] == it["P_t_u"] * it["P_v_u"]
        assert it["GS"] == it["txt_s"] * it["img_s"] == it["PS"] * it["PU"]
    for k in KEYS:
        assert batch[k] == pytest.approx(sum(it[k] for it in items) / 200, abs=1e-6), k
        assert 0.0 <= batch[k] <= 1.0
    gs = batch["GS"]
    assert gs == pytest.approx(sum(it["txt_s"] * it["img_s"] for it in items) / 200, abs=1e-6)
    assert gs == pytest.approx(sum(it["PS"] * it["PU"] for it in items) / 200, abs=1e-6)
    assert 0 < gs < 1  # the data really mixes outcomes
    # products can never exceed their factors
    assert batch["GS"] <= min(batch["txt_s"], batch["img_s"], batch["PS"], batch["PU"])


def test_empty_batch_gives_zeros():
    empty = torch.empty(0, 4)
    assert safeground(empty, empty, empty, empty) == {k: 0.0 for k in KEYS}
