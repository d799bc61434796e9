"""The pretraining loop end to end on tiny built-in data: logs, checkpoints, exact resume after
SIGTERM, a diverging loss, bad input, and two gloo processes under torchrun.

Every run here is a few steps of a ResNet-18 (or ViT-tiny) on 16 px images; they share one
synthetic set generated in a temporary cache folder.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import sslfast.losses as L
from sslfast.train.config import PretrainConfig

try:
    from sslfast.data import DaliSSLLoader  # noqa: F401
    HAVE_LOADER = True
except ImportError:
    HAVE_LOADER = False

pytestmark = pytest.mark.skipif(not (HAVE_LOADER and hasattr(L, "NTXentLoss")),
                                reason="needs sslfast.data.DaliSSLLoader and sslfast.losses.NTXentLoss")



def tiny(*extra, batch=4, hidden=32):
    """Options of a tiny run: 40 training images of 16 px, batch 4: 10 steps per epoch."""
    args = ["--synthetic-image-size", "16", "--synthetic-train-per-class", "4", "--synthetic-val-per-class", "1",
            "--crop-size", "16", "--batch", str(batch), "--num-workers", "1", "--knn-k", "5",
            "--proj-output-dim", "16", "--no-progress", "--log-every", "1", "--seed", "7"]
    if hidden:
        args += ["--proj-hidden-dim", str(hidden)]
    return args + list(extra)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder for the synthetic set, and one thread per process: `pytest -n 2`
    on 2 cores with torch's default of one thread per core would oversubscribe them, and
    OpenMP threads that wait for a core slow small models down many times over."""
    folder = tmp_path_factory.mktemp("cache")
    saved = {k: os.environ.get(k) for k in ("SSLFAST_CACHE_DIR", "OMP_NUM_THREADS")}
    os.environ.update(SSLFAST_CACHE_DIR=str(folder), OMP_NUM_THREADS="1")  # children inherit them
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield folder
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _config(tmp, **overrides):
    from sslfast.cli import build_parser

    args = build_parser().parse_args(["pretrain", *tiny()])
    values = {k: v for k, v in vars(args).items() if k in PretrainConfig.__dataclass_fields__}
    values.update(out=str(tmp), **overrides)
    return PretrainConfig(**values)


@pytest.fixture(scope="module")
def tiny_run(cache, tmp_path_factory):
    """One finished 2-epoch run (20 steps), shared by the tests that only read its outputs."""
    from sslfast.train.trainer import pretrain

    out = tmp_path_factory.mktemp("run")
    messages = []
    result = pretrain(_config(out, epochs=2), log=messages.append)
    return out, result, "\n".join(messages)


def test_a_run_writes_its_logs_checkpoint_and_encoder(tiny_run):
    import csv

    from sslfast.train import checkpoint as ckpt
    from sslfast.train.models import build_backbone

    out, result, messages = tiny_run
    assert result.step == 20 and result.interrupted is None
    for name in ("config.json", "epochs.csv", "steps.csv", "curves.png", "last.pt", "encoder.pt"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "epochs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["epoch"]) for r in rows] == [0.0, 1.0, 2.0] and [int(r["step"]) for r in rows] == [0, 10, 20]
    for r in rows:
        assert 0.0 <= float(r["knn_top1"]) <= 1.0 and float(r["rankme"]) >= 1.0
    assert all(float(r["uniformity"]) < 0 and 0 <= float(r["alignment"]) <= 4 for r in rows[1:])
    with open(out / "steps.csv") as fh:
        steps = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in steps] == list(range(1, 21)) and all(float(r["loss"]) > 0 for r in steps)
    state = ckpt.load(str(out / "last.pt"))
    assert state["step"] == 20 and state["loader"]["epoch"] in (1, 2)
    backbone, _ = build_backbone("resnet18", image_size=16, stem="cifar")
    backbone.load_state_dict(torch.load(out / "encoder.pt"))
    assert "before training (random init): k-NN top-1" in messages
    assert "k-NN top-1 on the held-out split:" in messages and "(random init) ->" in messages
    assert result.initial_metrics["knn_top1"] == pytest.approx(float(rows[0]["knn_top1"]))


def test_knn_command_scores_a_checkpoint(tiny_run, capsys):
    from sslfast import cli

    out, result, _ = tiny_run
    assert cli.main(["knn", str(out), "--k", "5"]) == 0
    values = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert int(values["step"]) == 20 and int(values["bank"]) == 40 and int(values["queries"]) == 10
    assert float(values["knn_top1"]) == pytest.approx(result.final_metrics["knn_top1"], abs=1e-6)


def _wait_for_step(path, step, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}: {proc.stdout.read()}")
        try:
            with open(path) as fh:
                lines = fh.read().strip().splitlines()
            if len(lines) > 1 and int(lines[-1].split(",")[0]) >= step:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    pytest.fail(f"no step {step} within {timeout} s")


