"""The `sslfast` command line: pretrain, knn, bench, preview-aug, info.

    sslfast pretrain                          # a short SimCLR run on the built-in data (CPU: minutes)
    sslfast pretrain --data ~/imagenet --method barlowtwins --backbone resnet50 --crop-size 224 \\
        --batch 256 --epochs 100 --optimizer lars --lr 0.2
    torchrun --nproc-per-node 8 -m sslfast.cli pretrain --config run.yaml
    sslfast pretrain --resume sslfast_runs/simclr-resnet18-20260101-120000
    sslfast knn sslfast_runs/simclr-resnet18-20260101-120000
    sslfast bench                             # every benchmarks/bench_*.py -> results, table, plots
    sslfast preview-aug photo.jpg --out grid.png
    sslfast info

Every `pretrain` option can also come from a YAML or JSON file (--config; keys are the option
names) and command-line options win over the file.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import MISSING, fields
from typing import List, Optional, Sequence

# Options grouped as in `sslfast pretrain --help`, each with its help text; the defaults and
# types come from PretrainConfig (one source of truth).
_GROUPS = {
    "data": (
        ("data", "ImageFolder root (class subfolders), or a folder with train/ and val/ ImageFolders "
                 "(default: the built-in synthetic set, generated once into ~/.cache/sslfast/datasets)"),
        ("val_data", "held-out ImageFolder for the k-NN monitor (default: <data>/val, else 10%% of --data)"),
        ("synthetic_image_size", "side of the built-in images in pixels"),
        ("synthetic_train_per_class", "built-in training images per class (10 classes)"),
        ("synthetic_val_per_class", "built-in held-out images per class"),
        ("crop_size", "side of the training views in pixels"),
        ("recipe", "augmentation recipe: simclr, byol or barlowtwins (default: the method's)"),
        ("crop_min_scale", "smallest random crop, as a fraction of the image area (default: the recipe's, 0.08)"),
        ("blur", "Gaussian blur of the recipe (default: on for crops of 96 px and more, off below)"),
        ("random_fields", "add random-field augmentation (sslfast.augment) to every view"),
        ("loader_device", "where images are decoded and augmented: gpu (DALI), cpu, auto"),
        ("loader_backend", "dali, torch (PIL + DataLoader fallback) or auto (DALI where installed)"),
        ("num_workers", "loader threads / worker processes"),
    ),
    "method and model": (
        ("method", "SSL method: simclr, dcl, dclw, isogclr, moco, barlowtwins, mixed-barlowtwins, vicreg, clip"),
        ("backbone", "resnet18, resnet34, resnet50, vit-tiny, vit-small, vit-base"),
        ("stem", "ResNet stem: imagenet (7x7/2 conv + max-pool), cifar (3x3/1 conv), auto (cifar at <= 32 px)"),
        ("proj_hidden_dim", "projector hidden width (default: the method's official size)"),
        ("proj_output_dim", "projector output width (default: the method's official size)"),
        ("temperature", "loss temperature (default: the method's)"),
        ("ema_momentum", "momentum of the key encoder (moco; default 0.99)"),
        ("queue_size", "negatives in the queue (moco; default 4096)"),
    ),
    "optimisation": (
        ("epochs", "passes over the training set"),
        ("batch", "images per process per forward/backward"),
        ("effective_batch", "images per optimizer step over all processes; above batch x processes the "
                            "step goes through cached embeddings (exact large-batch gradient)"),
        ("optimizer", "lars, adamw or sgd"),
        ("lr", "peak learning rate per 256 images (scaled by effective batch / 256)"),
        ("weight_decay", "weight decay (not on biases and norms)"),
        ("momentum", "momentum of lars and sgd"),
        ("schedule", "cosine (warmup + cosine), infinite (warmup + constant + cooldown), constant"),
        ("warmup_epochs", "linear warmup length in epochs"),
        ("final_lr_ratio", "final learning rate as a fraction of the peak"),
        ("cooldown_fraction", "share of the steps in the cooldown of the infinite schedule"),
        ("max_steps", "stop after this many optimizer steps (the schedule still spans --epochs)"),
    ),
    "execution": (
        ("device", "auto, cpu or cuda"),
        ("precision", "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32"),
        ("channels_last", "channels-last memory format for ResNets"),
        ("compile", "torch.compile the backbone"),
        ("backend", "sslfast kernel backend of the loss: auto, triton, cuda, reference"),
        ("seed", "seed of the initialisation, the data order and every augmentation"),
        ("deterministic", "torch.use_deterministic_algorithms (bitwise reproducible on GPU too, slower)"),
    ),
    "monitoring and output": (
        ("out", "run folder (default: sslfast_runs/<method>-<backbone>-<time>)"),
        ("knn_k", "neighbours of the k-NN monitor"),
        ("knn_temperature", "temperature of the k-NN monitor's vote weights"),
        ("knn_every", "evaluate the monitors every this many epochs"),
        ("knn_train_samples", "training images in the k-NN bank"),
        ("knn_val_samples", "held-out images scored by the k-NN monitor"),
        ("monitor_pairs", "training pairs kept for alignment, uniformity and embedding std"),
        ("log_every", "write a steps.csv row every this many steps"),
        ("progress", "show the progress bar"),
        ("tensorboard", "also log to TensorBoard when it is installed"),
    ),
}
# Options that may change when a run is resumed: they do not change the steps it takes.
RESUME_OVERRIDABLE = {"epochs", "max_steps", "progress", "tensorboard", "knn_every", "log_every", "num_workers",
                      "loader_device", "loader_backend"}


def _config_fields():
    from .train.config import PretrainConfig

    return {f.name: f for f in fields(PretrainConfig)}


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _value_type(f):
    default = _default(f)
    annotation = str(f.type)
    if isinstance(default, bool) or "bool" in annotation:
        return bool
    if "float" in annotation:
        return float
    if "int" in annotation:
        return int
    return str


def _add_pretrain_options(parser: argparse.ArgumentParser) -> None:
    config_fields = _config_fields()
    covered = set()
    for title, options in _GROUPS.items():
        group = parser.add_argument_group(title)
        for name, text in options:
            f = config_fields[name]
            covered.add(name)
            flag = "--" + name.replace("_", "-")
            default = _default(f)
            kind = _value_type(f)
            shown = "" if default is None else f" (default: {default})"
            if kind is bool:
                group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                   help=text + shown)
            else:
                metavar = {int: "N", float: "X"}.get(kind, "PATH" if name in ("data", "val_data", "out")
                                                     else name.upper())
                group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, metavar=metavar,
                                   help=text + shown)
    missing = set(config_fields) - covered - {"extra"}
    assert not missing, f"pretrain options without a command-line flag: {sorted(missing)}"
    run = parser.add_argument_group("run")
    run.add_argument("--config", metavar="FILE", help="YAML or JSON file of options (command-line options win)")
    run.add_argument("--method-option", dest="method_options", action="append", default=[], metavar="KEY=VALUE",
                     help="a method-specific setting, e.g. lambda_param=0.0051 (barlowtwins), rho=0.4 (isogclr), "
                          "sigma=0.5 (dclw), views=4 (simclr); repeatable")
    run.add_argument("--resume", metavar="RUN", help="continue a run from its folder or a checkpoint file; only "
                     + ", ".join(f"--{k.replace('_', '-')}" for k in sorted(RESUME_OVERRIDABLE)) + " may change")
    run.add_argument("--print-config", action="store_true", help="print the resolved configuration as JSON and exit")


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _method_options(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--method-option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_value(value.strip())
    return out


def _resolve_checkpoint(path: str, argument: str) -> str:
    """The checkpoint file that `argument` (the option's name, for the error) designates."""
    from .train.trainer import LAST

    if os.path.isdir(path):
        path = os.path.join(path, LAST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument}: no checkpoint at {path!r} (expected a run folder holding {LAST}, "
                                f"or a checkpoint file)")
    return path


def _pretrain(args: argparse.Namespace) -> int:
    from .train import checkpoint as ckpt
    from .train.config import PretrainConfig, read_config_file
    from .train.trainer import pretrain

    given = {k: v for k, v in vars(args).items() if k in _config_fields()}
    extra = _method_options(args.method_options)
    resume_state = None
    if args.resume:
        if args.config:
            raise ValueError("--resume takes the configuration of the run it continues: drop --config")
        resume_state = ckpt.load(_resolve_checkpoint(args.resume, "--resume"))
        values = dict(resume_state["config"], out=os.path.dirname(resume_state["path"]))
        changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDABLE and v != values.get(k))
        if changed or extra:
            names = [f"--{k.replace('_', '-')}" for k in changed] + (["--method-option"] if extra else [])
            raise ValueError(f"--resume continues the run with its own settings; these options would change "
                             f"it: {', '.join(names)}")
        values.update(given)
    else:
        values = read_config_file(args.config) if args.config else {}
        values.update(given)
        if extra:
            values["extra"] = {**values.get("extra", {}), **extra}
    config = PretrainConfig.from_dict(values)
    if args.print_config:
        print(json.dumps(config.validate().to_dict(), indent=1))
        return 0
    result = pretrain(config, resume=resume_state)
    if result.interrupted:
        return 128 + int(getattr(signal, result.interrupted, signal.SIGINT))
    return 0


