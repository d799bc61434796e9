"""sslfast.metrics against the papers' reference formulas, on random embeddings."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sslfast import metrics
from sslfast.metrics import knn as knn_module

seeds = st.integers(0, 2**31 - 1)


def _randn(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# RankMe -----------------------------------------------------------------------------------------

def _rankme_formula(z, eps=1e-7):
    s = torch.linalg.svd(z.double(), full_matrices=False).S  # a different LAPACK driver than svdvals
    p = s / s.sum() + eps
    return math.exp(-float((p * torch.log(p)).sum()))


@given(n=st.integers(2, 60), d=st.integers(1, 40), seed=seeds)
def test_rankme_matches_formula_and_bounds(n, d, seed):
    z = _randn(n, d, seed=seed, dtype=torch.float32)
    got = metrics.rankme(z)
    assert got == pytest.approx(_rankme_formula(z), rel=1e-9)
    assert 1.0 - 1e-4 < got <= min(n, d) * (1 + 1e-4)


def test_rankme_is_rotation_invariant_and_sees_low_rank():
    z = _randn(300, 24, seed=1)
    q, _ = torch.linalg.qr(_randn(24, 24, seed=2))
    assert metrics.rankme(z @ q) == pytest.approx(metrics.rankme(z), rel=1e-9)
    low_rank = _randn(300, 3, seed=3) @ _randn(3, 24, seed=4)
    assert metrics.rankme(low_rank) < 3.05


# alignment, uniformity, std ---------------------------------------------------------------------

def _uniformity_official(x, t=2.0):  # github.com/SsnL/align_uniform
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


@given(n=st.integers(2, 70), d=st.integers(1, 12), t=st.floats(0.1, 5.0), seed=seeds)
def test_uniformity_matches_pdist_form_value_and_gradient(n, d, t, seed):
    x = _randn(n, d, seed=seed).requires_grad_()
    got = metrics.uniformity(x, t=t)
    want = _uniformity_official(F.normalize(x, dim=1), t=t)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    g_got, = torch.autograd.grad(got * 1.7, x)
    g_want, = torch.autograd.grad(want * 1.7, x)
    torch.testing.assert_close(g_got, g_want, rtol=1e-7, atol=1e-9)


def test_uniformity_chunking_does_not_change_the_value(monkeypatch):
    x = _randn(97, 5, seed=7)
    whole = metrics.uniformity(x)
    monkeypatch.setattr("sslfast.metrics.geometry._BLOCK_ELEMENTS", 97 * 4)  # blocks of 4 rows
    torch.testing.assert_close(metrics.uniformity(x), whole, rtol=1e-12, atol=1e-12)


@given(n=st.integers(1, 50), d=st.integers(1, 12), alpha=st.floats(0.5, 3.0), seed=seeds)
def test_alignment_matches_official_form(n, d, alpha, seed):
    x, y = _randn(n, d, seed=seed), _randn(n, d, seed=seed + 1)
    want = (F.normalize(x, dim=1) - F.normalize(y, dim=1)).norm(p=2, dim=1).pow(alpha).mean()
    torch.testing.assert_close(metrics.alignment(x, y, alpha=alpha), want)


def test_embedding_std_healthy_and_collapsed():
    z = _randn(20000, 32, seed=5)
    assert metrics.embedding_std(z) == pytest.approx(1 / math.sqrt(32), rel=0.02)
    collapsed = _randn(1, 32, seed=6).repeat(64, 1) + 1e-6 * _randn(64, 32, seed=8)
    assert float(metrics.embedding_std(collapsed)) < 1e-5


# kNN --------------------------------------------------------------------------------------------

def _knn_dino(train, train_labels, test, k, T, num_classes):
    """DINO's eval_knn.knn_classifier (one-hot votes), the form the papers report."""
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    sim, idx = (test @ train.T).topk(k, dim=1)
    one_hot = F.one_hot(train_labels[idx], num_classes).to(sim.dtype)
    return (one_hot * (sim / T).exp()[..., None]).sum(1)


@given(n_train=st.integers(1, 80), n_test=st.integers(1, 30), d=st.integers(1, 10), k=st.integers(1, 100),
       classes=st.integers(1, 6), chunk=st.integers(1, 13), seed=seeds)
def test_knn_scores_match_one_hot_form(n_train, n_test, d, k, classes, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    train, test = torch.randn(n_train, d, generator=g), torch.randn(n_test, d, generator=g)
    labels = torch.randint(0, classes, (n_train,), generator=g)
    knn = metrics.WeightedKNNClassifier(k=k, temperature=0.5, chunk_size=chunk)
    half = n_train // 2
    knn.update(train[:half], labels[:half]).update(train[half:], labels[half:])
    want = _knn_dino(train, labels, test, min(k, n_train), 0.5, int(labels.max()) + 1)
    torch.testing.assert_close(knn.class_scores(test), want, rtol=1e-5, atol=1e-5)


def test_knn_accuracy_separates_clusters_and_chance():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 32, generator=g)
    labels = torch.randint(0, 10, (2000,), generator=g)
    feats = centres[labels] + 0.5 * torch.randn(2000, 32, generator=g)
    acc = metrics.knn_accuracy(feats[:1500], labels[:1500], feats[1500:], labels[1500:])
    assert acc["top1"] > 0.95 and acc["top5"] >= acc["top1"]
    noise = torch.randn(2000, 32, generator=g)
    chance = metrics.knn_accuracy(noise[:1500], labels[:1500], noise[1500:], labels[1500:])["top1"]
    assert chance < 0.2


# bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: metrics.rankme(torch.randn(1, 4)), "at least 2"),
    (lambda: metrics.rankme(torch.randn(8)), "2-D"),
    (lambda: metrics.rankme(torch.zeros(4, 4)), "all zeros"),
    (lambda: metrics.rankme(torch.randint(0, 3, (4, 4))), "floating"),
    (lambda: metrics.uniformity(torch.randn(1, 4)), "at least 2"),
    (lambda: metrics.uniformity(torch.randn(4, 4), t=0), "t must be"),
    (lambda: metrics.alignment(torch.randn(4, 4), torch.randn(5, 4)), "same shape"),
    (lambda: metrics.embedding_std(torch.tensor([[float("nan"), 1.0], [0.0, 1.0]])), "NaN"),
    (lambda: metrics.WeightedKNNClassifier(k=0), "k must be"),
    (lambda: metrics.WeightedKNNClassifier(temperature=-1), "temperature"),
    (lambda: metrics.WeightedKNNClassifier().predict(torch.randn(3, 4)), "bank is empty"),
    (lambda: metrics.WeightedKNNClassifier().update(torch.randn(3, 4), torch.tensor([0, 1])), r"shape \(3,\)"),
    (lambda: metrics.WeightedKNNClassifier().update(torch.randn(3, 4), torch.rand(3)), "integer"),
    (lambda: metrics.WeightedKNNClassifier().update(torch.randn(3, 4), torch.tensor([0, -1, 2])), ">= 0"),
    (lambda: metrics.WeightedKNNClassifier().update(torch.randn(3, 4), torch.arange(3)).predict(torch.randn(2, 5)),
     "D = 4"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        call()


def test_module_exports():
    assert set(metrics.__all__) >= {"rankme", "alignment", "uniformity", "embedding_std", "WeightedKNNClassifier"}
    assert knn_module.WeightedKNNClassifier is metrics.WeightedKNNClassifier
