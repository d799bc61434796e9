"""Backbones, heads, checkpoint files, RNG capture and stop signals."""
import os
import random
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslfast.train import checkpoint as ckpt
from sslfast.train.models import VisionTransformer, attention, build_backbone, mlp


@pytest.mark.parametrize("stem,size", [("cifar", 16), ("imagenet", 32)])
def test_resnet_backbones_return_features(stem, size):
    net, dim = build_backbone("resnet18", image_size=size, stem=stem)
    assert dim == 512 and isinstance(net.fc, torch.nn.Identity)
    assert (net.maxpool.__class__ is torch.nn.Identity) == (stem == "cifar")
    out = net(torch.randn(3, 3, size, size))
    assert out.shape == (3, 512) and torch.isfinite(out).all()


def test_attention_fallback_is_softmax_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    torch.testing.assert_close(attention(q, k, v), expected)


def test_vit_features_and_position_interpolation():
    torch.manual_seed(0)
    vit, dim = build_backbone("vit-tiny", image_size=32)
    assert dim == 192 and vit.patch_size == 8 and vit.pos_embed.shape == (1, 17, 192)
    x = torch.randn(2, 3, 32, 32)
    out = vit(x)
    assert out.shape == (2, 192)
    # each image is embedded on its own (no batch statistics): batch order does not matter
    torch.testing.assert_close(vit(x.flip(0)), out.flip(0), rtol=1e-5, atol=1e-5)
    assert vit(torch.randn(1, 3, 48, 40)).shape == (1, 192)  # 6x5 patches: interpolated positions
    with pytest.raises(ValueError, match="multiple of the patch size"):
        vit(torch.randn(1, 3, 30, 32))


def test_vit_rejects_bad_geometry():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionTransformer(30, 8, 64, 1, 4)
    with pytest.raises(ValueError, match="divisible by heads"):
        VisionTransformer(32, 8, 66, 1, 4)


def test_build_backbone_rejects_unknown_names():
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_backbone("resnet19")
    with pytest.raises(ValueError, match="stem must be one of"):
        build_backbone("resnet18", stem="tiny")


def test_mlp_follows_the_official_projectors():
    barlow = mlp([16, 32, 32, 8], last_bias=False)
    linears = [m for m in barlow if isinstance(m, torch.nn.Linear)]
    assert [l.bias is None for l in linears] == [True, True, True]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in barlow) == 2
    vicreg = mlp([16, 32, 32, 8], hidden_bias=True, last_bias=False)
    assert [l.bias is not None for l in vicreg if isinstance(l, torch.nn.Linear)] == [True, True, False]
    moco = mlp([16, 32, 8], batch_norm=False)
    assert [l.bias is not None for l in moco if isinstance(l, torch.nn.Linear)] == [True, True]
    with pytest.raises(ValueError, match="at least an input and an output"):
        mlp([4])


def test_save_atomic_round_trip_and_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "last.pt")
    state = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "w": torch.randn(5)}
    ckpt.save_atomic(state, path)
    assert torch.equal(ckpt.load(path)["w"], state["w"])

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_atomic({"format": ckpt.FORMAT, "bad": Unpicklable()}, path)
    assert torch.equal(ckpt.load(path)["w"], state["w"])
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary left behind


def test_load_rejects_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load(str(tmp_path / "missing.pt"))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an sslfast pretraining checkpoint"):
        ckpt.load(str(tmp_path / "other.pt"))
    (tmp_path / "torn.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(RuntimeError, match="could not be read"):
        ckpt.load(str(tmp_path / "torn.pt"))


def test_rng_state_restores_every_generator():
    ckpt.seed_everything(11)
    state = ckpt.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.seed_everything(99)
    ckpt.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_stop_request_turns_signals_into_a_flag():
    previous = signal.getsignal(signal.SIGTERM)
    with ckpt.StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is previous
