"""SSL methods: heads, branches, the loss each one calls, momentum updates.

The losses themselves are tested against their references in the loss tests; here each method
must hand them the right embeddings. Tests of a method skip while its loss is not in
sslfast.losses (the losses are developed in parallel and merged separately).
"""
import pytest
import torch
import torch.nn as nn

import sslfast.losses as L
from sslfast.train.methods import METHOD_CLASSES, METHODS, build_method


def needs(*names):
    missing = [n for n in names if not hasattr(L, n)]
    return pytest.mark.skipif(bool(missing), reason=f"sslfast.losses lacks {missing} in this checkout")


class TinyBackbone(nn.Module):
    """conv + pool: cheap, with BatchNorm like the real backbones."""

    def __init__(self, dim=12):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def _views(n=6, count=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 8, 8, generator=g) for _ in range(count)]


def _method(name, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("hidden_dim", 16)
    kwargs.setdefault("output_dim", 8)
    return build_method(name, TinyBackbone(), 12, **kwargs)


def _step(method, views, index):
    context = method.prepare(views, index)
    loss, z = method("step", context)
    return loss, z, context


@needs("NTXentLoss")
def test_simclr_feeds_both_views_to_nt_xent():
    method = _method("simclr", options={"temperature": 0.3})
    views = _views()
    loss, z, _ = _step(method, views, torch.arange(6))
    expected = L.NTXentLoss(temperature=0.3)(method.online(views[0]), method.online(views[1]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)


@needs("NTXentLoss")
def test_simclr_takes_more_views_and_official_head_sizes():
    method = build_method("simclr", TinyBackbone(), 12, views=3)
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(12, 12), (12, 128)]
    loss, z, _ = _step(method, _views(count=3), torch.arange(6))
    assert len(z) == 3 and loss.ndim == 0
    with pytest.raises(ValueError, match="takes 2 views"):
        build_method("barlowtwins", TinyBackbone(), 12, views=3) if hasattr(L, "BarlowTwinsLoss") else \
            build_method("dcl", TinyBackbone(), 12, views=3)


@needs("ISogCLRLoss")
def test_isogclr_passes_the_dataset_indices():
    method = _method("isogclr", num_samples=50)
    index = torch.tensor([3, 17, 8, 40, 41, 0])
    loss, _, _ = _step(method, _views(), index)
    loss.backward()
    tau = method.loss_fn.tau
    assert (tau[index] != tau[1]).all() and (tau[torch.tensor([1, 2, 49])] == tau[1]).all()
    with pytest.raises(ValueError, match="num_samples"):
        _method("isogclr")


@needs("MoCoLoss")
def test_moco_keys_come_from_the_momentum_encoder_and_ema_follows():
    method = _method("moco", options={"ema_momentum": 0.9, "queue_size": 32, "bn_splits": 2})
    assert all(not p.requires_grad for p in method.key_backbone.parameters())
    views = _views(n=8)
    context = method.prepare(views, torch.arange(8))
    assert [b for b, _ in context.inputs] == ["online"]
    method.key_backbone.eval(), method.key_projector.eval()
    keys_eval = method.key_projector(method.key_backbone(views[1]))
    method.key_backbone.train(), method.key_projector.train()
    # shuffled split BN changes the statistics, not which sample each key belongs to
    assert torch.nn.functional.cosine_similarity(context.extras["keys"], keys_eval).mean() > 0.5
    loss, z = method("step", context)
    loss.backward()
    online_before = [p.detach().clone() for p in method.backbone.parameters()]
    key_before = [p.detach().clone() for p in method.key_backbone.parameters()]
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(torch.randn_like(p))
    method.after_step(0, 10)
    for k0, k1, online in zip(key_before, method.key_backbone.parameters(), method.backbone.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * online.detach())
    assert int(method.loss_fn.queue.bank_ptr) == 8  # the keys were enqueued
    del online_before


@needs("CLIPLoss")
def test_clip_uses_two_independent_towers():
    method = _method("clip", hidden_dim=None)
    p1, p2 = method.backbone.net[0].weight, method.second_backbone.net[0].weight
    assert p1.shape == p2.shape and not torch.equal(p1, p2)
    views = _views()
    loss, z, context = _step(method, views, torch.arange(6))
    assert [b for b, _ in context.inputs] == ["online", "second"]
    expected = method.loss_fn(method.online(views[0]), method.second(views[1]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert method.loss_fn.logit_scale.grad is not None and method.second_backbone.net[0].weight.grad is not None
    with pytest.raises(ValueError, match="proj_hidden_dim does not apply"):
        _method("clip", hidden_dim=16)


@needs("BarlowTwinsLoss", "VICRegLoss")
@pytest.mark.parametrize("name,loss_name", [("barlowtwins", "BarlowTwinsLoss"), ("vicreg", "VICRegLoss")])
def test_cross_correlation_methods(name, loss_name):
    method = _method(name, options={"lambda_param": 0.01} if name == "barlowtwins" else {})
    views = _views(n=10)
    loss, _, _ = _step(method, views, torch.arange(10))
    expected = getattr(L, loss_name)(**({"lambda_param": 0.01} if name == "barlowtwins" else {}))(
        method.online(views[0]), method.online(views[1]))
    torch.testing.assert_close(loss, expected)
    assert METHOD_CLASSES[name].recipe == "barlowtwins"


@needs("MixedBarlowTwinsLoss")
def test_mixed_barlow_twins_encodes_the_mixed_views():
    method = _method("mixed-barlowtwins")
    views = _views(n=10)
    torch.manual_seed(5)
    context = method.prepare(views, torch.arange(10))
    perm, alpha = context.extras["perm"], context.extras["alpha"]
    mixed = context.inputs[2][1]
    torch.testing.assert_close(mixed, alpha * views[0] + (1 - alpha) * views[1][perm])
    loss, z = method("step", context)
    assert len(z) == 3
    expected = L.MixedBarlowTwinsLoss()(method.online(views[0]), method.online(views[1]), method.online(mixed),
                                        perm, alpha)
    torch.testing.assert_close(loss, expected)


def test_unknown_method_and_options_are_named():
    with pytest.raises(ValueError, match="method must be one of"):
        build_method("byol", TinyBackbone(), 12)
    if hasattr(L, "NTXentLoss"):
        with pytest.raises(ValueError, match=r"does not take option\(s\) \['lambda_param'\]"):
            _method("simclr", options={"lambda_param": 1.0})
    with pytest.raises(ValueError, match="task must be"):
        METHOD_CLASSES["simclr"].forward(None, "train")
    assert set(METHODS) == set(METHOD_CLASSES)
