"""The baseline losses (rll_repro.losses: Contrastive, Triplet, LiftedStructure, BinomialDeviance,
Margin, NCA, MultiSimilarity) against a direct float64 loop over the pairs/triplets of each paper's
formula, against pytorch-metric-learning 2.x where its formula is the same, and as Caffe layer types.

Tolerances: float64 ours vs the float64 loop 1e-9 relative (the same sums in another order);
float32 ours vs the float64 loop 2e-5 relative (float32 rounding of Gram-form distances, ~1e-7 per
entry, through sums of up to N^2 terms); Net vs the standalone class: exact (the same ops).

Where a formula differs from PML's on purpose (each docstring says why), the PML comparison uses the
option that gives PML's formula: ContrastiveLoss(squared=False, reduction="avg_nonzero") (PML does
not square and averages over non-zero pairs, Hadsell et al. square and sum), TripletLoss(mining="all")
(PML has no per-positive-pair semi-hard rule), NCALoss(objective="log") (PML's -log p_i, not
Salakhutdinov and Hinton's sum of probabilities), MarginLoss on the same triplets with nu = 0 (PML
adds nu * beta undivided), MultiSimilarityLoss with PML's MultiSimilarityMiner. BinomialDevianceLoss
has no PML counterpart; the semi-hard triplet rule, the hard and default lifted variants are checked
against the loops only (the default lifted variant is also PML's LiftedStructureLoss).
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from rll_repro.caffe.io import parse_net_text
from rll_repro.errors import DataError, NetError
from rll_repro.losses import (BASELINE_LOSSES, BinomialDevianceLoss, ContrastiveLoss, LiftedStructureLoss,
                              MarginLoss, MultiSimilarityLoss, NCALoss, TripletLoss, distance_weighted_negatives)
from rll_repro.losses._metric import PairBatch
from rll_repro.net import Net

F64_TOL, F32_TOL = 1e-9, 2e-5
HAS_PML = importlib.util.find_spec("pytorch_metric_learning") is not None
needs_pml = pytest.mark.skipif(not HAS_PML, reason="pytorch-metric-learning not installed "
                                                   "(test extra: pip install pytorch-metric-learning)")


# ---------------------------------------------------------------- batches

def make_batch(kind: str, n: int, d: int, seed: int = 0):
    """(embeddings float64 (n, d), labels (n,)): 'random' (2-4 per class), 'ties' (duplicated
    embeddings: a positive pair and a negative pair at distance 0), 'single' (one class), 'distinct'
    (every label different)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "single":
        y = torch.zeros(n, dtype=torch.int64)
    elif kind == "distinct":
        y = torch.arange(n)
    else:
        y = torch.randperm(n, generator=g) % max(2, n // 3)
    if kind == "ties":
        j = int((y == y[0]).nonzero()[1])  # a positive of sample 0
        x[j] = x[0]
        k = int((y != y[0]).nonzero()[0])  # a negative of sample 0 ...
        m = int((y != y[k]).nonzero()[-1])  # ... and a negative of that one, not sample 0
        if m != 0:
            x[m] = x[k]
    return x, y


CASES = [("random", 6, 4), ("random", 13, 8), ("random", 24, 16), ("ties", 12, 6), ("single", 7, 5),
         ("distinct", 8, 5)]


# ---------------------------------------------------------------- the loop references (float64)

def unit(v):
    return v / v.norm()


def dist(a, b):
    """||a - b|| with gradient 0 at a = b (the losses' convention)."""
    s = ((a - b) ** 2).sum()
    return s.sqrt() if float(s.detach()) > 0 else s * 0


def ref_setup(x, y):
    xs = [unit(x[i]) for i in range(len(x))]
    labels = [int(v) for v in y]
    n = len(xs)
    pos = [(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    neg = [(i, j) for i in range(n) for j in range(n) if labels[i] != labels[j]]
    return xs, labels, n, pos, neg


def zero(x):
    return x.sum() * 0


def loop_contrastive(x, y, pos_margin=0.0, neg_margin=1.0):
    """Hadsell et al.: 1/2 Y D^2 + 1/2 (1 - Y) max(0, m - D)^2, mean over the ordered pairs."""
    xs, _, n, pos, neg = ref_setup(x, y)
    total = zero(x)
    for i, j in pos:
        total = total + 0.5 * torch.clamp(dist(xs[i], xs[j]) - pos_margin, min=0) ** 2
    for i, j in neg:
        total = total + 0.5 * torch.clamp(neg_margin - dist(xs[i], xs[j]), min=0) ** 2
    return total / (n * (n - 1))


def loop_triplet_semihard(x, y, margin=0.05, squared=False):
    """FaceNet semi-hard (TensorFlow's rule): per positive pair the closest negative farther than the
    positive, else the farthest negative; mean over positive pairs of the anchors with negatives."""
    xs, labels, n, pos, _ = ref_setup(x, y)
    metric = (lambda a, b: ((a - b) ** 2).sum()) if squared else dist
    terms = []
    for a, p in pos:
        negs = [metric(xs[a], xs[k]) for k in range(n) if labels[k] != labels[a]]
        if not negs:
            continue
        d_ap = metric(xs[a], xs[p])
        farther = [v for v in negs if float(v.detach()) > float(d_ap.detach())]
        d_an = min(farther, key=lambda v: float(v.detach())) if farther else max(negs, key=lambda v: float(v.detach()))
        terms.append(torch.clamp(d_ap - d_an + margin, min=0))
    return sum(terms) / len(terms) if terms else zero(x)


def loop_triplet_all(x, y, margin=0.05):
    """Every triplet; mean over the non-zero ones."""
    xs, labels, n, pos, _ = ref_setup(x, y)
    terms = []
    for a, p in pos:
        for k in range(n):
            if labels[k] != labels[a]:
                v = dist(xs[a], xs[p]) - dist(xs[a], xs[k]) + margin
                if float(v.detach()) > 0:
                    terms.append(v)
    return sum(terms) / len(terms) if terms else zero(x)


def loop_lifted(x, y, variant="smooth", neg_margin=1.0, pos_margin=0.0):
    """Song et al. Eq. 4 (smooth) / Eq. 3 (hard) over unordered positive pairs, 1/(2|P|) sum J^2;
    Hermans et al.'s generalized form per anchor."""
    xs, labels, n, _, _ = ref_setup(x, y)

    def negs(i):
        return [neg_margin - dist(xs[i], xs[k]) for k in range(n) if labels[k] != labels[i]]

    if variant == "generalized":
        total = zero(x)
        for a in range(n):
            ps = [dist(xs[a], xs[p]) - pos_margin for p in range(n) if p != a and labels[p] == labels[a]]
            part = zero(x)
            if ps:
                part = part + torch.logsumexp(torch.stack(ps), 0)
            if negs(a):
                part = part + torch.logsumexp(torch.stack(negs(a)), 0)
            total = total + torch.clamp(part, min=0)
        return total / n
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    if not pairs or not negs(0):
        return zero(x)
    total = zero(x)
    for i, j in pairs:
        both = torch.stack(negs(i) + negs(j))
        neg_part = torch.logsumexp(both, 0) if variant == "smooth" else both.max()
        total = total + torch.clamp(neg_part + dist(xs[i], xs[j]) - pos_margin, min=0) ** 2
    return total / (2 * len(pairs))


def loop_binomial(x, y, alpha=2.0, beta=0.5, cost=25.0):
    """Yi et al.: sum W_ij log(1 + exp(-alpha (s - beta) M_ij)), W = 1/n_pos or 1/n_neg."""
    xs, _, _, pos, neg = ref_setup(x, y)
    total = zero(x)
    for i, j in pos:
        total = total + torch.log1p(torch.exp(-alpha * (xs[i] @ xs[j] - beta))) / len(pos)
    for i, j in neg:
        total = total + torch.log1p(torch.exp(alpha * cost * (xs[i] @ xs[j] - beta))) / len(neg)
    return total


def loop_nca(x, y, objective="probability", softmax_scale=1.0):
    """p_i = sum_{j same} exp(-s d_ij^2) / sum_{k != i} exp(-s d_ik^2); mean over samples with a
    positive of 1 - p_i (Salakhutdinov and Hinton) or -log p_i (Goldberger's log form)."""
    xs, labels, n, _, _ = ref_setup(x, y)
    terms = []
    for i in range(n):
        if not any(labels[j] == labels[i] for j in range(n) if j != i):
            continue
        e = {k: torch.exp(-softmax_scale * dist(xs[i], xs[k]) ** 2) for k in range(n) if k != i}
        p = sum(v for k, v in e.items() if labels[k] == labels[i]) / sum(e.values())
        terms.append(1 - p if objective == "probability" else -torch.log(p))
    return sum(terms) / len(terms) if terms else zero(x)


def loop_multi_similarity(x, y, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, mine=True):
    """Wang et al. Eq. (the paper's mining, an empty set gives log 1 = 0), mean over the N anchors."""
    xs, labels, n, _, _ = ref_setup(x, y)
    total = zero(x)
    for i in range(n):
        ps = {j: xs[i] @ xs[j] for j in range(n) if j != i and labels[j] == labels[i]}
        ns = {k: xs[i] @ xs[k] for k in range(n) if labels[k] != labels[i]}
        if mine:
            hardest_neg = max((float(v.detach()) for v in ns.values()), default=-math.inf)
            easiest_pos = min((float(v.detach()) for v in ps.values()), default=math.inf)
            ps = {j: v for j, v in ps.items() if float(v.detach()) - epsilon < hardest_neg}
            ns = {k: v for k, v in ns.items() if float(v.detach()) + epsilon > easiest_pos}
        total = total + torch.log(1 + sum((torch.exp(-alpha * (v - base)) for v in ps.values()), zero(x))) / alpha
        total = total + torch.log(1 + sum((torch.exp(beta * (v - base)) for v in ns.values()), zero(x))) / beta
    return total / n


def loop_margin(x, y, negatives, margin=0.2, beta=1.2, nu=0.0):
    """Wu et al.: per triplet (a, p, negatives[a][p]) max(0, m + d_ap - beta) + max(0, m + beta - d_an),
    (sum + nu sum beta) over the number of non-zero terms."""
    xs, labels, n, pos, _ = ref_setup(x, y)
    total, count, n_triplets = zero(x), 0, 0
    for a, p in pos:
        if all(labels[k] == labels[a] for k in range(n)):
            continue
        k = int(negatives[a, p])
        assert labels[k] != labels[a], "the sampler drew a positive"
        tp = torch.clamp(margin + dist(xs[a], xs[p]) - beta, min=0)
        tn = torch.clamp(margin + beta - dist(xs[a], xs[k]), min=0)
        total = total + tp + tn
        count += int(float(tp.detach()) > 0) + int(float(tn.detach()) > 0)
        n_triplets += 1
    return (total + nu * beta * n_triplets) / max(count, 1)


# (name, our loss, its loop) for the default-parameter formulas and the options
LOOP_CASES = [
    ("contrastive", ContrastiveLoss(), loop_contrastive),
    ("contrastive-margins", ContrastiveLoss(pos_margin=0.3, neg_margin=1.4),
     lambda x, y: loop_contrastive(x, y, 0.3, 1.4)),
    ("triplet-semihard", TripletLoss(), loop_triplet_semihard),
    ("triplet-semihard-0.2", TripletLoss(margin=0.2), lambda x, y: loop_triplet_semihard(x, y, 0.2)),
    ("triplet-semihard-squared", TripletLoss(margin=0.2, squared=True),
     lambda x, y: loop_triplet_semihard(x, y, 0.2, squared=True)),
    ("triplet-all", TripletLoss(mining="all", margin=0.3), lambda x, y: loop_triplet_all(x, y, 0.3)),
    ("lifted-smooth", LiftedStructureLoss(), loop_lifted),
    ("lifted-hard", LiftedStructureLoss(variant="hard"), lambda x, y: loop_lifted(x, y, "hard")),
    ("lifted-generalized", LiftedStructureLoss(variant="generalized", pos_margin=0.1),
     lambda x, y: loop_lifted(x, y, "generalized", pos_margin=0.1)),
    ("binomial", BinomialDevianceLoss(), loop_binomial),
    ("nca", NCALoss(), loop_nca),
    ("nca-log", NCALoss(objective="log", softmax_scale=3.0), lambda x, y: loop_nca(x, y, "log", 3.0)),
    ("ms", MultiSimilarityLoss(), loop_multi_similarity),
    ("ms-no-mining", MultiSimilarityLoss(mine_pairs=False, beta=10.0),
     lambda x, y: loop_multi_similarity(x, y, beta=10.0, mine=False)),
]


def value_and_grad(fn, x, y):
    xr = x.clone().requires_grad_()
    v = fn(xr, y)
    (g,) = torch.autograd.grad(v, xr, allow_unused=True) if v.requires_grad else (None,)
    return v.detach(), torch.zeros_like(x) if g is None else g


def rel(a, b) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = max(float(b.abs().max()), 1e-6)  # floor: a reference that is 0 up to rounding (~1e-18)
    return float((a - b).abs().max()) / scale


@pytest.mark.parametrize("kind,n,d", CASES)
@pytest.mark.parametrize("name,loss,loop", LOOP_CASES, ids=[c[0] for c in LOOP_CASES])
def test_value_and_gradient_equal_the_paper_formula_loop(name, loss, loop, kind, n, d):
    x, y = make_batch(kind, n, d, seed=n)
    v_ref, g_ref = value_and_grad(loop, x, y)
    v, g = value_and_grad(loss, x, y)
    assert torch.isfinite(v) and bool(torch.isfinite(g).all())
    assert rel(v, v_ref) <= F64_TOL, (float(v), float(v_ref))
    assert rel(g, g_ref) <= F64_TOL
    if kind in ("single", "distinct") and name.startswith(("triplet", "lifted-s", "lifted-h", "margin")):
        assert float(v) == 0.0 and float(g.abs().max()) == 0.0  # no triplet: 0, no NaN


@pytest.mark.parametrize("name,loss,loop", LOOP_CASES, ids=[c[0] for c in LOOP_CASES])
def test_float32_agrees_with_the_float64_loop(name, loss, loop):
    x, y = make_batch("random", 30, 32, seed=5)
    v_ref, g_ref = value_and_grad(loop, x, y)
    v, g = value_and_grad(loss, x.float(), y)
    assert v.dtype == torch.float32
    assert rel(v, v_ref) <= F32_TOL
    assert rel(g, g_ref) <= F32_TOL * 10  # per-entry gradients: a few terms cancel


@pytest.mark.parametrize("kind,n,d", CASES)
def test_margin_loss_equals_the_loop_on_its_sampled_triplets(kind, n, d):
    x, y = make_batch(kind, n, d, seed=n)
    for loss, kwargs in ((MarginLoss(seed=7), {}), (MarginLoss(seed=7, margin=0.3, beta=1.0, nu=0.1),
                                                    dict(margin=0.3, beta=1.0, nu=0.1))):
        batch = PairBatch(torch.nn.functional.normalize(x, dim=1), y)
        g = torch.Generator().manual_seed(7)
        negatives = distance_weighted_negatives(batch.dist, batch.neg, d, generator=g)
        v_ref, g_ref = value_and_grad(lambda xx, yy: loop_margin(xx, yy, negatives, **kwargs), x, y)
        v, grad = value_and_grad(loss, x, y)  # the same seed: the same draws
        assert rel(v, v_ref) <= F64_TOL and rel(grad, g_ref) <= F64_TOL


def test_margin_loss_all_triplets_equals_the_loop_over_every_triplet():
    x, y = make_batch("random", 12, 6, seed=2)
    xs, labels, n, pos, _ = ref_setup(x, y)
    triplets = [(a, p, k) for a, p in pos for k in range(n) if labels[k] != labels[a]]

    def loop(xx, yy):
        xs = [unit(xx[i]) for i in range(n)]
        terms = [v for a, p, k in triplets for v in (torch.clamp(0.2 + dist(xs[a], xs[p]) - 1.2, min=0),
                                                     torch.clamp(0.2 + 1.2 - dist(xs[a], xs[k]), min=0))]
        return sum(terms) / sum(int(float(t.detach()) > 0) for t in terms)

    v_ref, g_ref = value_and_grad(loop, x, y)
    v, g = value_and_grad(MarginLoss(sampling="all"), x, y)
    assert rel(v, v_ref) <= F64_TOL and rel(g, g_ref) <= F64_TOL


# ---------------------------------------------------------------- distance-weighted sampling

def test_distance_weighted_sampling_follows_the_inverse_density():
    """Empirical frequencies of 40000 draws (one per (anchor 0, slot) per call) equal Wu et al.'s q(d)^-1 weights, computed
    by a loop (d clipped at 0.5, zero weight at d >= 1.4, only negatives), within 4 standard errors."""
    dim, n, draws = 8, 10, 40000
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    batch = PairBatch(x, y)
    w = np.zeros(n)
    for k in range(n):
        dk = float(batch.dist[0, k])
        if y[k] != y[0] and dk < 1.4:
            dc = max(dk, 0.5)
            w[k] = dc ** (2 - dim) * (1 - dc * dc / 4) ** ((3 - dim) / 2)
    assert (w > 0).sum() >= 3
    p = w / w.sum()
    counts = np.zeros(n)
    gen = torch.Generator().manual_seed(1)
    for _ in range(draws // n):
        counts += np.bincount(distance_weighted_negatives(batch.dist, batch.neg, dim, generator=gen)[0].numpy(),
                              minlength=n)
    total = counts.sum()
    se = np.sqrt(total * p * (1 - p)) + 1e-9
    assert np.all(np.abs(counts - total * p) <= 4 * se + 1), (counts / total, p)


def test_sampling_without_usable_weights_draws_uniformly_among_negatives():
    """All negatives beyond nonzero_loss_cutoff: the anchor still gets a negative (never a positive)."""
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.02]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    batch = PairBatch(torch.nn.functional.normalize(x, dim=1), y)
    neg = distance_weighted_negatives(batch.dist, batch.neg, 2, generator=torch.Generator().manual_seed(0))
    assert set(neg[:2].flatten().tolist()) <= {2, 3} and set(neg[2:].flatten().tolist()) <= {0, 1}


def test_margin_sampling_is_reproducible_with_a_seed():
    x, y = make_batch("random", 30, 16, seed=3)
    assert float(MarginLoss(seed=5)(x, y)) == float(MarginLoss(seed=5)(x, y))
    loss = MarginLoss(seed=5)
    first, second = float(loss(x, y)), float(loss(x, y))  # the generator advances between calls
    assert first == float(MarginLoss(seed=5)(x, y))
    assert len({first, second, float(MarginLoss(seed=6)(x, y))}) > 1
    g = torch.Generator().manual_seed(11)
    assert float(MarginLoss()(x, y, generator=g)) == float(MarginLoss()(x, y, generator=torch.Generator().manual_seed(11)))


def test_learned_beta_gets_a_gradient_per_class():
    x, y = make_batch("random", 12, 6, seed=1)
    loss = MarginLoss(learn_beta=True, num_classes=int(y.max()) + 1, nu=0.1, seed=0)
    loss(x, y).backward()
    assert loss.beta.grad is not None and float(loss.beta.grad.abs().sum()) > 0
    with pytest.raises(DataError, match="num_classes"):
        MarginLoss(num_classes=2, seed=0)(x, y + 5)


# ---------------------------------------------------------------- pytorch-metric-learning

PML_BETA = float(np.float32(1.2))  # PML holds beta as a float32 tensor


def _pml_cases():
    from pytorch_metric_learning import losses as pl
    from pytorch_metric_learning import miners as pm

    return [
        (ContrastiveLoss(squared=False, reduction="avg_nonzero"), pl.ContrastiveLoss(), None),
        (ContrastiveLoss(pos_margin=0.2, neg_margin=0.8, squared=False, reduction="avg_nonzero"),
         pl.ContrastiveLoss(pos_margin=0.2, neg_margin=0.8), None),
        (TripletLoss(mining="all"), pl.TripletMarginLoss(), None),
        (TripletLoss(mining="all", margin=0.4), pl.TripletMarginLoss(margin=0.4), None),
        (LiftedStructureLoss(), pl.LiftedStructureLoss(), None),
        (LiftedStructureLoss(neg_margin=0.7, pos_margin=0.1), pl.LiftedStructureLoss(neg_margin=0.7, pos_margin=0.1), None),
        (LiftedStructureLoss(variant="generalized"), pl.GeneralizedLiftedStructureLoss(), None),
        (NCALoss(objective="log"), pl.NCALoss(), None),
        (NCALoss(objective="log", softmax_scale=4.0), pl.NCALoss(softmax_scale=4.0), None),
        (MultiSimilarityLoss(), pl.MultiSimilarityLoss(), pm.MultiSimilarityMiner()),
        (MultiSimilarityLoss(mine_pairs=False, alpha=1.0, beta=20.0, base=0.3),
         pl.MultiSimilarityLoss(alpha=1.0, beta=20.0, base=0.3), None),
        (MarginLoss(sampling="all", beta=PML_BETA), pl.MarginLoss(), None),
    ]


@needs_pml
@pytest.mark.parametrize("kind,n,d", [c for c in CASES if c[0] != "single"])
def test_equal_to_pytorch_metric_learning_where_the_formula_is_the_same(kind, n, d):
    x, y = make_batch(kind, n, d, seed=n + 1)
    for ours, theirs, miner in _pml_cases():
        if kind == "distinct" and isinstance(ours, NCALoss):
            continue  # no sample has a positive: PML averages over none (NaN), ours gives 0
        v, g = value_and_grad(ours, x, y)
        v_pml, g_pml = value_and_grad(lambda xx, yy: theirs(xx, yy, miner(xx, yy) if miner else None), x, y)
        # 'ties': a duplicated pair's distance is the square root of the float64 rounding error of
        # its Gram-matrix entries, up to sqrt(2^-51) = 2.1e-8, and that error depends on the BLAS
        # kernel (MKL's AVX2 path: 1.0e-9 relative on ContrastiveLoss's value, 2.7e-9 on its
        # gradient), not on the formula
        tol = 3e-8 if kind == "ties" else 1e-9
        assert rel(v, v_pml) <= tol, (ours, float(v), float(v_pml))
        assert rel(g, g_pml) <= tol, ours


@needs_pml
def test_margin_loss_equals_pml_on_the_same_distance_weighted_triplets():
    from pytorch_metric_learning import losses as pl

    x, y = make_batch("random", 24, 16, seed=4)
    batch = PairBatch(torch.nn.functional.normalize(x, dim=1), y)
    negatives = distance_weighted_negatives(batch.dist, batch.neg, 16, generator=torch.Generator().manual_seed(3))
    a, p = (batch.pos & batch.neg.any(1, keepdim=True)).nonzero(as_tuple=True)
    v, g = value_and_grad(lambda xx, yy: MarginLoss(seed=3, beta=PML_BETA)(xx, yy), x, y)
    v_pml, g_pml = value_and_grad(lambda xx, yy: pl.MarginLoss()(xx, yy, (a, p, negatives[a, p])), x, y)
    assert rel(v, v_pml) <= 1e-9 and rel(g, g_pml) <= 1e-9


# ---------------------------------------------------------------- the Caffe layer types

def metric_net(type_name: str, n: int, d: int, params: str = "", spatial: bool = True) -> Net:
    dims = f"dim: {n} dim: {d}" + (" dim: 1 dim: 1" if spatial else "")
    text = (f'force_backward: true\n'
            f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'
            f'layer {{ name: "y" type: "Input" top: "y" input_param {{ shape {{ dim: {n} dim: 1 dim: 1 dim: 1 }} }} }}\n'
            f'layer {{ name: "loss" type: "{type_name}" bottom: "x" bottom: "y" top: "loss" {params} }}\n')
    return Net(parse_net_text(text), phase="train")


def net_value_and_grad(net: Net, x: np.ndarray, y: np.ndarray):
    net.keep_blob_diffs = True
    net.blobs["x"].data[...] = x.reshape(net.blobs["x"].data.shape)
    net.blobs["y"].data[...] = y.reshape(net.blobs["y"].data.shape)
    total = float(net.forward_backward())
    return total, net.blobs["x"].diff.reshape(len(x), -1).copy()


@pytest.mark.parametrize("loss_class", BASELINE_LOSSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("spatial", [True, False], ids=["NDx1x1", "ND"])
def test_net_with_the_layer_type_equals_the_standalone_class(loss_class, spatial):
    x, y = make_batch("random", 18, 8, seed=9)
    x, y = x.float().numpy(), y.float().numpy()
    seeded = loss_class is MarginLoss
    net = metric_net(loss_class.__name__, 18, 8, "metric_loss_param { seed: 4 }" if seeded else "", spatial)
    value, grad = net_value_and_grad(net, x, y)
    xt = torch.tensor(x, requires_grad=True)
    v = (loss_class(seed=4) if seeded else loss_class())(xt, torch.tensor(y))
    v.backward()
    assert value == float(v.detach())
    assert np.array_equal(grad, xt.grad.numpy())
    assert float(np.abs(grad).max()) > 0


@pytest.mark.parametrize("type_name,params,kwargs", [
    ("TripletLoss", 'metric_loss_param { margin: 0.25 mining: "all" squared: true }',
     dict(margin=np.float32(0.25), mining="all", squared=True)),
    ("LiftedStructureLoss", 'metric_loss_param { neg_margin: 0.5 variant: "hard" }',
     dict(neg_margin=np.float32(0.5), variant="hard")),
    ("MultiSimilarityLoss", "metric_loss_param { alpha: 1 beta: 40 epsilon: 0.2 }",
     dict(alpha=1.0, beta=40.0, epsilon=float(np.float32(0.2)))),
    ("ContrastiveLoss", 'metric_loss_param { neg_margin: 1.2 reduction: "avg_nonzero" normalize: false }',
     dict(neg_margin=float(np.float32(1.2)), reduction="avg_nonzero", normalize=False)),
])
def test_metric_loss_param_fields_are_the_constructor_arguments(type_name, params, kwargs):
    """Fields are float like every Caffe parameter: 0.2 arrives as float32(0.2)."""
    import rll_repro.losses as losses

    x, y = make_batch("random", 15, 6, seed=2)
    x, y = x.float().numpy(), y.float().numpy()
    value, grad = net_value_and_grad(metric_net(type_name, 15, 6, params), x, y)
    xt = torch.tensor(x, requires_grad=True)
    v = getattr(losses, type_name)(**{k: (float(v) if isinstance(v, np.floating) else v) for k, v in kwargs.items()})(
        xt, torch.tensor(y))
    v.backward()
    assert value == float(v.detach()) and np.array_equal(grad, xt.grad.numpy())


@pytest.mark.parametrize("type_name,params,match", [
    ("TripletLoss", "metric_loss_param { alpha: 1 }", r"metric_loss_param\.alpha is not a parameter of TripletLoss"),
    ("TripletLoss", 'metric_loss_param { mining: "hardest" }', "mining must be one of"),
    ("NCALoss", 'metric_loss_param { objective: "sum" }', "objective must be one of"),
    ("ContrastiveLoss", "contrastive_loss_param { margin: 2 }", "three-bottom"),
])
def test_bad_metric_loss_param_is_a_net_error_naming_the_layer(type_name, params, match):
    with pytest.raises(NetError, match=match) as info:
        metric_net(type_name, 6, 4, params)
    assert "'loss'" in str(info.value)


@pytest.mark.parametrize("shapes,match", [
    ([(1, 4, 1, 1), (1,)], "N >= 2"), ([(6, 4, 2, 2), (6,)], r"\(N, D\)"), ([(6, 4), (5,)], "labels"),
])
def test_bad_bottom_shapes_are_net_errors(shapes, match):
    from rll_repro.caffe import caffe_pb2
    from rll_repro.layers import layer_class
    from rll_repro.layers.base import BuildContext

    lp = caffe_pb2.LayerParameter(name="loss", type="MultiSimilarityLoss", bottom=["x", "y"], top=["loss"])
    with pytest.raises(NetError, match=match):
        layer_class("MultiSimilarityLoss")(lp, shapes, BuildContext())


def test_labels_get_no_gradient():
    from rll_repro.caffe import caffe_pb2
    from rll_repro.layers import layer_class
    from rll_repro.layers.base import BuildContext

    lp = caffe_pb2.LayerParameter(name="loss", type="NCALoss", bottom=["x", "y"], top=["loss"])
    lp.propagate_down.extend([True, True])
    with pytest.raises(NetError, match="propagate_down"):
        layer_class("NCALoss")(lp, [(6, 4), (6,)], BuildContext())


def bvlc_loop(a, b, sim, margin, legacy):
    """BVLC ContrastiveLossLayer: value 1/(2N) sum ... and its Backward_cpu, pair by pair (float64)."""
    n = len(a)
    value, ga = 0.0, np.zeros_like(a)
    for i in range(n):
        diff = a[i] - b[i]
        dsq = float(diff @ diff)
        if int(sim[i]):
            value += dsq
            ga[i] = diff / n
        else:
            dist = math.sqrt(dsq)
            mdist = margin - dsq if legacy else margin - dist
            value += max(mdist, 0.0) if legacy else max(mdist, 0.0) ** 2
            beta = -1.0 / n if legacy else -mdist / (dist + 1e-4) / n
            ga[i] = beta * diff if mdist > 0 else 0.0
    return value / n / 2, ga


@pytest.mark.parametrize("legacy", [False, True])
def test_three_bottom_contrastive_loss_is_bvlc_caffes_layer(legacy):
    """type "ContrastiveLoss" with bottoms (a, b, sim) keeps BVLC's meaning (siamese nets), its
    d + 1e-4 in the dissimilar gradient included; 1e-6 relative: float32 vs float64 loop."""
    n, c = 10, 3
    rng = np.random.RandomState(0)
    a, b = rng.randn(n, c).astype(np.float32) * 0.4, rng.randn(n, c).astype(np.float32) * 0.4
    sim = (np.arange(n) % 2).astype(np.float32)
    text = ("force_backward: true\n"
            + "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ dim: {n} dim: {dd} '
                      f'dim: 1 dim: 1 }} }} }}\n' for k, dd in (("a", c), ("b", c), ("sim", 1)))
            + 'layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" '
            + f'contrastive_loss_param {{ margin: 1.0 legacy_version: {str(legacy).lower()} }} }}\n')
    net = Net(parse_net_text(text), phase="train")
    net.keep_blob_diffs = True
    for k, v in (("a", a), ("b", b), ("sim", sim)):
        net.blobs[k].data[...] = v.reshape(net.blobs[k].data.shape)
    value = float(net.forward_backward())
    v_ref, ga_ref = bvlc_loop(a.astype(np.float64), b.astype(np.float64), sim, 1.0, legacy)
    assert value == pytest.approx(v_ref, rel=1e-6)
    assert rel(net.blobs["a"].diff.reshape(n, c), ga_ref) <= 1e-6
    assert rel(net.blobs["b"].diff.reshape(n, c), -ga_ref) <= 1e-6


# ---------------------------------------------------------------- input rules and devices

@pytest.mark.parametrize("loss_class", BASELINE_LOSSES, ids=lambda c: c.__name__)
def test_bad_input_is_a_data_error_naming_the_loss(loss_class):
    loss = loss_class()
    with pytest.raises(DataError, match=loss_class.__name__):
        loss(torch.randn(1, 4), torch.zeros(1))
    with pytest.raises(DataError, match="NaN"):
        loss(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), torch.zeros(2))
    with pytest.raises(DataError, match="labels"):
        loss(torch.randn(4, 3), torch.zeros(3))


@pytest.mark.parametrize("loss_class", BASELINE_LOSSES, ids=lambda c: c.__name__)
def test_runs_on_the_meta_device_without_host_reads_in_the_layer_path(loss_class):
    """Every tensor is created on the embeddings' device, and the per-batch path (what the Caffe
    layer calls) reads nothing back to the host: the meta device raises on either."""
    loss = loss_class().to("meta") if loss_class is MarginLoss else loss_class()
    x = torch.randn(16, 8, device="meta", requires_grad=True)
    y = torch.arange(16, device="meta") // 4
    value = loss.compute(loss.prepare(x, y, check=False))
    value.backward()
    assert value.device.type == "meta" and x.grad.shape == x.shape


@pytest.mark.parametrize("loss_class", BASELINE_LOSSES, ids=lambda c: c.__name__)
def test_labels_on_another_device_dtype_and_shape_are_accepted(loss_class):
    x, y = make_batch("random", 12, 5, seed=1)
    ref = float((MarginLoss(seed=1) if loss_class is MarginLoss else loss_class())(x, y))
    again = float((MarginLoss(seed=1) if loss_class is MarginLoss else loss_class())(x.reshape(12, 5, 1, 1),
                                                                                       y.double().reshape(12, 1, 1, 1)))
    assert again == ref


def test_margin_layer_with_learn_beta_has_beta_as_its_blob_and_learns_it():
    x, y = make_batch("random", 12, 6, seed=3)
    net = metric_net("MarginLoss", 12, 6, "metric_loss_param { learn_beta: true num_classes: 4 seed: 2 nu: 0.1 }")
    assert [tuple(p.data.shape) for p in net.params["loss"]] == [(4,)]
    assert np.allclose(net.params["loss"][0].data, np.float32(1.2))
    net.clear_param_diffs()
    value, _ = net_value_and_grad(net, x.float().numpy(), (y % 4).float().numpy())
    loss = MarginLoss(learn_beta=True, num_classes=4, seed=2, nu=float(np.float32(0.1)))
    v = loss(x.float(), (y % 4).float())
    v.backward()
    assert value == float(v.detach())
    assert np.array_equal(net.params["loss"][0].diff, loss.beta.grad.numpy())