def test_sigterm_mid_epoch_then_resume_gives_the_same_weights_bitwise(cache, tmp_path):
    """A real `sslfast pretrain` process gets SIGTERM mid-epoch, writes its checkpoint and exits
    143; resuming it gives, bit for bit, the weights and optimizer state of a run that was never
    interrupted."""
    from sslfast.train import checkpoint as ckpt
    from sslfast.train.trainer import pretrain

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = tiny("--epochs", "1", "--knn-every", "2")
    proc = subprocess.Popen([sys.executable, "-m", "sslfast.cli", "pretrain", *args, "--out", str(killed)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_step(killed / "steps.csv", 2, proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM: stopped after step" in output
    partial = ckpt.load(str(killed / "last.pt"))
    assert 2 <= partial["step"] < 10 and partial["loader"]["batches_done"] == partial["step"]  # mid-epoch

    config = _config(straight, epochs=1, knn_every=2)
    pretrain(config, log=lambda m: None)
    messages = []
    pretrain(PretrainConfig.from_dict(partial["config"]), resume=str(killed / "last.pt"), log=messages.append)
    assert f"resumed    from step {partial['step']}" in "\n".join(messages)
    a, b = ckpt.load(str(straight / "last.pt")), ckpt.load(str(killed / "last.pt"))
    assert a["step"] == b["step"] == 10
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    with open(killed / "steps.csv") as fh:  # the resumed run rewrote its log without duplicates
        assert [int(line.split(",")[0]) for line in fh.read().splitlines()[1:]] == list(range(1, 11))


@pytest.mark.skipif(not hasattr(L, "MoCoLoss"), reason="needs sslfast.losses.MoCoLoss")
def test_resume_restores_momentum_encoder_queue_and_schedule(cache, tmp_path):
    """MoCo carries the most state (momentum encoder, queue, its pointer, shuffled-BN draws):
    3 steps, then a resume to step 6 (mid-epoch both times), equals 6 steps in one go."""
    from sslfast.train import checkpoint as ckpt
    from sslfast.train.trainer import pretrain

    moco = dict(method="moco", queue_size=16, epochs=2, optimizer="lars", schedule="infinite", knn_every=5)
    pretrain(_config(tmp_path / "straight", max_steps=6, **moco), log=lambda m: None)
    pretrain(_config(tmp_path / "split", max_steps=3, **moco), log=lambda m: None)
    first = ckpt.load(str(tmp_path / "split" / "last.pt"))
    assert first["step"] == 3 and first["loader"]["batches_done"] == 3
    first["config"]["max_steps"] = 6
    pretrain(PretrainConfig.from_dict(first["config"]), resume=str(tmp_path / "split" / "last.pt"), log=lambda m: None)
    a, b = ckpt.load(str(tmp_path / "straight" / "last.pt")), ckpt.load(str(tmp_path / "split" / "last.pt"))
    assert a["step"] == b["step"] == 6 and int(b["model"]["loss_fn.queue.bank_ptr"]) == 6 * 4 % 16
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_compiled_run_writes_plain_parameter_names_and_resumes(cache, tmp_path):
    """--compile must not rename the parameters in the checkpoint (torch.compile's wrapper adds
    `_orig_mod.`), or the resumed run, built uncompiled before it compiles, cannot load them.
    No step runs here: compilation is lazy, so this costs no compile time."""
    from sslfast.train import checkpoint as ckpt
    from sslfast.train.trainer import Trainer

    first = Trainer(_config(tmp_path / "run", compile=True), log=lambda m: None)
    try:
        path = first.save_checkpoint(time.time())
    finally:
        first.loader.close()
    state = ckpt.load(path)
    assert not [k for k in state["model"] if "_orig_mod" in k]
    resumed = Trainer(PretrainConfig.from_dict(state["config"]), resume=path, log=lambda m: None)
    resumed.loader.close()
    for key, value in state["model"].items():
        assert torch.equal(resumed.method.state_dict()[key], value), key


def test_a_diverging_loss_stops_with_the_step_and_the_last_good_checkpoint(cache, tmp_path, monkeypatch):
    from sslfast.train import checkpoint as ckpt
    from sslfast.train.methods import SimCLR
    from sslfast.train.trainer import NonFiniteLossError, pretrain

    original = SimCLR.loss
    calls = []

    def loss_that_diverges_at_step_13(self, embeddings, context):
        calls.append(1)
        value = original(self, embeddings, context)
        return value * float("nan") if len(calls) == 14 else value

    monkeypatch.setattr(SimCLR, "loss", loss_that_diverges_at_step_13)
    with pytest.raises(NonFiniteLossError) as info:
        pretrain(_config(tmp_path, epochs=2))
    message = str(info.value)
    assert "at step 13 (epoch 2, batch 4)" in message and str(tmp_path / "last.pt") in message
    assert ckpt.load(str(tmp_path / "last.pt"))["step"] == 10  # the end of epoch 1, untouched


def test_view_recipe_applies_crop_scale_and_blur(tmp_path):
    from sslfast.data import get_recipe
    from sslfast.train.data import view_recipe

    small = view_recipe(_config(tmp_path, crop_size=32, crop_min_scale=0.3), "byol")
    assert [v.scale for v in small.views] == [(0.3, 1.0), (0.3, 1.0)]
    assert [v.blur_p for v in small.views] == [0.0, 0.0]  # no blur below 96 px by default
    large = view_recipe(_config(tmp_path, crop_size=224), "byol")
    assert large.views == get_recipe("byol").views  # the recipe as the loader defines it
    forced = view_recipe(_config(tmp_path, crop_size=32, blur=True), "byol")
    assert [v.blur_p for v in forced.views] == [v.blur_p for v in get_recipe("byol").views]


@pytest.mark.parametrize("overrides,error,match", [
    ({"method": "byol"}, ValueError, "method must be one of"),
    ({"backbone": "resnet101"}, ValueError, "backbone must be one of"),
    ({"data": "/no/such/folder"}, FileNotFoundError, "data: '/no/such/folder' is not a folder"),
    ({"batch": 1}, ValueError, "batch must be >= 2"),
    ({"effective_batch": 2, "batch": 4}, ValueError, r"effective_batch \(2\) must be >= batch x processes"),
    ({"batch": 64}, ValueError, "40 images"),
])
def test_bad_input_is_named(cache, tmp_path, overrides, error, match):
    from sslfast.train.trainer import pretrain

    with pytest.raises(error, match=match):
        pretrain(_config(tmp_path, **overrides))


@pytest.mark.skipif(not hasattr(L, "CLIPLoss"), reason="needs sslfast.losses.CLIPLoss")
def test_effective_batch_through_cached_embeddings_is_the_large_batch(cache, tmp_path):
    """--batch 3 --effective-batch 8 (chunks of 3, 3, 2) == --batch 8, on a model without batch
    statistics (ViT, CLIP's linear heads)."""
    from sslfast.train import checkpoint as ckpt
    from sslfast.train.trainer import pretrain

    # SGD: an update linear in the gradient, so rounding differences stay rounding-sized (Adam's
    # normalisation would blow up those of near-zero gradient entries)
    clip = dict(method="clip", backbone="vit-tiny", epochs=1, max_steps=2, proj_hidden_dim=None, optimizer="sgd")
    pretrain(_config(tmp_path / "large", batch=8, **clip), log=lambda m: None)
    messages = []
    pretrain(_config(tmp_path / "cached", batch=3, effective_batch=8, **clip), log=messages.append)
    assert "8 per step (1 process(es) x 8, in chunks of 3 through cached embeddings)" in "\n".join(messages)
    a, b = ckpt.load(str(tmp_path / "large" / "last.pt")), ckpt.load(str(tmp_path / "cached" / "last.pt"))
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.distributed
@pytest.mark.skipif(not hasattr(L, "CLIPLoss"), reason="needs sslfast.losses.CLIPLoss")
def test_two_gloo_processes_match_one_process_on_the_global_batch(cache, tmp_path):
    """torchrun with 2 CPU processes x 4 images (DDP), and 2 x 4 in chunks of 2 (cached
    embeddings, gradients averaged by hand), both == 1 process x 8 images: the loader shards the
    same global batch, CLIP's loss gathers it, the gradients are averaged over the ranks. The
    model has no batch statistics (ViT, linear heads), so the weights agree to rounding."""
    from sslfast.train import checkpoint as ckpt

    from sslfast.train.trainer import pretrain

    clip = ("--method", "clip", "--backbone", "vit-tiny", "--epochs", "1", "--max-steps", "3", "--optimizer", "sgd")
    pretrain(_config(tmp_path / "one", batch=8, method="clip", backbone="vit-tiny", epochs=1, max_steps=3,
                     optimizer="sgd", proj_hidden_dim=None), log=lambda m: None)
    reference = ckpt.load(str(tmp_path / "one" / "last.pt"))
    for name, extra, banner in (("ddp", ("--batch", "4"), "8 per step (2 process(es) x 4)"),
                                ("cached", ("--batch", "2", "--effective-batch", "8"),
                                 "8 per step (2 process(es) x 4, in chunks of 2 through cached embeddings)")):
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "-m", "sslfast.cli", "pretrain", *tiny(*clip, hidden=None), *extra,
                              "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        assert banner in run.stdout, run.stdout
        state = ckpt.load(str(tmp_path / name / "last.pt"))
        assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
        for key, value in reference["model"].items():
            torch.testing.assert_close(state["model"][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
