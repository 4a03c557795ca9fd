"""Retrieval metrics against rankings worked out by hand, and chunked vs unchunked agreement.

u(a) is the unit 2-D vector at `a` degrees: between two such vectors cos = cos(angle difference), so for angles
within 0..180 of each other a smaller difference ranks higher.
"""

import math

import numpy as np
import pytest
import torch

from safeclip.eval.retrieval import recall_at_k, target_ranks, topk_indices, unsafe_rate


def u(deg: float, r: float = 1.0) -> list[float]:
    return [r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))]


def t(*vectors) -> torch.Tensor:
    return torch.tensor(vectors, dtype=torch.float32)


E1, E2, E3 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]


# ---------------------------------------------------------------- recall on hand examples


def test_two_item_gallery_hit_and_miss():
    # gallery [e1, e2]; both queries are (1, 0.2): cos to e1 = 1/sqrt(1.04) ~= 0.981, to e2 ~= 0.196.
    # query 0's target is e1 -> rank 0 (hit at 1); query 1's target is e2 -> rank 1 (miss at 1, hit at 2)
    gallery = t([1.0, 0.0], [0.0, 1.0])
    queries = t([1.0, 0.2], [1.0, 0.2])
    assert target_ranks(queries, gallery, [0, 1]).tolist() == [0, 1]
    assert recall_at_k(queries, gallery, [0, 1], ks=(1, 2)) == {1: 0.5, 2: 1.0}


def test_angles_give_known_ranks():
    # gallery at 0, 10, ..., 70 degrees (indices 0..7)
    gallery = t(*[u(10 * j) for j in range(8)])
    # query at 33: |differences| 33, 23, 13, 3, 7, 17, 27, 37 -> order 3, 4, 2, 5, 1, 6, 0, 7
    # query at 68: differences 68, 58, 48, 38, 28, 18, 8, 2 -> index 7 first
    queries = t(u(0), u(0), u(33), u(33), u(68), u(33))
    targets = [0, 3, 4, 0, 7, 7]
    # ranks: q@0 -> idx0: 0; q@0 -> idx3: 3; q@33 -> idx4: 1; q@33 -> idx0: 6; q@68 -> idx7: 0; q@33 -> idx7: 7
    assert target_ranks(queries, gallery, targets).tolist() == [0, 3, 1, 6, 0, 7]
    # R@1: ranks < 1 -> 2/6; R@2: 3/6; R@5: ranks 0,3,1,0 -> 4/6; R@7: 5/6; R@8, R@10, R@20: 6/6
    got = recall_at_k(queries, gallery, targets, ks=(1, 2, 5, 7, 8, 10, 20))
    assert got == pytest.approx({1: 2 / 6, 2: 3 / 6, 5: 4 / 6, 7: 5 / 6, 8: 1.0, 10: 1.0, 20: 1.0}, abs=1e-12)
    # the default ks
    assert recall_at_k(queries, gallery, targets) == pytest.approx({1: 2 / 6, 5: 4 / 6, 10: 1.0, 20: 1.0}, abs=1e-12)


def test_three_d_known_ordering():
    # query (3, 2, 1), |q| = sqrt 14. cos * sqrt 14 against each gallery item:
    #   e1: 3, e2: 2, e3: 1, (1,1,0): 5/sqrt 2 ~= 3.536, (1,1,1): 6/sqrt 3 ~= 3.464
    # order: idx3, idx4, idx0, idx1, idx2 -> targets 0..4 have ranks 2, 3, 4, 0, 1
    gallery = t(E1, E2, E3, [1.0, 1.0, 0.0], [1.0, 1.0, 1.0])
    queries = t(*[[3.0, 2.0, 1.0]] * 5)
    targets = [0, 1, 2, 3, 4]
    assert target_ranks(queries, gallery, targets).tolist() == [2, 3, 4, 0, 1]
    assert recall_at_k(queries, gallery, targets, ks=(1, 2, 3, 5)) == pytest.approx(
        {1: 1 / 5, 2: 2 / 5, 3: 3 / 5, 5: 1.0}, abs=1e-12)
    assert topk_indices(queries[:1], gallery, 5).tolist() == [[3, 4, 0, 1, 2]]