def _knn(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(_resolve_checkpoint(args.checkpoint, "checkpoint"), data=args.data,
                                  val_data=args.val_data, k=args.k, temperature=args.temperature,
                                  batch_size=args.batch, device=args.device, train_samples=args.train_samples)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


def _bench(rest: List[str]) -> int:
    """Run benchmarks/run.py of the source checkout this sslfast is imported from."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runner = os.path.join(root, "benchmarks", "run.py")
    if not os.path.isfile(runner):
        raise FileNotFoundError(f"sslfast bench runs the benchmark scripts of a source checkout, and {runner} "
                                f"does not exist: clone the repository and pip install -e it")
    return subprocess.call([sys.executable, runner, *rest], cwd=root)


def _preview(rest: List[str]) -> int:
    try:
        from .augment.preview import main as preview_main
    except ImportError as exc:
        raise ImportError(f"preview-aug needs sslfast.augment.preview, which this installation lacks ({exc})") from exc
    return int(preview_main(rest) or 0)


def _info(args: argparse.Namespace) -> int:
    from .info import report

    print(report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslfast", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Self-supervised pretraining with fused kernels: contrastive and cross-correlation losses, "
                    "random-field augmentation, a DALI loader.",
        epilog="\n".join(__doc__.split("\n\n")[1].splitlines()) + "\n\nRun `sslfast COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    pre = sub.add_parser(
        "pretrain", help="pretrain an encoder (no arguments: a short run on built-in data)",
        description="Pretrain an encoder with a self-supervised method. With no arguments: SimCLR on a ResNet-18 "
                    "over the built-in synthetic shapes (generated on first use), a few minutes on a CPU, printing "
                    "the k-NN accuracy before and after. Writes config.json, epochs.csv, steps.csv, curves.png, "
                    "last.pt (checkpoint, every epoch and on Ctrl-C/SIGTERM) and encoder.pt to the run folder.",
        epilog="Examples:\n  sslfast pretrain\n  sslfast pretrain --method vicreg --epochs 20 --batch 128\n"
               "  sslfast pretrain --data ~/imagenet --backbone resnet50 --crop-size 224 --optimizer lars --lr 0.3\n"
               "  torchrun --nproc-per-node 4 -m sslfast.cli pretrain --config run.yaml\n"
               "  sslfast pretrain --resume sslfast_runs/<run>",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_pretrain_options(pre)
    knn = sub.add_parser("knn", help="k-NN accuracy of a pretrained checkpoint on a held-out split",
                         description="Weighted k-NN (k=200, T=0.07) of the checkpoint's backbone features: the "
                                     "training images form the bank, the held-out split is scored. The data default "
                                     "to those of the run.")
    knn.add_argument("checkpoint", help="a run folder or a checkpoint file (last.pt)")
    knn.add_argument("--data", help="ImageFolder for the bank (default: the run's training data)")
    knn.add_argument("--val-data", help="ImageFolder scored against the bank (default: the run's held-out split)")
    knn.add_argument("--k", type=int, default=200, help="neighbours (default: 200)")
    knn.add_argument("--temperature", type=float, default=0.07, help="vote temperature (default: 0.07)")
    knn.add_argument("--batch", type=int, default=256, help="images per forward pass (default: 256)")
    knn.add_argument("--train-samples", type=int, default=None, help="cap on the bank size (default: all)")
    knn.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    sub.add_parser("bench", help="run every benchmarks/bench_*.py and write the results table and plots",
                   add_help=False)
    sub.add_parser("preview-aug", help="picture of what random-field augmentation settings do", add_help=False)
    sub.add_parser("info", help="versions, the device, and which kernel backends can run here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        # bench and preview-aug have their own parsers: hand them the rest of the line
        if argv and argv[0] == "preview-aug":
            return _preview(argv[1:])
        if argv and argv[0] == "bench":
            return _bench(argv[1:])
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "pretrain":
            return _pretrain(args)
        if args.command == "knn":
            return _knn(args)
        return _info(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as exc:
        # bad input and a diverged run are the user's to fix: the message, not a traceback
        print(f"sslfast: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
