"""Safe-CLIP's eight-term objective against values worked out by hand on tiny 2-D examples.

Notation: u(a) is the unit 2-D vector at `a` degrees; L = log(1 + e^-1) ~= 0.3132617. With logit scale s and
unit rows, InfoNCE row i costs logsumexp_j(s*x_i.y_j) - s*x_i.y_i, i.e. log(1 + e^-gap) in a 2-item batch.
"""

import math

import pytest
import torch

from safeclip.methods.safe_clip import (
    LAMBDAS,
    TERMS,
    cosine_distance,
    normalised_weights,
    safe_clip_loss,
    symmetric_infonce,
)

L = math.log(1 + math.exp(-1))  # ~= 0.31326168751822286
SQRT3 = math.sqrt(3)
TOL = 1e-12


def u(deg: float, r: float = 1.0) -> list[float]:
    return [r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))]


def rows(*vectors: list[float]) -> torch.Tensor:
    return torch.tensor(vectors, dtype=torch.float64)


def sp(z: float) -> float:
    """log(1 + e^z), written out so the expected values below read as the hand derivation."""
    return math.log(1 + math.exp(z))


# ---------------------------------------------------------------- the building blocks


def test_term_names_and_paper_weights():
    assert TERMS == ("cos.text_safe", "cos.text_unsafe", "cos.image_safe", "cos.image_unsafe",
                     "nce.text_safe", "nce.text_unsafe", "nce.image_safe", "nce.image_unsafe")
    assert LAMBDAS == (0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5)


def test_cosine_distance_known_angles():
    # 1 - cos at 0, 60, 90, 180 degrees = 0, 0.5, 1, 2 -> mean 3.5 / 4 = 0.875; magnitudes must not matter.
    x = rows(u(0, 3.0), u(60, 0.5), u(90, 7.0), u(180, 2.0))
    target = rows(u(0), u(0, 4.0), u(0), u(0, 0.25))
    assert cosine_distance(x, target).item() == pytest.approx(0.875, abs=TOL)
    # one row at a time, the same four hand values
    for i, want in enumerate([0.0, 0.5, 1.0, 2.0]):
        assert cosine_distance(x[i:i + 1], target[i:i + 1]).item() == pytest.approx(want, abs=TOL)


def test_infonce_orthonormal_pair_scale_one():
    # x = y = [e1, e2], s = 1: logits = I; each row and column costs log(e + 1) - 1 = log(1 + e^-1) = L.
    eye = rows([1.0, 0.0], [0.0, 1.0])
    assert symmetric_infonce(eye, eye, logit_scale=1.0).item() == pytest.approx(L, abs=TOL)
    # s = 2: gap 2 -> log(1 + e^-2) ~= 0.1269280
    assert symmetric_infonce(eye, eye, logit_scale=2.0).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=TOL)


def test_infonce_is_zero_on_a_single_pair():
    # one row: softmax over a single logit is 1 whatever the vectors or the scale -> CE = 0
    x, y = rows(u(10, 3.0)), rows(u(170))
    assert symmetric_infonce(x, y, logit_scale=100.0).item() == pytest.approx(0.0, abs=TOL)
    assert symmetric_infonce(x, y, logit_scale=1.0).item() == pytest.approx(0.0, abs=TOL)


def test_infonce_averages_both_directions():
    # x = [e1, e1], y = [e1, e2], s = 1: logits M = [[1, 0], [1, 0]].
    # rows (x -> y): row 0 label 0: log(e + 1) - 1 = L; row 1 label 1: log(e + 1) - 0 = 1 + L; mean L + 1/2.
    # cols (y -> x): col 0 [1, 1] label 0: log(2e) - 1 = log 2; col 1 [0, 0] label 1: log 2; mean log 2.
    # loss = (L + 1/2 + log 2) / 2 ~= 0.7532044 (one direction alone would be 0.8132617 or 0.6931472)
    x, y = rows([1.0, 0.0], [1.0, 0.0]), rows([1.0, 0.0], [0.0, 1.0])
    assert symmetric_infonce(x, y, logit_scale=1.0).item() == pytest.approx((L + 0.5 + math.log(2)) / 2, abs=TOL)


