r"""Cached embeddings (GradCache): the exact gradient of a contrastive loss over a batch far
larger than fits in activation memory.

Idea of Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (https://arxiv.org/abs/2101.06983; luyug/GradCache). A contrastive loss couples every
sample of the batch, so the batch cannot simply be split into accumulation steps; but the
loss sees the encoder only through the embeddings z = f_theta(x), and

    dL/dtheta = sum over chunks c of (dz_c/dtheta)^T g_c,      g = dL/dz   (B, D).

So one step is three passes:

  1. embed:  run each encoder on its input chunk by chunk under no_grad, recording the RNG
             state before each chunk; keep only the embeddings (B, D);
  2. loss:   make the embeddings leaves, compute the loss over the whole batch and backward to
             them: g = dL/dz. Parameters and state of the loss itself (CLIP's logit scale,
             a MoCo queue, iSogCLR's temperatures) get their gradient / update here, once;
  3. replay: for each chunk, restore its RNG state (so dropout and random augmentation inside
             the encoder draw the same numbers), re-run the encoder with autograd and
             backpropagate g_c into it; parameter gradients accumulate to exactly dL/dtheta.

Peak activation memory is one chunk's graph instead of the whole batch's, for one extra
forward pass per chunk. sslfast's contrastive losses add only O(B*D + B*chunk) for the loss
itself, so the batch is bounded by B*D embeddings, not by activations or B^2 logits.

What it does not change: BatchNorm in training mode normalises each chunk with that chunk's
statistics (as any chunked forward), and updates its running statistics in both the embed and
the replay passes. Replays are exact when the encoder is deterministic (on GPU, with
torch.use_deterministic_algorithms where its kernels are not).

Example:
    >>> import torch
    >>> from sslfast.losses import NTXentLoss
    >>> from sslfast.train.grad_cache import grad_cache_step
    >>> encoder = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    >>> view0, view1 = torch.randn(2, 256, 32).unbind(0)
    >>> loss = grad_cache_step(NTXentLoss(temperature=0.2), encoder, [view0, view1], chunk_size=64)
    >>> encoder[0].weight.grad.shape  # the gradient of the loss over all 256 pairs
    torch.Size([64, 32])
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence, Union

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

from .._validation import check_int

Batch = Union[torch.Tensor, Sequence[torch.Tensor], dict]


def _tensors(batch: Batch) -> list:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return list(batch.values())
    return list(batch)


def _batch_size(name: str, batch: Batch) -> int:
    tensors = _tensors(batch)
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        raise TypeError(f"{name} must be a tensor, or a tuple/list/dict of tensors with a batch dimension, "
                        f"got {type(batch).__name__}")
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"the tensors of {name} must share their first (batch) dimension, got sizes {sorted(sizes)}")
    size = sizes.pop()
    if size == 0:
        raise ValueError(f"{name} is an empty batch")
    return size


def _chunk(batch: Batch, start: int, stop: int) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {key: value[start:stop] for key, value in batch.items()}
    return type(batch)(t[start:stop] for t in batch)


def _call(encoder: Callable, chunk: Batch) -> Any:
    if isinstance(chunk, dict):
        return encoder(**chunk)
    if isinstance(chunk, (tuple, list)):
        return encoder(*chunk)
    return encoder(chunk)


class _RngState:
    """The CPU generator's state and that of every CUDA device the chunk's tensors live on
    (what torch.utils.checkpoint records for its recomputation)."""

    def __init__(self, tensors):
        self.cpu = torch.get_rng_state()
        self.devices, self.cuda = get_device_states(*tensors)

    @contextlib.contextmanager
    def restored(self):
        # fork_rng: the replay leaves the generators as it found them
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.cuda)
            yield


def grad_cache_step(
    loss_fn: Callable[..., torch.Tensor],
    encoders: Union[Callable, Sequence[Callable]],
    inputs: Sequence[Batch],
    chunk_size: int,
) -> torch.Tensor:
    """Accumulate into the encoders' (and the loss's) parameters the gradient of
    `loss_fn(encoders[0](inputs[0]), encoders[1](inputs[1]), ...)` over the whole batch, while
    running the encoders on at most `chunk_size` samples at a time with autograd.

    Args:
        loss_fn: (*embeddings) -> scalar loss, e.g. an sslfast.losses module (fused kernel
            where available). Extra arguments (iSogCLR's indices) go in a closure.
        encoders: one callable per input, or a single one used for every input (two views of
            one encoder). A DistributedDataParallel encoder synchronises its gradients once, in
            its last replayed chunk (the others run under no_sync()).
        inputs: one batch per encoder: a tensor, or a tuple/list (positional arguments) or dict
            (keyword arguments) of tensors split along their first dimension.
        chunk_size: samples per encoder call.

    Returns:
        The loss (detached). Gradients are accumulated into .grad, as loss.backward() would;
        zero them before the step as usual.
    """
    check_int("chunk_size", chunk_size, minimum=1)
    if isinstance(inputs, (torch.Tensor, dict)) or not isinstance(inputs, Sequence) or not inputs:
        raise TypeError("inputs must be a non-empty list with one batch per encoder, "
                        f"got {type(inputs).__name__}")
    if callable(encoders) and not isinstance(encoders, (list, tuple)):
        encoders = [encoders] * len(inputs)
    if len(encoders) != len(inputs):
        raise ValueError(f"encoders and inputs must pair up, got {len(encoders)} encoders and {len(inputs)} inputs")
    for i, encoder in enumerate(encoders):
        if not callable(encoder):
            raise TypeError(f"encoders[{i}] must be callable, got {type(encoder).__name__}")
    sizes = [_batch_size(f"inputs[{i}]", batch) for i, batch in enumerate(inputs)]

    # 1. embed without a graph, remembering each chunk's RNG state
    embeddings, replays = [], []
    for i, (encoder, batch, size) in enumerate(zip(encoders, inputs, sizes)):
        chunks = []
        for start in range(0, size, chunk_size):
            chunk = _chunk(batch, start, min(start + chunk_size, size))
            rng = _RngState(_tensors(chunk))
            with torch.no_grad():
                z = _call(encoder, chunk)
            if not isinstance(z, torch.Tensor) or z.dim() < 1 or z.shape[0] != min(chunk_size, size - start):
                got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise TypeError(f"encoders[{i}] must return a tensor with one row per input sample, got {got}")
            chunks.append(z)
            replays.append((i, encoder, chunk, rng, start))
        embeddings.append(torch.cat(chunks))

    # 2. the loss over the whole batch, backpropagated to the embeddings only
    leaves = [z.detach().requires_grad_() for z in embeddings]
    with torch.enable_grad():
        loss = loss_fn(*leaves)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"loss_fn must return a scalar tensor, got {got}")
    loss.backward()
    gradients = [z.grad if z.grad is not None else torch.zeros_like(z) for z in leaves]

    # 3. replay each chunk with autograd and push its slice of dL/dz into the encoder
    replays = [job for job in replays if _trainable(job[1])]
    last_use = {id(encoder): n for n, (_, encoder, *_) in enumerate(replays)}
    for n, (i, encoder, chunk, rng, start) in enumerate(replays):
        grad = gradients[i][start:start + chunk_size]
        sync_later = last_use[id(encoder)] != n and hasattr(encoder, "no_sync")
        with rng.restored(), torch.enable_grad(), (encoder.no_sync() if sync_later else contextlib.nullcontext()):
            z = _call(encoder, chunk)
            if z.requires_grad:
                torch.autograd.backward(z, grad_tensors=grad)
    return loss.detach()


def _trainable(encoder) -> bool:
    """False for a module without trainable parameters (a frozen or momentum encoder): no replay."""
    if isinstance(encoder, torch.nn.Module):
        return any(p.requires_grad for p in encoder.parameters())
    return True
