r"""Contrastive losses, exact and memory-aware: the test oracle and the CPU path.

Every loss here is one or two calls of the row-wise masked log-sum-exp primitive

    lse_i = log sum_{j kept} exp(a_i <q_i, k_j>)        (sslfast.reference.similarity)

plus O(N*D) work on the positives, so peak memory is O(N*D + N*chunk), never O(N^2). Each
function takes the primitive as its `lse` argument: by default the chunked pure-PyTorch one
(`reference_lse`); the public API (sslfast.functional, sslfast.losses) passes the dispatched
op `sslfast.ops.similarity_lse.similarity_lse` instead, so a fused backend serves the same math.
An `lse` callable has the signature

    lse(q, k, scale, self_index=None, exclude_period=0, normalize=False) -> (Nq,)

where `k=None` means "k is q" (a kernel may exploit the symmetry) and `normalize=True` L2-
normalises the rows of q and k first (a kernel may fuse it). Results come back in float32
(float64 for float64 inputs), whatever the input dtype.

Layout of views. A loss over V views of B samples stacks them view-major: row v*B + i is view
v of sample i. With `gather_distributed=True` each rank keeps its own B*V rows as queries and
gathers the keys of every rank, re-stacked view-major over the global batch of W*B samples:
key v*W*B + r*B + i is view v of sample i of rank r. A local row's own column is then
v*W*B + r*B + i, and every column j with j = r*B + i (mod W*B) is a view of the same sample.
Each rank returns the mean over its local rows; the average over ranks is the single-process
loss on the concatenated batch and, through `sslfast.distributed.gather`, the gradients after
DDP's averaging are exactly the single-process ones (see sslfast.distributed).

Sources of each convention are named in each docstring; where we depart, it says so and why.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import distributed as dist
from .similarity import compute_dtype, similarity_lse

LSE = Callable[..., torch.Tensor]


def reference_lse(q, k, scale, self_index=None, exclude_period: int = 0, normalize: bool = False):
    """The chunked pure-PyTorch primitive behind the `lse` contract above."""
    if normalize:
        q = F.normalize(q, dim=1)
        k = None if k is None else F.normalize(k, dim=1)
    return similarity_lse(q, q if k is None else k, scale, self_index, exclude_period)


# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------

def _world(gather_distributed: bool) -> tuple:
    """(world size, rank) that the loss sees: (1, 0) unless gathering across >1 ranks."""
    if gather_distributed and dist.world_size() > 1:
        return dist.world_size(), dist.rank()
    return 1, 0


def _stack_rows(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """(V*B, D) queries, view-major."""
    return torch.cat(list(views), dim=0)


def _gathered_keys(views: Sequence[torch.Tensor], world: int) -> Optional[torch.Tensor]:
    """Keys of the global batch, view-major (V*W*B, D); None when single-process (k is q)."""
    if world == 1:
        return None
    per_sample = torch.stack(list(views), dim=1)  # (B, V, D): one gather for all views
    gathered = dist.gather(per_sample)  # (W*B, V, D), rank-major
    return gathered.transpose(0, 1).reshape(-1, per_sample.shape[-1])


def _own_columns(num_views: int, batch: int, world: int, rank: int, device) -> torch.Tensor:
    """Column of each local row's own copy in the view-major global keys."""
    view = torch.arange(num_views, device=device).repeat_interleave(batch)
    sample = torch.arange(batch, device=device).repeat(num_views)
    return view * (world * batch) + rank * batch + sample


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


# --------------------------------------------------------------------------------------------
# NT-Xent / SimCLR (and its multi-positive form for V > 2 views)
# --------------------------------------------------------------------------------------------