def test_infonce_default_scale_is_100():
    # x = y = [e1, (0.99, sqrt(1 - 0.99^2))]: cosines [[1, .99], [.99, 1]]; at scale 100 the gap is 100 - 99 = 1,
    # so every row/column costs log(1 + e^-1) = L. At scale 1 the gap would be 0.01: log(1 + e^-0.01) ~= 0.688.
    b = math.sqrt(1 - 0.99 ** 2)
    x = rows([1.0, 0.0], [0.99, b])
    terms = safe_clip_loss(x, x, x, x, x, x)[1]
    for name in TERMS[4:]:
        assert terms[name].item() == pytest.approx(L, abs=1e-9)


def test_normalised_weights_of_the_paper():
    # sum = 0.1 * 3 + 0.2 + 0.25 * 3 + 0.5 = 1.75; 0.1 / 1.75 = 2/35, 0.2 -> 4/35, 0.25 -> 5/35, 0.5 -> 10/35
    assert normalised_weights(LAMBDAS) == pytest.approx([n / 35 for n in (2, 2, 2, 4, 5, 5, 5, 10)], abs=TOL)
    assert sum(normalised_weights(LAMBDAS)) == pytest.approx(1.0, abs=TOL)


@pytest.mark.parametrize("lambdas", [
    (0.1,) * 7,                                  # too short
    (0.1,) * 9,                                  # too long
    (),                                          # empty
    (0.0,) * 8,                                  # all zeros: no positive sum
    (0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, -0.5),  # negative weight
])
def test_bad_lambdas_raise(lambdas):
    with pytest.raises(ValueError):
        normalised_weights(lambdas)
    x = rows(u(0), u(90))
    with pytest.raises(ValueError):
        safe_clip_loss(x, x, x, x, x, x, lambdas=lambdas)


# ---------------------------------------------------------------- the full objective on a hand example

# N = 2, d = 2, logit scale 1. References: T0(t) = [u(0), u(90)], V0(v) = [u(90), u(180)] (rotated by 90 degrees,
# so a term reading the wrong reference gives a different number). Inputs at chosen angles, odd magnitudes.
REF_T = rows(u(0), u(90))
REF_V = rows(u(90, 2.0), u(180, 0.5))
TEXT_SAFE = rows(u(0, 2.0), u(90, 3.0))       # angles (0, 90)
TEXT_UNSAFE = rows(u(60, 0.7), u(270, 4.0))   # angles (60, 270)
IMAGE_SAFE = rows(u(90, 1.5), u(0, 0.3))      # angles (90, 0)
IMAGE_UNSAFE = rows(u(150, 5.0), u(120))      # angles (150, 120)

EXPECTED = {
    # vs T0 (0, 90): 1 - cos 0 = 0, 1 - cos 0 = 0
    "cos.text_safe": 0.0,
    # vs T0 (0, 90): 1 - cos 60 = 0.5, 1 - cos 180 = 2 -> 1.25
    "cos.text_unsafe": 1.25,
    # vs V0 (90, 180): 1 - cos 0 = 0, 1 - cos 180 = 2 -> 1
    "cos.image_safe": 1.0,
    # vs V0 (90, 180): 1 - cos 60 = 0.5, 1 - cos 60 = 0.5 -> 0.5
    "cos.image_unsafe": 0.5,
    # T(t) (0, 90) vs V0 (90, 180): M = [[0, -1], [1, 0]].
    # row0 [0,-1] l0: L; row1 [1,0] l1: log(e+1) = 1+L; col0 [0,1] l0: 1+L; col1 [-1,0] l1: L -> L + 1/2 ~= 0.8132617
    "nce.text_safe": L + 0.5,
    # T(t*) (60, 270) vs V0 (90, 180): M = [[cos -30, cos -120], [cos 180, cos 90]] = [[r3/2, -1/2], [-1, 0]].
    # row0 l0: log(1 + e^(-1/2 - r3/2)); row1 l1: log(e^-1 + 1) = L;
    # col0 [r3/2, -1] l0: log(1 + e^(-1 - r3/2)); col1 [-1/2, 0] l1: log(1 + e^-1/2).  mean ~= 0.2896105
    "nce.text_unsafe": (sp(-(1 + SQRT3) / 2) + L + sp(-1 - SQRT3 / 2) + sp(-0.5)) / 4,
    # V(v) (90, 0) vs T0 (0, 90): M = [[0, 1], [1, 0]]: every row/column costs log(1 + e) = 1 + L ~= 1.3132617
    "nce.image_safe": 1 + L,
    # V(v*) (150, 120) vs T0 (0, 90): M = [[-r3/2, 1/2], [-1/2, r3/2]]; c = (1 + r3)/2, d = (r3 - 1)/2.
    # row0 l0: log(1 + e^c); row1 l1: log(1 + e^-c); col0 [-r3/2, -1/2] l0: log(1 + e^d);
    # col1 [1/2, r3/2] l1: log(1 + e^-d).  mean ~= 0.8100222
    "nce.image_unsafe": (sp((1 + SQRT3) / 2) + sp(-(1 + SQRT3) / 2) + sp((SQRT3 - 1) / 2) + sp(-(SQRT3 - 1) / 2)) / 4,
}


