"""The pretraining loop behind `sslfast pretrain`, in plain PyTorch.

One optimizer step:

    lr  <- schedule(step)                               (a pure function of the step)
    ctx <- method.prepare(views, index)                 (momentum keys, mixing: no grad)
    z   <- encode every branch input; loss <- method loss on z     (bf16 autocast on CUDA)
    backward; stop if the loss is not finite (every rank agrees); optimizer step; EMA update

With `effective_batch` larger than `batch` the loader yields effective_batch / world images per
process and the step runs through the cached-embeddings helper (sslfast.train.grad_cache):
embeddings in chunks of `batch` without a graph, the loss and its embedding gradients on the
whole batch, then the chunks again with those gradients. The parameter gradient is the one of
the large batch (with BatchNorm statistics per chunk, as on `effective_batch / batch` devices).

Multi-process runs (torchrun) use DistributedDataParallel (gloo on CPU, NCCL on CUDA), the
losses' gather_distributed=True (each rank's rows against the global batch) and the loader's
sharding by rank. Rank 0 evaluates the monitors, logs and writes checkpoints.

Exact resume: a checkpoint holds the model (with the loss module's state), the optimizer, the
step, the loader's position (epoch, batches done) and every rank's RNG states. Checkpoints are
written atomically at the end of every epoch and when SIGINT/SIGTERM asks the run to stop
(after the step in flight); `resume` continues the same run, bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn

from .. import distributed
from . import checkpoint as ckpt
from .config import PretrainConfig
from .data import DataSplit, build_train_loader, resolve_data
from .methods import SSLMethod, StepContext, build_method
from .models import RESNETS, build_backbone, count_parameters
from .monitor import CSVLog, EvalImages, PairBuffer, TensorBoard, plot_curves, representation_metrics, subsample
from .optim import LRSchedule, build_optimizer, parameter_groups
from .parallel import any_rank, average_gradients, gather_objects, init_distributed, run_on_rank0

LAST = "last.pt"
ENCODER = "encoder.pt"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class PretrainResult:
    out: str
    checkpoint: Optional[str]
    step: int
    epoch: int
    interrupted: Optional[str] = None  # the signal's name when stopped by SIGINT/SIGTERM
    initial_metrics: Dict[str, float] = field(default_factory=dict)
    final_metrics: Dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0


# ---- process setup ----------------------------------------------------------------------------

def pick_device(config: PretrainConfig) -> torch.device:
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA device is available; use --device cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


# ---- the run ----------------------------------------------------------------------------------

class Trainer:
    """Builds everything a run needs from a PretrainConfig; `run()` trains."""

    def __init__(self, config: PretrainConfig, *, resume: Union[str, dict, None] = None,
                 log: Callable[[str], None] = None):
        self.config = config.validate()
        self.log_fn = log or (lambda msg: print(msg, flush=True))
        self.device = pick_device(config)
        init_distributed(self.device.type)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.resume_state = ckpt.load(resume) if isinstance(resume, str) else resume
        if self.resume_state is not None and self.world != self.resume_state.get("world_size", 1):
            raise ValueError(f"the checkpoint was written by {self.resume_state.get('world_size', 1)} process(es); "
                             f"resume it with the same number (got {self.world}) for an exact continuation")
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        ckpt.seed_everything(config.seed + self.rank)

        # batch sizes
        self.chunk = config.batch
        global_batch = config.effective_batch or config.batch * self.world
        if global_batch % self.world:
            raise ValueError(f"effective_batch ({global_batch}) must be divisible by the number of processes "
                             f"({self.world})")
        self.per_process_batch = global_batch // self.world
        if config.effective_batch is not None and self.per_process_batch < self.chunk:
            raise ValueError(f"effective_batch ({global_batch}) must be >= batch x processes "
                             f"({self.chunk} x {self.world}); use a smaller --batch")
        self.global_batch = global_batch
        self.cached = self.per_process_batch > self.chunk
        if min(self.chunk, self.per_process_batch) < 2:
            raise ValueError(f"batch must be >= 2 for method {config.method!r} (BatchNorm and the loss need two "
                             f"samples at least), got {min(self.chunk, self.per_process_batch)}")

        # data
        self.split: DataSplit = resolve_data(config, verbose=self.is_main and config.progress)
        self.loader_device = ("gpu" if self.device.type == "cuda" else "cpu") if config.loader_device == "auto" \
            else config.loader_device
        self.out = self._out_dir()
        self.config.out = self.out

        # model, loss, optimizer
        def make_backbone():
            return build_backbone(config.backbone, image_size=config.crop_size, stem=resolve_stem(config))[0]

        backbone, feature_dim = build_backbone(config.backbone, image_size=config.crop_size, stem=resolve_stem(config))
        options = dict(config.extra)
        for key in ("temperature", "ema_momentum", "queue_size"):
            if getattr(config, key) is not None:
                options[key] = getattr(config, key)
        views = int(options.pop("views", 2))
        self.loader = build_train_loader(config, self.split, batch_size=self.per_process_batch,
                                         recipe=config.recipe or _method_recipe(config.method), views=views,
                                         loader_device=self.loader_device)
        num_samples = len(self.loader.images)
        if num_samples < global_batch:
            raise ValueError(f"the training set has {num_samples} images, fewer than one batch of {global_batch}")
        self.method: SSLMethod = build_method(
            config.method, backbone, feature_dim, views=views, hidden_dim=config.proj_hidden_dim,
            output_dim=config.proj_output_dim, gather_distributed=self.world > 1, backend=config.backend,
            num_samples=num_samples, options=options, make_backbone=make_backbone).to(self.device)
        # channels_last pays for convolutions only (the ViT's one patch convolution gains nothing)
        self.channels_last = config.channels_last and config.backbone in RESNETS
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.autocast_dtype = torch.bfloat16 if (config.precision == "bf16" or
                                                 (config.precision == "auto" and self.device.type == "cuda")) else None
        self.steps_per_epoch = len(self.loader)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.peak_lr = config.lr * global_batch / 256
        self.optimizer = build_optimizer(config.optimizer, parameter_groups([self.method], config.weight_decay),
                                         lr=self.peak_lr, weight_decay=config.weight_decay, momentum=config.momentum)
        self.schedule = LRSchedule(config.schedule, self.total_steps,
                                   int(round(config.warmup_epochs * self.steps_per_epoch)),
                                   final_lr_ratio=config.final_lr_ratio, cooldown_fraction=config.cooldown_fraction)
        self.step = 0
        self.last_checkpoint: Optional[str] = None
        if self.resume_state is not None:
            self._load_state(self.resume_state)
        self.model = self.method
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        if config.compile:
            # in place (nn.Module.compile): torch.compile's wrapper would rename every parameter
            # `_orig_mod.*` in the checkpoint, which a resumed run could then not load
            self.method.backbone.compile()
        self.pairs = PairBuffer(config.monitor_pairs)

    # ---- setup helpers ------------------------------------------------------------------------

    def _out_dir(self) -> str:
        """The run folder: the resumed checkpoint's folder (wherever it was moved), --out, or a
        new sslfast_runs/<method>-<backbone>-<time>. Rank 0 creates it and writes config.json."""
        if self.resume_state is not None:
            return os.path.dirname(self.resume_state["path"])

        def create() -> str:
            out = self.config.out or os.path.join(
                "sslfast_runs", f"{self.config.method}-{self.config.backbone}-{time.strftime('%Y%m%d-%H%M%S')}")
            out = os.path.abspath(out)
            if os.path.isfile(os.path.join(out, LAST)):
                raise FileExistsError(f"{out} already holds a run ({LAST}); continue it with --resume {out} or "
                                      f"choose another --out")
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "config.json"), "w") as fh:
                json.dump(self.config.to_dict(), fh, indent=1)
            return out

        return run_on_rank0(create)

    def _load_state(self, state: dict) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.loader.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"][self.rank])
        self.last_checkpoint = state["path"]

    def _state(self, start: float) -> dict:
        rng = gather_objects(ckpt.rng_state())
        return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "config": self.config.to_dict(), "world_size": self.world, "step": self.step, "loader": self.loader.state_dict(),
                "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng,
                "elapsed_s": time.time() - start}

    def save_checkpoint(self, start: float) -> Optional[str]:
        """Write last.pt atomically (rank 0); every rank must call it (RNG states are gathered)."""
        state = self._state(start)
        if not self.is_main:
            return None
        path = ckpt.save_atomic(state, os.path.join(self.out, LAST))
        self.last_checkpoint = path
        return path

    def log(self, message: str) -> None:
        if self.is_main:
            self.log_fn(message)

    # ---- monitors -------------------------------------------------------------------------------

    def _eval_sets(self):
        config = self.config
        bank = subsample(list(zip(self.loader.images.paths, self.loader.images.labels.tolist())),
                         config.knn_train_samples, config.seed)
        if self.split.val is None or (self.loader.images.labels < 0).all():
            return None, None
        val = subsample(self.split.val, config.knn_val_samples, config.seed + 1)
        return EvalImages(bank, config.crop_size), EvalImages(val, config.crop_size)

    def evaluate(self) -> Dict[str, float]:
        if not self.is_main or self.bank is None:
            return {}
        return representation_metrics(self.method.monitored_backbone, self.bank, self.queries, self.device,
                                      k=self.config.knn_k, temperature=self.config.knn_temperature,
                                      channels_last=self.channels_last,
                                      autocast_dtype=self.autocast_dtype)

    # ---- one step -------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, views: List[torch.Tensor]) -> List[torch.Tensor]:
        out = []
        for v in views:
            v = v.to(self.device, non_blocking=True)
            out.append(v.contiguous(memory_format=torch.channels_last) if self.channels_last else v)
        return out

    def train_step(self, batch: dict) -> tuple:
        """One optimizer step on a loader batch; returns (loss tensor, embeddings for the monitors)."""
        views = self._to_device(batch["views"])
        index = batch["index"].to(self.device, non_blocking=True)
        lr = self.schedule.apply(self.optimizer, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            context = self.method.prepare(views, index)
        if self.cached:
            loss, embeddings = self._cached_step(context)
        else:
            with self._autocast():
                loss, embeddings = self.model("step", context)
            loss.backward()
        return loss.detach(), embeddings, lr

    def _cached_step(self, context: StepContext):
        """The step through cached embeddings (sslfast.train.grad_cache): chunks of `batch`.

        Under DDP every pass runs in no_sync() and the gradients are averaged once at the end:
        the replays touch the branches one chunk at a time, which DDP's reducer (expecting every
        parameter in every synchronised backward) cannot follow.
        """
        from .grad_cache import grad_cache_step

        embeddings: List[torch.Tensor] = []

        def loss_fn(*z):
            embeddings[:] = z  # the whole batch's embeddings, for the monitors
            with self._autocast():
                return self.model("loss", list(z), context)

        def encoder(branch):
            def encode(x):
                with self._autocast():
                    return self.model("encode", branch, x)
            return encode

        encoders = [encoder(branch) for branch, _ in context.inputs]
        with self.model.no_sync() if self.world > 1 else contextlib.nullcontext():
            loss = grad_cache_step(loss_fn, encoders, [x for _, x in context.inputs], self.chunk)
        if self.world > 1:
            average_gradients(self.method.parameters())
        return loss, [z.detach() for z in embeddings]

    # ---- the loop -------------------------------------------------------------------------------

    def run(self) -> PretrainResult:
        try:
            return self._run()
        finally:
            self.loader.close()

    def _run(self) -> PretrainResult:
        config = self.config
        start = time.time() - (self.resume_state or {}).get("elapsed_s", 0.0)  # time_s counts across resumes
        self.bank, self.queries = self._eval_sets() if self.is_main else (None, None)
        self._describe()
        self.epochs_log = self.steps_log = None
        if self.is_main:  # a resumed run rewrites what followed its checkpoint
            self.epochs_log = CSVLog(os.path.join(self.out, "epochs.csv"), keep_up_to_step=self.step)
            self.steps_log = CSVLog(os.path.join(self.out, "steps.csv"), keep_up_to_step=self.step)
        self.board = TensorBoard(os.path.join(self.out, "tensorboard"), config.tensorboard and self.is_main)
        result = PretrainResult(out=self.out, checkpoint=self.last_checkpoint, step=self.step, epoch=self.loader.epoch)
        if self.step == 0:
            result.initial_metrics = self.evaluate()
            if result.initial_metrics:
                self.log(f"before training (random init): {_format_metrics(result.initial_metrics)}")
                self._log_epoch({"epoch": 0, "step": 0, "images": 0, "time_s": 0.0, **result.initial_metrics})
        elif self.is_main:
            result.initial_metrics = _numbers(next((r for r in self.epochs_log.rows if float(r["step"]) == 0), {}))

        step_limit = min(self.total_steps, config.max_steps or self.total_steps)
        with ckpt.StopRequest() as stop:
            while self.step < step_limit:
                epoch = self.loader.epoch
                epoch_loss = self._run_epoch(epoch, step_limit, stop, start)
                if stop.requested_everywhere:
                    path = self.save_checkpoint(start)
                    self.log(f"{stop.signal_name or 'stop'}: stopped after step {self.step}; checkpoint written to "
                             f"{path} (continue with: sslfast pretrain --resume {self.out})")
                    result.interrupted = stop.signal_name or "SIGTERM"
                    break
                if self.is_main:
                    metrics = {}
                    if self.step >= step_limit or (epoch + 1) % config.knn_every == 0:
                        metrics = {**self.evaluate(), **self.pairs.metrics()}
                    row = {"epoch": round(self.step / self.steps_per_epoch, 3), "step": self.step,
                           "images": self.step * self.global_batch, "time_s": round(time.time() - start, 2),
                           "loss": epoch_loss, **metrics}
                    self._log_epoch(row)
                    self.log(f"epoch {row['epoch']:g}/{config.epochs}: loss {epoch_loss:.4f}  "
                             f"{_format_metrics(metrics)}  ({time.time() - start:.0f} s)")
                self.pairs.reset()
                self.save_checkpoint(start)
        result.checkpoint, result.step, result.epoch = self.last_checkpoint, self.step, self.loader.epoch
        result.elapsed_s = time.time() - start
        if self.is_main and not result.interrupted:
            evaluated = [r for r in self.epochs_log.rows if _is_number(r.get("knn_top1")) and float(r["step"]) > 0]
            result.final_metrics = _numbers(evaluated[-1]) if evaluated else {}
            torch.save(self.method.monitored_backbone.state_dict(), os.path.join(self.out, ENCODER))
            title = f"{config.method} / {config.backbone}: {self.split.description}"
            plot_curves(self.epochs_log.rows, self.steps_log.rows, os.path.join(self.out, "curves.png"),
                        title=title[:110])
            self._summary(result)
        self.board.close()
        return result

    def _log_epoch(self, row: dict) -> None:
        self.epochs_log.append(row)
        self.board.log(row, int(row["step"]), "epoch")

    def _run_epoch(self, epoch: int, step_limit: int, stop: ckpt.StopRequest, start: float) -> float:
        """Train from the loader's position to the end of the epoch, the step limit or a stop
        request (which sets stop.requested_everywhere on every rank); returns the mean loss."""
        config = self.config
        bar = None
        if self.is_main and config.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.loader.state_dict()["batches_done"],
                       desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", dynamic_ncols=True, leave=False,
                       file=sys.stderr, mininterval=0.5)
        losses, smooth, tick = [], None, time.time()
        try:
            for batch in self.loader:
                loss, embeddings, lr = self.train_step(batch)
                finite = bool(torch.isfinite(loss))
                stop_now, not_finite = any_rank([stop.requested, not finite], self.device)
                if not_finite:
                    raise NonFiniteLossError(
                        f"the loss is {float(loss) if not finite else 'not finite on another rank'} at step "
                        f"{self.step} (epoch {epoch + 1}, batch {self.loader.state_dict()['batches_done']}): stopped "
                        f"before the update. Last good checkpoint: "
                        f"{self.last_checkpoint or 'none (no checkpoint was written yet)'}. Lower --lr, use "
                        f"--precision fp32 or check the data, then resume from it.")
                self.optimizer.step()
                self.method.after_step(self.step, self.total_steps)
                self.step += 1
                value = float(loss)
                losses.append(value)
                smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
                if self.is_main:
                    if len(embeddings) >= 2:
                        self.pairs.add(embeddings[0], embeddings[1])
                    if self.step % config.log_every == 0 or self.step == 1:
                        self.steps_log.append({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                                          "loss": value, "lr": lr, "time_s": round(time.time() - start, 4)})
                        self.board.log({"loss": value, "lr": lr}, self.step, "step")
                    if bar is not None:
                        rate = self.global_batch * len(losses) / max(time.time() - tick, 1e-9)
                        bar.set_postfix_str(f"loss {smooth:.4f}  lr {lr:.2e}  {rate:.0f} img/s", refresh=False)
                        bar.update(1)
                if stop_now:
                    stop.requested_everywhere = True
                    break
                if self.step >= step_limit:
                    break
        finally:
            if bar is not None:
                bar.close()
        return sum(losses) / max(1, len(losses))

    # ---- messages -------------------------------------------------------------------------------

    def _describe(self) -> None:
        c = self.config
        backbone_params = count_parameters(self.method.monitored_backbone)
        lines = [
            f"data       {self.split.description}: {len(self.loader.images)} training images, "
            f"{len(self.queries) if self.queries is not None else 0} held out",
            f"method     {c.method} ({type(self.method.loss_fn).__name__}), backbone {c.backbone} "
            f"({backbone_params / 1e6:.1f} M parameters), {c.crop_size} px crops",
            f"batch      {self.global_batch} per step ({self.world} process(es) x {self.per_process_batch}"
            + (f", in chunks of {self.chunk} through cached embeddings" if self.cached else "") + ")",
            f"optimizer  {c.optimizer}, peak lr {self.peak_lr:.3g} (= {c.lr:g} x {self.global_batch}/256), "
            f"{c.schedule} schedule, {self.total_steps} steps ({c.epochs} epochs x {self.steps_per_epoch})",
            f"device     {self.device}{' bf16 autocast' if self.autocast_dtype else ''}, loader "
            f"{self.loader.backend} with {max(1, c.num_workers)} worker(s)",
            f"output     {self.out}",
        ]
        if self.resume_state is not None:
            lines.append(f"resumed    from step {self.step} (epoch {self.loader.epoch + 1}, batch "
                         f"{self.loader.state_dict()['batches_done']})")
        self.log("\n".join(lines))

    def _summary(self, result: PretrainResult) -> None:
        first, last = result.initial_metrics, result.final_metrics
        lines = [f"done: {result.step} steps in {result.elapsed_s / 60:.1f} min; checkpoint {result.checkpoint}"]
        if "knn_top1" in first and "knn_top1" in last:
            lines.append(f"k-NN top-1 on the held-out split: {100 * first['knn_top1']:.1f}% (random init) -> "
                         f"{100 * last['knn_top1']:.1f}% (pretrained)")
        lines.append(f"logs       {os.path.join(result.out, 'epochs.csv')}, curves {os.path.join(result.out, 'curves.png')}")
        self.log("\n".join(lines))


def _method_recipe(method: str) -> str:
    from .methods import METHOD_CLASSES

    return METHOD_CLASSES[method].recipe


def _numbers(row: dict) -> Dict[str, float]:
    return {k: float(v) for k, v in row.items() if _is_number(v)}


def _is_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _format_metrics(metrics: Dict[str, float]) -> str:
    names = (("knn_top1", "k-NN top-1 {:.1%}"), ("knn_top5", "top-5 {:.1%}"), ("rankme", "RankMe {:.1f}"),
             ("embedding_std_x_sqrt_d", "std x sqrt(D) {:.2f}"), ("alignment", "align {:.3f}"),
             ("uniformity", "uniform {:.3f}"))
    return "  ".join(fmt.format(metrics[k]) for k, fmt in names if k in metrics)


def resolve_stem(config: PretrainConfig) -> str:
    """The ResNet stem: as configured, or for "auto" the CIFAR stem at 32 px and below."""
    if config.stem != "auto":
        return config.stem
    return "cifar" if config.crop_size <= 32 else "imagenet"


def pretrain(config: PretrainConfig, *, resume: Union[str, dict, None] = None,
             log: Callable[[str], None] = None) -> PretrainResult:
    """Run (or resume) a pretraining job; see sslfast.train.trainer and `sslfast pretrain --help`."""
    return Trainer(config, resume=resume, log=log).run()