def nt_xent_loss(
    out0: torch.Tensor,
    out1: torch.Tensor,
    *more_views: torch.Tensor,
    temperature: float = 0.5,
    gather_distributed: bool = False,
    lse: LSE = reference_lse,
) -> torch.Tensor:
    r"""NT-Xent (SimCLR) over V >= 2 views, mean over the V*B anchors.

    With z the L2-normalised rows of all views stacked (V*B rows), s_ij = <z_i, z_j> / T and
    P(i) the other V-1 views of row i's sample:

        loss = mean_i [ log sum_{j != i} exp(s_ij)  -  (1 / |P(i)|) sum_{p in P(i)} s_ip ]

    At V = 2 this is exactly NT-Xent as in lightly (lightly/loss/ntx_ent_loss.py, NTXentLoss
    without memory bank: logits [z0 z1^T, z0 z0^T minus self] / T, cross-entropy, mean over 2B)
    and SimCLR (Chen et al. 2020). For V > 2 it is the multi-positive "L_out" form of
    Supervised Contrastive Learning (Khosla et al. 2020; HobbitLong/SupContrast, losses.py,
    SupConLoss with labels=None, contrast_mode='all'), without SupConLoss's extra factor
    temperature / base_temperature (i.e. base_temperature = temperature), so that V = 2
    reduces to NT-Xent.

    Work: one `lse` call (q = k = all views, self excluded by index) and the positives in
    O(V*B*D): the sum over P(i) is <z_i, (sum_v z_v) - z_i>.
    """
    views = (out0, out1) + tuple(more_views)
    num_views, batch = len(views), out0.shape[0]
    world, rank = _world(gather_distributed)
    scale = 1.0 / temperature

    queries = _stack_rows(views)
    keys = _gathered_keys(views, world)
    own = _own_columns(num_views, batch, world, rank, out0.device)
    lse_rows = lse(queries, keys, scale, own, 0, normalize=True)

    z = torch.stack([F.normalize(v.to(lse_rows.dtype), dim=1) for v in views])  # (V, B, D)
    # sum of the other views of each sample; flip is exact for the common two-view case
    others = z.flip(0) if num_views == 2 else z.sum(0, keepdim=True) - z
    positive = _row_dot(z, others).reshape(-1) * (scale / (num_views - 1))
    return (lse_rows - positive).mean()


# --------------------------------------------------------------------------------------------
# DCL / DCLW
# --------------------------------------------------------------------------------------------

def negative_mises_fisher_weights(out0: torch.Tensor, out1: torch.Tensor, sigma: float = 0.5,
                                  *, gather_distributed: bool = False) -> torch.Tensor:
    r"""DCLW's weights w_i = 2 - N * softmax_i(<z0_i, z1_i> / sigma), detached.

    Convention of lightly (lightly/loss/dcl_loss.py, negative_mises_fisher_weights) and of the
    DCL paper (Yeh et al. 2022, Eq. 6 with the von Mises-Fisher weighting). Inputs are the
    L2-normalised views. With `gather_distributed=True` the softmax runs over the global batch
    (N = W*B), so that the weights equal the single-process ones; lightly uses the local batch.
    """
    with torch.no_grad():
        similarity = _row_dot(out0, out1) / sigma
        world, rank = _world(gather_distributed)
        if world > 1:
            similarity = dist.gather(similarity)
        weights = 2 - similarity.shape[0] * torch.softmax(similarity, dim=0)
        batch = out0.shape[0]
        return weights[rank * batch:(rank + 1) * batch]


def _decoupled(out0, out1, temperature, weights, gather_distributed, lse):
    """The DCL loss given the positive weights of the rows of each view ((w0, w1) or None)."""
    batch = out0.shape[0]
    world, rank = _world(gather_distributed)
    scale = 1.0 / temperature

    queries = _stack_rows((out0, out1))
    keys = _gathered_keys((out0, out1), world)
    own = _own_columns(2, batch, world, rank, out0.device)
    lse_rows = lse(queries, keys, scale, own, world * batch, normalize=True)

    cdt = lse_rows.dtype
    positive = _row_dot(F.normalize(out0.to(cdt), dim=1), F.normalize(out1.to(cdt), dim=1)) * scale
    if weights is not None:
        positive = torch.cat([positive * weights[0], positive * weights[1]])
    else:
        positive = positive.repeat(2)
    return (lse_rows - positive).mean()