def hand_loss(**kw):
    return safe_clip_loss(TEXT_SAFE, TEXT_UNSAFE, IMAGE_SAFE, IMAGE_UNSAFE, REF_T, REF_V, logit_scale=1.0, **kw)


def test_every_term_on_the_hand_example():
    _, terms = hand_loss()
    assert list(terms) == list(TERMS)
    for name in TERMS:
        assert terms[name].item() == pytest.approx(EXPECTED[name], abs=TOL), name


def test_total_with_the_paper_weights():
    # (2*0 + 2*1.25 + 2*1 + 4*0.5 + 5*(0.8132617 + 0.2896105 + 1.3132617) + 10*0.8100222) / 35 / 8
    # = (6.5 + 12.0806696 + 8.1002220) / 280 ~= 0.0952889
    e = EXPECTED
    want = (2 * e["cos.text_safe"] + 2 * e["cos.text_unsafe"] + 2 * e["cos.image_safe"] + 4 * e["cos.image_unsafe"]
            + 5 * (e["nce.text_safe"] + e["nce.text_unsafe"] + e["nce.image_safe"]) + 10 * e["nce.image_unsafe"]
            ) / 35 / 8
    total, _ = hand_loss()
    assert want == pytest.approx(0.0952888977, abs=1e-9)
    assert total.item() == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize("k", range(8))
def test_one_hot_lambdas_pick_one_term(k):
    # normalised weights (0, ..., 1, ..., 0) -> total = term_k / 8; the magnitude of the one weight is irrelevant
    lambdas = [0.0] * 8
    lambdas[k] = 3.0
    total, _ = hand_loss(lambdas=lambdas)
    assert total.item() == pytest.approx(EXPECTED[TERMS[k]] / 8, abs=TOL)


def test_custom_lambdas_are_normalised():
    # uniform weights: total = mean(terms) / 8, whatever the common value
    uniform = sum(EXPECTED.values()) / 8 / 8
    assert hand_loss(lambdas=[1.0] * 8)[0].item() == pytest.approx(uniform, abs=TOL)
    assert hand_loss(lambdas=[0.01] * 8)[0].item() == pytest.approx(uniform, abs=TOL)
    # only the two image_unsafe terms, 1 : 3 -> (0.25 * 0.5 + 0.75 * nce) / 8
    lambdas = [0, 0, 0, 1, 0, 0, 0, 3]
    want = (0.25 * 0.5 + 0.75 * EXPECTED["nce.image_unsafe"]) / 8
    assert hand_loss(lambdas=lambdas)[0].item() == pytest.approx(want, abs=TOL)
    # scaling all the paper's weights by 4 changes nothing
    assert hand_loss(lambdas=[4 * w for w in LAMBDAS])[0].item() == pytest.approx(hand_loss()[0].item(), abs=TOL)


