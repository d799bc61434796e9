"""LARS, parameter groups and learning-rate schedules."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sslfast.train.optim import LARS, LRSchedule, build_optimizer, parameter_groups


def _naive_lars(params, grads, buffers, *, lr, momentum, weight_decay, eta, adapt):
    """Barlow Twins' LARS step written out for one tensor at a time, in float64."""
    out = []
    for p, g, buf, a in zip(params, grads, buffers, adapt):
        d = g + weight_decay * p if a else g.clone()
        if a:
            pn, dn = p.norm(), d.norm()
            if pn > 0 and dn > 0:
                d = d * (eta * pn / dn)
        buf.mul_(momentum).add_(d)
        out.append(p - lr * buf)
    return out


def test_lars_matches_the_official_update_over_several_steps():
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    model = torch.nn.ParameterList(params)
    opt = LARS(parameter_groups([model], weight_decay=0.01), lr=0.3, momentum=0.9, weight_decay=0.01, eta=0.02)
    expected = [p.detach().clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    adapt = [p.ndim > 1 for p in params]  # 1-D tensors: no decay, no adaptation
    for _ in range(3):
        grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()
        expected = _naive_lars(expected, grads, buffers, lr=0.3, momentum=0.9, weight_decay=0.01, eta=0.02,
                               adapt=adapt)
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)


def test_lars_leaves_zero_tensors_unscaled_and_skips_missing_grads():
    w = torch.nn.Parameter(torch.zeros(4, 3))
    idle = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([w, idle], lr=0.5, momentum=0.0, weight_decay=0.0, eta=0.001)
    w.grad = torch.full((4, 3), 2.0)
    opt.step()  # ||w|| = 0: the trust ratio is 1, a plain SGD step
    assert torch.equal(w.detach(), torch.full((4, 3), -1.0))
    assert torch.equal(idle.detach(), torch.ones(2, 2))


def test_parameter_groups_split_weights_from_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2, bias=False))
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    groups = parameter_groups([net, net, frozen], weight_decay=0.1)
    decayed, plain = groups
    assert [tuple(p.shape) for p in decayed["params"]] == [(3, 4), (2, 3)]
    assert sorted(tuple(p.shape) for p in plain["params"]) == [(3,), (3,), (3,)]
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0 and not plain["lars_adaptation"]


@pytest.mark.parametrize("name", ["lars", "adamw", "sgd"])
def test_build_optimizer_steps_every_group(name):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.BatchNorm1d(3))
    opt = build_optimizer(name, parameter_groups([net], 1e-4), lr=0.1, weight_decay=1e-4)
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    assert all(g["base_lr"] == 0.1 for g in opt.param_groups)


def test_build_optimizer_rejects_bad_input():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("adam", [], lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        build_optimizer("sgd", [], lr=0.0, weight_decay=0.0)


@given(total=st.integers(2, 500), warmup_fraction=st.floats(0, 0.5), floor=st.floats(0, 0.5))
def test_cosine_schedule_shape(total, warmup_fraction, floor):
    warmup = int(warmup_fraction * total)
    s = LRSchedule("cosine", total, warmup, final_lr_ratio=floor)
    values = [s(t) for t in range(total)]
    if warmup:
        assert values[0] == pytest.approx(1 / warmup) and values[warmup - 1] == pytest.approx(1.0)
        assert all(a < b for a, b in zip(values[:warmup - 1], values[1:warmup]))
    assert values[warmup] == pytest.approx(1.0)
    after = values[warmup:]
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:]))
    if total - warmup > 1:
        assert values[-1] == pytest.approx(floor)


@pytest.mark.parametrize("shape,expected_mid", [("1-sqrt", 1 - math.sqrt(0.5)), ("linear", 0.5), ("cosine", 0.5)])
def test_infinite_schedule_plateau_then_cooldown(shape, expected_mid):
    s = LRSchedule("infinite", total_steps=100, warmup_steps=10, cooldown_fraction=0.2, cooldown_shape=shape)
    assert [s(t) for t in range(10)] == pytest.approx([(t + 1) / 10 for t in range(10)])
    assert all(s(t) == 1.0 for t in range(10, 80))
    assert s(89) == pytest.approx(expected_mid)  # half-way through the 20 cooldown steps
    assert s(99) == pytest.approx(0.0)
    cooldown = [s(t) for t in range(80, 100)]
    assert all(a > b for a, b in zip(cooldown, cooldown[1:]))


def test_schedule_apply_scales_each_group_base_lr():
    net = torch.nn.Linear(2, 2)
    opt = build_optimizer("sgd", parameter_groups([net], 0.0), lr=0.4, weight_decay=0.0)
    s = LRSchedule("constant", 10, warmup_steps=4)
    assert s.apply(opt, 1) == pytest.approx(0.2)
    assert all(g["lr"] == pytest.approx(0.2) for g in opt.param_groups)


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="schedule must be one of"):
        LRSchedule("step", 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        LRSchedule("cosine", 0)
    with pytest.raises(ValueError, match="cooldown_fraction must be in"):
        LRSchedule("infinite", 10, cooldown_fraction=1.5)
    with pytest.raises(ValueError, match="cooldown_shape must be one of"):
        LRSchedule("infinite", 10, cooldown_shape="exp")