def dcl_loss(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float = 0.1,
    weight_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    *,
    gather_distributed: bool = False,
    lse: LSE = reference_lse,
) -> torch.Tensor:
    r"""Decoupled contrastive loss (DCL), mean over the 2B anchors.

    With z the L2-normalised rows of both views (2B rows), s_ij = <z_i, z_j> / T, p(i) the other
    view of row i's sample and w_i the positive weight (1 without weight_fn):

        loss = mean_i [ -w_i s_{i p(i)}  +  log sum_{j not a view of i's sample} exp(s_ij) ]

    The denominator leaves out both views of the sample (that is the "decoupling"). Convention of
    lightly (lightly/loss/dcl_loss.py, DCLLoss: weight_fn(out0, out1) on the normalised views for
    the rows of view 0 and weight_fn(out1, out0) for those of view 1, loss 0.5 * (loss0 + loss1))
    and of the DCL paper (Yeh et al. 2022, Eq. 6). `weight_fn` sees this rank's rows only, and
    gradients flow through it as in lightly.

    Work: one `lse` call with exclude_period = W*B (every column j = i mod W*B is dropped) and
    the positives in O(B*D).
    """
    weights = None
    if weight_fn is not None:
        z0, z1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        weights = (weight_fn(z0, z1), weight_fn(z1, z0))
    return _decoupled(out0, out1, temperature, weights, gather_distributed, lse)


def dclw_loss(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float = 0.1,
    sigma: float = 0.5,
    *,
    gather_distributed: bool = False,
    lse: LSE = reference_lse,
) -> torch.Tensor:
    r"""DCL with the negative von Mises-Fisher weights (lightly's DCLWLoss).

    loss = dcl_loss with w_i = 2 - N * softmax_i(<z0_i, z1_i> / sigma) (detached), the same
    weights for both views since they are symmetric in (z0, z1). See
    `negative_mises_fisher_weights` for the distributed convention.
    """
    z0, z1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    weights = negative_mises_fisher_weights(z0, z1, sigma, gather_distributed=gather_distributed)
    return _decoupled(out0, out1, temperature, (weights, weights), gather_distributed, lse)


# --------------------------------------------------------------------------------------------
# InfoNCE between two sets / CLIP
# --------------------------------------------------------------------------------------------

def info_nce_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    scale,
    *,
    symmetric: bool = True,
    normalize: bool = True,
    gather_distributed: bool = False,
    lse: LSE = reference_lse,
) -> torch.Tensor:
    r"""InfoNCE with in-batch negatives between two sets, positives on the diagonal.

    With s_ij = scale * <q_i, k_j> (rows L2-normalised when `normalize`):

        loss_q = mean_i [ log sum_j exp(s_ij) - s_ii ]        (rows: query against all keys)
        loss_k = mean_j [ log sum_i exp(s_ij) - s_jj ]        (rows: key against all queries)
        loss   = (loss_q + loss_k) / 2  if symmetric else loss_q

    The symmetric form with scale = exp(learnable logit scale) is CLIP's loss in open_clip's
    convention (mlfoundations/open_clip, src/open_clip/loss.py, ClipLoss:
    (CE(logit_scale * I T^T) + CE(logit_scale * T I^T)) / 2; with gather it is ClipLoss with
    local_loss=True, gather_with_grad=True: local rows against all gathered columns, labels
    offset by rank * B). `scale` is a float or a 0-d tensor (differentiable).

    Work: one `lse` call per direction and the positives in O(B*D).
    """
    world, _ = _world(gather_distributed)
    if world > 1:
        all_queries, all_keys = dist.gather(query), dist.gather(key)
    else:
        all_queries, all_keys = query, key
    lse_q = lse(query, all_keys, scale, None, 0, normalize=normalize)
    cdt = lse_q.dtype
    qn, kn = query.to(cdt), key.to(cdt)
    if normalize:
        qn, kn = F.normalize(qn, dim=1), F.normalize(kn, dim=1)
    positive = _row_dot(qn, kn) * scale
    loss = (lse_q - positive).mean()
    if not symmetric:
        return loss
    lse_k = lse(key, all_queries, scale, None, 0, normalize=normalize)
    return 0.5 * (loss + (lse_k - positive).mean())