def test_perfect_model_costs_only_the_infonce_floor():
    # every embedding equal to its reference; T0 = V0 = [e1, e2]: cos terms 0, every InfoNCE = L (orthonormal
    # pair at scale 1), total = (weights of the nce terms) * L / 8 = (5+5+5+10)/35 * L / 8 = 5L/56 ~= 0.0279698
    eye = rows([1.0, 0.0], [0.0, 1.0])
    total, terms = safe_clip_loss(eye, eye, eye, eye, eye, eye, logit_scale=1.0)
    for name in TERMS[:4]:
        assert terms[name].item() == pytest.approx(0.0, abs=TOL)
    for name in TERMS[4:]:
        assert terms[name].item() == pytest.approx(L, abs=TOL)
    assert total.item() == pytest.approx(5 * L / 56, abs=TOL)


# ---------------------------------------------------------------- invariances, gradients, routing


def test_positive_rescaling_changes_nothing():
    # cosine and InfoNCE both normalise the raw embeddings: scaling rows by positive factors is a no-op
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(6)]
    scaled = [a * (0.1 + 10 * torch.rand(4, 1, generator=g, dtype=torch.float64)) for a in args]
    total, terms = safe_clip_loss(*args, logit_scale=10.0)
    total2, terms2 = safe_clip_loss(*scaled, logit_scale=10.0)
    assert total2.item() == pytest.approx(total.item(), abs=1e-12)
    for name in TERMS:
        assert terms2[name].item() == pytest.approx(terms[name].item(), abs=1e-12), name
    # the hand example itself used odd magnitudes; it also matches its unit-vector version
    unit = [torch.nn.functional.normalize(a, dim=-1)
            for a in (TEXT_SAFE, TEXT_UNSAFE, IMAGE_SAFE, IMAGE_UNSAFE, REF_T, REF_V)]
    _, terms3 = safe_clip_loss(*unit, logit_scale=1.0)
    for name in TERMS:
        assert terms3[name].item() == pytest.approx(EXPECTED[name], abs=TOL), name


def random_inputs(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(6)]


def test_references_get_no_gradient_inputs_do():
    inputs = [a.requires_grad_() for a in random_inputs(1)]
    total, _ = safe_clip_loss(*inputs)
    total.backward()
    for a in inputs[:4]:
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    for ref in inputs[4:]:
        assert ref.grad is None


NAMES = ("text_safe", "text_unsafe", "image_safe", "image_unsafe", "ref_text_safe", "ref_image_safe")
# which terms read which argument (T0 = ref_text_safe is the cos target of texts and the nce target of images)
READS = {
    "text_safe": {"cos.text_safe", "nce.text_safe"},
    "text_unsafe": {"cos.text_unsafe", "nce.text_unsafe"},
    "image_safe": {"cos.image_safe", "nce.image_safe"},
    "image_unsafe": {"cos.image_unsafe", "nce.image_unsafe"},
    "ref_text_safe": {"cos.text_safe", "cos.text_unsafe", "nce.image_safe", "nce.image_unsafe"},
    "ref_image_safe": {"cos.image_safe", "cos.image_unsafe", "nce.text_safe", "nce.text_unsafe"},
}


@pytest.mark.parametrize("which", range(6), ids=NAMES)
def test_each_argument_moves_only_its_own_terms(which):
    base = random_inputs(2)
    changed = list(base)
    changed[which] = random_inputs(3)[which]
    _, before = safe_clip_loss(*base, logit_scale=5.0)
    _, after = safe_clip_loss(*changed, logit_scale=5.0)
    moved = {name for name in TERMS if abs(after[name].item() - before[name].item()) > 1e-9}
    assert moved == READS[NAMES[which]]


@pytest.mark.parametrize("k", range(8), ids=TERMS)
def test_each_term_sends_gradient_only_to_its_own_input(k):
    inputs = [a.requires_grad_() for a in random_inputs(4)]
    _, terms = safe_clip_loss(*inputs, logit_scale=5.0)
    grads = torch.autograd.grad(terms[TERMS[k]], inputs, allow_unused=True)
    # term k reads input k % 4 (k-th text/image argument, in TERMS order) and nothing trainable else
    own = k % 4
    for i, gr in enumerate(grads):
        if i == own:
            assert gr is not None and gr.abs().sum() > 0
        else:
            assert gr is None or not gr.abs().sum() > 0, NAMES[i]