def test_ties_count_against_the_query():
    # gallery [e1, e1, e2]: items 0 and 1 are identical. A query e1 targeting either scores 1 against both,
    # so the other copy is ranked above the target: rank 1, a miss at k=1 and a hit at k=2.
    gallery = t([1.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    queries = t([1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0])
    targets = [0, 1, 2, 2]
    # q3 = e1 targeting e2: both copies of e1 above it -> rank 2
    assert target_ranks(queries, gallery, targets).tolist() == [1, 1, 0, 2]
    assert recall_at_k(queries, gallery, targets, ks=(1, 2, 3)) == pytest.approx({1: 0.25, 2: 0.75, 3: 1.0})


def test_collapsed_gallery_scores_zero_below_its_size():
    # every gallery item identical: every target ties with all 5 items -> rank 4 -> R@k = 0 for k < 5, 1 at k = 5
    gallery = t(*[[0.3, -0.7, 0.2]] * 5)
    queries = t(E1, E2, E3, [0.3, -0.7, 0.2])
    targets = [0, 1, 3, 4]
    assert target_ranks(queries, gallery, targets).tolist() == [4, 4, 4, 4]
    assert recall_at_k(queries, gallery, targets, ks=(1, 4, 5)) == {1: 0.0, 4: 0.0, 5: 1.0}


@pytest.mark.parametrize(("size", "d"), [(5, 3), (5, 512), (100, 512)])
def test_collapsed_random_gallery_scores_zero(size, d):
    # one random row repeated `size` times, random queries, default chunk: every rank is size - 1, every R@k with
    # k < size is 0 (the module's promise for a collapsed model)
    g = torch.Generator().manual_seed(0)
    gallery = torch.randn(1, d, generator=g).expand(size, d).clone()
    queries = torch.randn(10, d, generator=g)
    targets = torch.arange(10) % size
    assert target_ranks(queries, gallery, targets).tolist() == [size - 1] * 10
    assert recall_at_k(queries, gallery, targets, ks=(1, size - 1)) == {1: 0.0, size - 1: 0.0}


def test_scaling_rows_changes_nothing():
    # the 3-D example with every gallery row and query rescaled by a positive factor: same ranks
    gallery = t(E1, E2, E3, [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]) * torch.tensor([[7.0], [0.01], [3.0], [0.5], [100.0]])
    queries = t(*[[3.0, 2.0, 1.0]] * 5) * torch.tensor([[0.001], [1.0], [5.0], [42.0], [0.3]])
    assert target_ranks(queries, gallery, [0, 1, 2, 3, 4]).tolist() == [2, 3, 4, 0, 1]
    assert topk_indices(queries, gallery, 3).tolist() == [[3, 4, 0]] * 5
    # 2-D: a large e2 does not outrank a tiny e1 for the query e1
    assert target_ranks(t([1.0, 0.0]), t([1e-3, 0.0], [0.0, 1e3]), [0]).tolist() == [0]


@pytest.mark.parametrize("targets", [[0, 3], [-1, 0], [0, 1, 2], [0], [[0, 1]]],
                         ids=["too-large", "negative", "too-many", "too-few", "2-d"])
def test_bad_targets_raise(targets):
    gallery = t([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    queries = t([1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError):
        target_ranks(queries, gallery, targets)
    with pytest.raises(ValueError):
        recall_at_k(queries, gallery, targets)


# ---------------------------------------------------------------- chunking


def planted_ties(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gallery = torch.randn(20, d, generator=g)
    gallery[5] = gallery[2]
    gallery[11] = gallery[2]
    gallery[17] = gallery[9]
    gallery[18] = 2.0 * gallery[9]  # exact power-of-two scaling: normalises to the same bits as row 9
    queries = torch.randn(13, d, generator=g)
    queries[3] = gallery[2]
    queries[4] = gallery[9]
    targets = torch.tensor([2, 5, 11, 9, 17, 18, 0, 19, 2, 9, 17, 5, 1])
    return queries, gallery, targets


def exact_ranks(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """Reference: cosines of the float32-normalised rows summed exactly (products of float32 are exact in float64,
    math.fsum rounds once), so identical rows score identically; rank = #(score >= target's score) - 1."""
    q = torch.nn.functional.normalize(queries, dim=-1).double().tolist()
    g = torch.nn.functional.normalize(gallery, dim=-1).double().tolist()
    out = []
    for i, ti in enumerate(targets.tolist()):
        s = [math.fsum(a * b for a, b in zip(q[i], row, strict=True)) for row in g]
        # no near-tie with the target other than the planted exact ones, so any correct float32 evaluation agrees
        assert all(x == s[ti] or abs(x - s[ti]) > 1e-5 for x in s)
        out.append(sum(x >= s[ti] for x in s) - 1)
    return out


@pytest.mark.parametrize("d", [3, 4, 8])
def test_chunked_ranks_equal_unchunked_with_planted_ties(d):
    queries, gallery, targets = planted_ties(d, seed=1)
    ref = exact_ranks(queries, gallery, targets)
    # hand check of the planted ties: query 3 is gallery row 2 (copies 2, 5, 11) and targets 9 (copies 9, 17, 18)
    # query 4 is gallery row 9 and targets 17: it scores 1 against its three copies -> rank 2
    assert ref[4] == 2
    unchunked = target_ranks(queries, gallery, targets, chunk=4096).tolist()
    assert unchunked == ref
    for chunk in (1, 3, 7):
        got = target_ranks(queries, gallery, targets, chunk=chunk)
        assert (got >= 0).all(), f"chunk={chunk}: negative rank {got.tolist()}"
        assert got.tolist() == unchunked, f"chunk={chunk}"


@pytest.mark.parametrize("d", [8, 512])
@pytest.mark.parametrize("chunk", [3, 4096])
def test_chunked_ranks_without_ties_match_the_exact_reference(d, chunk):
    # random data, no ties at all: every chunk size must give the exact ranks
    g = torch.Generator().manual_seed(11)
    queries, gallery = torch.randn(13, d, generator=g), torch.randn(20, d, generator=g)
    targets = torch.randint(0, 20, (13,), generator=g)
    assert target_ranks(queries, gallery, targets, chunk=chunk).tolist() == exact_ranks(queries, gallery, targets)


@pytest.mark.parametrize("d", [64, 512])
@pytest.mark.parametrize("chunk", [3, 4096])
def test_a_target_that_is_the_nearest_item_has_rank_zero_at_any_chunk(d, chunk):
    # each query is its target plus 10% noise, far closer to it than to any other random item: rank 0, never -1
    g = torch.Generator().manual_seed(5)
    gallery = torch.randn(20, d, generator=g)
    targets = torch.randperm(20, generator=g)[:13]
    queries = gallery[targets] + 0.1 * torch.randn(13, d, generator=g)
    assert exact_ranks(queries, gallery, targets) == [0] * 13
    assert target_ranks(queries, gallery, targets, chunk=chunk).tolist() == [0] * 13


def test_lone_target_in_the_last_default_chunk_has_rank_zero():
    # default chunk (4096) and a gallery of 4100: one query per run targets an item of the short last gallery chunk.
    # Every query is its target plus 5% noise (64-D), so every true rank is 0.
    wrong = []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        gallery = torch.randn(4100, 64, generator=g)
        targets = torch.randint(0, 4096, (13,), generator=g)
        targets[5] = 4096 + seed % 4
        queries = gallery[targets] + 0.05 * torch.randn(13, 64, generator=g)
        ranks = target_ranks(queries, gallery, targets)
        if ranks.tolist() != [0] * 13:
            wrong.append((seed, ranks.tolist()))
    assert wrong == []


def test_chunked_ranks_on_the_hand_example():
    # the angle example of test_angles_give_known_ranks, with chunks smaller than both sides
    gallery = t(*[u(10 * j) for j in range(8)])
    queries = t(u(0), u(0), u(33), u(33), u(68), u(33))
    for chunk in (1, 2, 3, 5):
        assert target_ranks(queries, gallery, [0, 3, 4, 0, 7, 7], chunk=chunk).tolist() == [0, 3, 1, 6, 0, 7]
    # ties straddling chunk boundaries: [e1, e2, e1, e2, e1] with chunk 2 -> the three e1 sit in 3 chunks
    gallery = t([1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0])
    queries = t([1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0])
    # e1 targeting any e1: 3 items at cos 1 -> rank 2; e2 targeting item 3: 2 items at 1 -> rank 1;
    # e1 targeting item 1 (an e2, cos 0): all 5 items score >= 0 -> rank 4
    for chunk in (1, 2, 3, 4096):
        assert target_ranks(queries, gallery, [0, 4, 3, 1], chunk=chunk).tolist() == [2, 2, 1, 4]


@pytest.mark.parametrize("chunk", [1, 3, 7, 19])
@pytest.mark.parametrize("k", [1, 5, 20, 25])
def test_topk_matches_brute_force(chunk, k):
    g = torch.Generator().manual_seed(7)
    queries, gallery = torch.randn(11, 8, generator=g), torch.randn(20, 8, generator=g)
    qn = queries.double().numpy() / np.linalg.norm(queries.double().numpy(), axis=1, keepdims=True)
    gn = gallery.double().numpy() / np.linalg.norm(gallery.double().numpy(), axis=1, keepdims=True)
    scores = qn @ gn.T
    gaps = np.diff(np.sort(scores, axis=1), axis=1)
    assert gaps.min() > 1e-5  # no ties, so the order is unambiguous
    want = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, 20)]
    got = topk_indices(queries, gallery, k, chunk=chunk)
    assert got.shape == (11, min(k, 20))
    assert got.tolist() == want.tolist()


# ---------------------------------------------------------------- unsafe rate


# gallery at 0, 20, 50, 90 degrees, items 0 and 1 unsafe.
# query @0:  differences 0, 20, 50, 90 -> order 0, 1, 2, 3 (U U S S)
# query @85: differences 85, 65, 35, 5 -> order 3, 2, 1, 0 (S S U U)
# query @40: differences 40, 20, 10, 50 -> order 2, 1, 0, 3 (S U U S)
UG = t(u(0), u(20), u(50), u(90))
UQ = t(u(0), u(85), u(40))
UNSAFE = [True, True, False, False]


def test_unsafe_rate_by_hand():
    assert topk_indices(UQ, UG, 4).tolist() == [[0, 1, 2, 3], [3, 2, 1, 0], [2, 1, 0, 3]]
    # k=1: (1 + 0 + 0) / 3 = 1/3
    # k=2: (2/2 + 0/2 + 1/2) / 3 = 1/2
    # k=3: (2/3 + 1/3 + 2/3) / 3 = 5/9
    # k=4: every query sees the whole gallery: 2/4 -> 1/2
    got = unsafe_rate(UQ, UG, UNSAFE, ks=(1, 2, 3, 4))
    assert got == pytest.approx({1: 1 / 3, 2: 1 / 2, 3: 5 / 9, 4: 1 / 2}, abs=1e-6)
    # chunking does not enter unsafe_rate; the ordering it relies on is chunk-independent here
    for chunk in (1, 2, 3):
        assert topk_indices(UQ, UG, 4, chunk=chunk).tolist() == [[0, 1, 2, 3], [3, 2, 1, 0], [2, 1, 0, 3]]


def test_unsafe_rate_default_ks_with_a_gallery_smaller_than_k():
    # default ks = (1, 10); the gallery has only 4 items, so the "top 10" is all 4 of them and the rate is the
    # fraction of unsafe items among those retrieved: 2/4 = 0.5 for every query (not 2/10: missing slots are not
    # counted as safe).
    got = unsafe_rate(UQ, UG, UNSAFE)
    assert got == pytest.approx({1: 1 / 3, 10: 0.5}, abs=1e-6)
    # all-unsafe gallery -> 1.0 at every k, all-safe -> 0.0
    assert unsafe_rate(UQ, UG, [True] * 4) == pytest.approx({1: 1.0, 10: 1.0})
    assert unsafe_rate(UQ, UG, torch.zeros(4, dtype=torch.bool)) == pytest.approx({1: 0.0, 10: 0.0})