def clip_loss(image_features, text_features, logit_scale, *, normalize: bool = True,
              gather_distributed: bool = False, lse: LSE = reference_lse) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (open_clip ClipLoss): `info_nce_loss(..., symmetric=True)` with
    scale = logit_scale, the already exponentiated scale (open_clip passes logit_scale.exp())."""
    return info_nce_loss(image_features, text_features, logit_scale, symmetric=True, normalize=normalize,
                         gather_distributed=gather_distributed, lse=lse)


# --------------------------------------------------------------------------------------------
# MoCo: InfoNCE against a queue of negatives
# --------------------------------------------------------------------------------------------

def moco_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.2,
    *,
    lse: LSE = reference_lse,
) -> torch.Tensor:
    r"""InfoNCE with one positive key per query and a shared set of negatives (a queue).

    With q, k L2-normalised, n_m the (normalised) negatives and T the temperature:

        loss = mean_i [ log( exp(<q_i, k_i>/T) + sum_m exp(<q_i, n_m>/T) ) - <q_i, k_i>/T ]

    Convention of MoCo (facebookresearch/moco, moco/builder.py, MoCo.forward: logits
    [l_pos, l_neg] / T with the label 0, cross-entropy) and of lightly's NTXentLoss with a memory
    bank (lightly/loss/ntx_ent_loss.py: out0 against out1 and the bank, mean over B). The
    queue itself (contents, update rule) lives with the module (sslfast.losses.MoCoLoss and
    NTXentLoss(memory_bank_size=...)).

    Work: one `lse` call of the queries against the negatives, then the positive joins the
    log-sum-exp in O(B*D): logaddexp(lse_neg, s_pos).
    """
    scale = 1.0 / temperature
    lse_negatives = lse(query, negatives.to(query.dtype), scale, None, 0, normalize=True)
    cdt = lse_negatives.dtype
    positive = _row_dot(F.normalize(query.to(cdt), dim=1), F.normalize(key.to(cdt), dim=1)) * scale
    return (torch.logaddexp(lse_negatives, positive) - positive).mean()


# --------------------------------------------------------------------------------------------
# iSogCLR: per-sample temperatures, moving-average estimator of the denominator
# --------------------------------------------------------------------------------------------

def isogclr_loss(
    out0: torch.Tensor,
    out1: torch.Tensor,
    index: torch.Tensor,
    tau: torch.Tensor,
    s: torch.Tensor,
    u: torch.Tensor,
    *,
    gamma: float = 0.8,
    rho: float = 6.0,
    eta: float = 1e-3,
    beta_u: float = 0.9,
    tau_min: float = 0.05,
    tau_max: float = 1.0,
    grad_clip: float = 3.0,
    update_state: bool = True,
    gather_distributed: bool = False,
    lse: LSE = reference_lse,
) -> torch.Tensor:
    r"""iSogCLR (Qiu et al., ICML 2023, "Not All Semantics are Created Equal"): one learnable
    temperature tau_i per training sample, and a moving-average estimate s_i of each sample's
    denominator so that small batches still optimise the global objective.

    Source: zhqiu/contrastive-learning-iSogCLR, unimodal_exps/losses.py, SogCLR_DRO_Loss (what
    main_supcon.py runs for iSogCLR: --method SimCLR --DRO_mod; its constructor defaults are
    the defaults here; the README's CIFAR-100 run uses tau_init 0.1, rho 0.4, beta_u 0.5,
    eta 0.03). With z the L2-normalised views (2B rows), sim_ij = <z_i, z_j>, the negatives of
    row i every column but the two views of its sample (n = 2*N_global - 2 of them), and tau_i,
    s_i, u_i the state of row i's sample (index[i]), one step is:

        g_i   = (1/n) sum_{j neg} exp(sim_ij / tau_i)                  (no gradient)
        s'_i  = (1 - gamma) s_i + gamma g_i                             (per view)
        w_ij  = exp(sim_ij / tau_i) / s'_i                              (no gradient)
        loss  = (1/B) sum_{rows i} [ (1/n) sum_j w_ij sim_ij - sim_{i p(i)} ]
        dtau_i = log s'_i + rho - (1/n) sum_j w_ij sim_ij / tau_i       (per view)
        state: s_i <- mean of s'_i over the two views
               u_i <- (1 - beta_u) u_i + beta_u clamp(mean over views of dtau_i, +-grad_clip)
               tau_i <- clamp(tau_i - eta u_i, tau_min, tau_max)

    The loss uses the temperatures from before the update; its value is the official surrogate
    (whose gradient is the stochastic gradient of the iSogCLR objective, not the objective
    itself). Like the official code, s starts at 0 (the first visit of a sample gives
    s' = gamma * g) and the state is updated in the forward pass. Indices in a batch must be
    distinct.

    Reduction to the primitive: with a_i = 1/tau_i, one `lse` call with exclude_period gives
    g_i = exp(lse_i) / n; the softmax-weighted mean similarity E_i = sum_j P_ij sim_ij is
    d lse_i / d a_i, taken by differentiating that same call with respect to its scale; then
    sum_j w_ij sim_ij / n = (g_i / s'_i) E_i, and the gradient of the loss with respect to the
    embeddings is that of sum_i c_i lse_i - sim_{i p(i)} with c_i = g_i tau_i / s'_i held
    constant. So: one `lse` forward, two backward passes, and O(B*D) for the rest.

    With `gather_distributed=True` the state of every sample of the global batch is updated on
    every rank (indices and new values are gathered), so all ranks keep identical state.
    """
    batch = out0.shape[0]
    world, rank = _world(gather_distributed)
    global_batch = world * batch
    num_negatives = 2 * global_batch - 2

    queries = _stack_rows((out0, out1))
    keys = _gathered_keys((out0, out1), world)
    own = _own_columns(2, batch, world, rank, out0.device)
    cdt = compute_dtype(out0.dtype)

    tau_rows = tau[index].to(cdt).repeat(2)
    with torch.enable_grad():
        # a leaf scale: differentiating lse with respect to it gives E_i (see above)
        inverse_tau = (1.0 / tau_rows).requires_grad_()
        lse_rows = lse(queries, keys, inverse_tau, own, global_batch, normalize=True)
        (mean_similarity,) = torch.autograd.grad(lse_rows.sum(), inverse_tau, retain_graph=True)

    with torch.no_grad():
        g = torch.exp(lse_rows.detach() - math.log(num_negatives))
        s_rows = (1 - gamma) * s[index].to(cdt).repeat(2) + gamma * g
        weighted_similarity = g / s_rows * mean_similarity  # (1/n) sum_j w_ij sim_ij
        coefficient = g * tau_rows / s_rows
        grad_tau = torch.log(s_rows) + rho - weighted_similarity / tau_rows

    positive = _row_dot(F.normalize(out0.to(cdt), dim=1), F.normalize(out1.to(cdt), dim=1)).repeat(2)
    surrogate = (coefficient * lse_rows - positive).sum() / batch
    value_minus_surrogate = ((weighted_similarity - coefficient * lse_rows.detach()).sum() / batch)
    loss = surrogate + value_minus_surrogate

    if update_state:
        with torch.no_grad():
            new_s = 0.5 * (s_rows[:batch] + s_rows[batch:])
            step = (0.5 * (grad_tau[:batch] + grad_tau[batch:])).clamp(-grad_clip, grad_clip)
            new_u = (1 - beta_u) * u[index].to(cdt) + beta_u * step
            new_tau = (tau[index].to(cdt) - eta * new_u).clamp(tau_min, tau_max)
            all_index = index
            if world > 1:
                all_index = dist.gather(index.contiguous())
                new_s, new_u, new_tau = (dist.gather(t.contiguous()) for t in (new_s, new_u, new_tau))
            s[all_index] = new_s.to(s.dtype)
            u[all_index] = new_u.to(u.dtype)
            tau[all_index] = new_tau.to(tau.dtype)
    return loss


__all__ = [
    "reference_lse", "nt_xent_loss", "dcl_loss", "dclw_loss", "negative_mises_fisher_weights",
    "info_nce_loss", "clip_loss", "moco_loss", "isogclr_loss",
]
