r"""The volume-change term :math:`\log\det(J^\top J)` of an injective map, and its gradient.

For a map ``fn`` from :math:`\mathbb{R}^d` to :math:`\mathbb{R}^D` (applied row by row to a
batch ``z`` of shape ``(B, d)``) with Jacobian :math:`J` (``D × d``), this module offers

- :func:`logdet_exact`: :math:`J` from one vmapped forward-mode pass over the ``d`` basis
  tangents, then :math:`\log\det(J^\top J)` by Cholesky (bounded jitter retry);
- :func:`logdet_surrogate`: a scalar per row whose *gradient* is the Hutchinson estimate
  :math:`\tfrac1K\sum_k \mathrm{sg}(A^{-1}\varepsilon_k)^\top (\nabla A)\,\varepsilon_k`,
  :math:`A=J^\top J`, with :math:`A^{-1}\varepsilon` from batched conjugate gradient whose
  matvec is :math:`v \mapsto J^\top (J v)` (a ``jvp`` then a ``vjp``; :math:`J` is never formed);
- :func:`conjugate_gradient`: batched CG with per-system convergence masks and no host–device
  synchronisation per iteration.

Everything is plain :mod:`torch.func`; nothing here knows about Ray or MLflow. The CG solver is
written by hand because no maintained PyTorch library offers a batched, mask-per-system,
sync-free CG that accepts a matrix-free matvec.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint
from torch import Tensor
from torch.func import jvp, vjp, vmap

from rfdist.core.options import DEFAULTS, EstimatorOptions, Probe, merge_options

__all__ = [
    "CGInfo",
    "GramCache",
    "ReverseLinearization",
    "TangentOps",
    "VolumeStats",
    "conjugate_gradient",
    "gram_inverse",
    "gram_preconditioner",
    "jacobian_and_output",
    "logdet_column",
    "logdet_exact",
    "logdet_surrogate",
]


class TangentOps(NamedTuple):
    r"""Hand-written derivatives of ``fn`` (from :class:`~rfdist.core.flows.Bijection` layers).

    Attributes:
        push: ``(z (B, d), t (K, B, d)) -> (fn(z) (B, D), J t (K, B, D))``, differentiable in
            ``z`` and the parameters (one primal pass shared by all ``K`` tangents).
        linearize: ``(z, differentiable=False) -> (fn(z), jvp, vjp)``: :math:`t\mapsto Jt`
            ``(K, B, d)→(K, B, D)`` and :math:`u\mapsto J^\top u` from caches of one primal
            pass, plain tensor ops; detached unless ``differentiable`` (then products taken
            with autograd on are differentiable in ``z`` and the parameters, as ``push``'s).

    When given, the estimators use these instead of ``torch.func`` / autograd products: the
    same numbers, without per-op Python dispatch of forward-mode AD (the main cost at small
    shapes) and without re-running the primal in every CG matvec.
    """

    push: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    linearize: Callable[..., tuple[Tensor, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]]


@dataclass
class VolumeStats:
    """Diagnostics an estimator fills in when passed as ``stats=``.

    Fields hold device tensors (reading them with ``.item()`` synchronises, so do it when
    logging, not inside a loop). ``None`` means "not computed by this estimator".

    Attributes:
        cg_iterations: mean CG iterations per system (0-dim tensor).
        cg_max_iterations: iterations of the slowest system (0-dim tensor).
        cg_residual: largest final relative residual ``‖b − A x‖ / ‖b‖`` (0-dim tensor).
        matvecs: ``JᵀJv`` products (jvp + vjp pairs) spent in CG, a host integer.
        tangent_passes: forward-mode tangent passes spent (jvp evaluations), a host integer.
        jitter: per-row diagonal jitter added before Cholesky (``(B,)``; zeros when none).
    """

    cg_iterations: Tensor | None = None
    cg_max_iterations: Tensor | None = None
    cg_residual: Tensor | None = None
    matvecs: int = 0
    tangent_passes: int = 0
    jitter: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def as_scalars(self) -> dict[str, float]:
        """Every populated statistic as a Python float (one host sync for all of them)."""
        names, values = [], []
        for name in ("cg_iterations", "cg_max_iterations", "cg_residual"):
            value = getattr(self, name)
            if value is not None:
                names.append(name)
                values.append(value.detach().float().reshape(()))
        if self.jitter is not None:
            names += ["jitter_max", "jitter_rows"]
            values += [self.jitter.detach().float().max(), (self.jitter > 0).sum().float()]
        out = dict(zip(names, torch.stack(values).tolist(), strict=True)) if values else {}
        if self.matvecs:
            out["matvecs"] = float(self.matvecs)
        if self.tangent_passes:
            out["tangent_passes"] = float(self.tangent_passes)
        return out


class CGInfo(NamedTuple):
    """What :func:`conjugate_gradient` reports, per system (leading dimension of ``b``).

    Attributes:
        iterations: ``(N,)`` iterations each system ran before meeting the tolerance.
        residual: ``(N,)`` final relative residual ``‖b − A x‖ / ‖b‖`` (recursively updated).
        converged: ``(N,)`` whether the tolerance was met.
        matvecs: number of ``matvec`` calls made (a host integer; no sync needed).
    """

    iterations: Tensor
    residual: Tensor
    converged: Tensor
    matvecs: int


class _CGRun:
    """The tensors of one batched (preconditioned) CG solve; :meth:`step` never syncs the host."""

    def __init__(
        self,
        matvec: Callable[[Tensor], Tensor],
        b: Tensor,
        tol: float,
        x0: Tensor | None,
        preconditioner: Callable[[Tensor], Tensor] | None,
    ) -> None:
        self.matvec, self.tol, self.preconditioner, self.matvecs = matvec, tol, preconditioner, 0
        self.reduce_dims = tuple(range(1, b.ndim))
        self.column = (b.shape[0],) + (1,) * (b.ndim - 1)
        self.b_norm = self.dot(b, b).sqrt().clamp_min(torch.finfo(b.dtype).tiny)
        if x0 is None:
            self.x, self.r = torch.zeros_like(b), b.clone()
        else:
            self.x = x0.clone()
            self.r = b - self.apply(self.x)
        z = self.precondition(self.r)
        self.p, self.rz = z, self.dot(self.r, z)
        self.residual = self.dot(self.r, self.r).sqrt() / self.b_norm
        self.active = self.residual > tol
        self.iterations = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)

    def dot(self, u: Tensor, v: Tensor) -> Tensor:
        """Per-system inner products, ``(N,)``."""
        return (u * v).sum(self.reduce_dims) if self.reduce_dims else u * v

    def precondition(self, r: Tensor) -> Tensor:
        return r if self.preconditioner is None else self.preconditioner(r)

    def apply(self, v: Tensor) -> Tensor:
        """The operator on ``v``, counted."""
        self.matvecs += 1
        return self.matvec(v)

    def step(self) -> None:
        """One CG iteration; systems already solved (or with ``pᵀAp <= 0``) stay as they are."""
        ap = self.apply(self.p)
        pap = self.dot(self.p, ap)
        ok = self.active & (pap > 0)
        alpha = torch.where(ok, self.rz / torch.where(ok, pap, 1.0), 0.0)
        self.x = self.x + alpha.view(self.column) * self.p
        self.r = self.r - alpha.view(self.column) * ap
        self.residual = torch.where(self.active, self.dot(self.r, self.r).sqrt() / self.b_norm, self.residual)
        self.iterations = self.iterations + self.active.long()
        self.active = ok & (self.residual > self.tol)
        z = self.precondition(self.r)
        rz_new = self.dot(self.r, z)
        beta = torch.where(self.active, rz_new / torch.where(self.rz > 0, self.rz, 1.0), 0.0)
        self.p = z + beta.view(self.column) * self.p
        self.rz = rz_new

    def info(self) -> CGInfo:
        return CGInfo(self.iterations, self.residual, self.residual <= self.tol, self.matvecs)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    tol: float = DEFAULTS.cg_tol,
    max_iters: int | None = None,
    x0: Tensor | None = None,
    check_every: int = DEFAULTS.check_every,
    preconditioner: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, CGInfo]:
    r"""Solve :math:`A x = b` for a batch of SPD systems by (preconditioned) conjugate gradient.

    The leading dimension of ``b`` indexes independent systems; every other dimension is one
    system's unknowns. ``matvec`` maps a tensor shaped like ``b`` to :math:`A` applied to each
    system. Each system stops updating once its relative residual drops below ``tol`` (a mask,
    not a branch), so the loop never asks the host about convergence per iteration: it checks
    whether *all* systems are done only every ``check_every`` iterations (``0`` = never, i.e. a
    fixed budget of ``max_iters``); a budget of at most ``check_every`` iterations never syncs.

    Arguments:
        matvec: the operator :math:`A`, batched over systems.
        b: right-hand sides, shape ``(N, *)``.
        tol: relative residual ``‖b − A x‖ / ‖b‖`` at which a system counts as solved.
        max_iters: iteration budget (default: the number of unknowns per system).
        x0: optional warm start (same shape as ``b``); costs one extra matvec.
        check_every: iterations between the (host-synchronising) all-converged checks.
        preconditioner: optional :math:`M^{-1}` (maps residuals to preconditioned residuals).

    Returns:
        The solution (shape of ``b``) and a :class:`CGInfo`.

    Example:
        >>> A = torch.tensor([[[4.0, 1.0], [1.0, 3.0]]])
        >>> x, info = conjugate_gradient(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1),
        ...                              torch.tensor([[1.0, 2.0]]), tol=1e-6)
        >>> torch.allclose(A[0] @ x[0], torch.tensor([1.0, 2.0]), atol=1e-5)
        True
    """
    if tol < 0:
        raise ValueError(f"conjugate_gradient: tol must be >= 0, got {tol}")
    unknowns = b[0].numel() if b.shape[0] else 0
    max_iters = unknowns if max_iters is None else int(max_iters)
    if max_iters < 0:
        raise ValueError(f"conjugate_gradient: max_iters must be >= 0, got {max_iters}")
    run = _CGRun(matvec, b, tol, x0, preconditioner)
    for i in range(max_iters):
        if check_every and i and i % check_every == 0 and not bool(run.active.any()):
            break
        run.step()
    return run.x, run.info()


def _check_inputs(z: Tensor, name: str) -> None:
    if z.ndim != 2:
        raise ValueError(f"{name}: z must have shape (B, d), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name}: z must be a floating-point tensor, got {z.dtype}")


def jacobian_and_output(
    fn: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    chunk_size: int | None = None,
    checkpoint: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """``fn(z)`` ``(B, D)`` and its per-row Jacobian ``(B, D, d)`` by vmapped forward-mode AD.

    One batched pass pushes all ``d`` basis tangents through ``fn`` at once (the primal is
    computed once per chunk); ``chunk_size`` caps how many tangents go through together.
    Chunking alone does not bound a *training* step's memory (every chunk's graph is kept for
    backward), so with ``checkpoint`` (default: whenever chunking and autograd is recording)
    each chunk is recomputed in backward instead of stored: peak memory is then one chunk's
    graph, at the price of one more tangent pass. Differentiable either way.
    """
    _check_inputs(z, "jacobian_and_output")
    batch, d = z.shape
    basis = torch.eye(d, dtype=z.dtype, device=z.device).unsqueeze(1).expand(d, batch, d)
    push = vmap(lambda t: jvp(fn, (z,), (t,)), out_dims=(None, 0))
    chunk = d if chunk_size is None else max(1, int(chunk_size))
    if checkpoint is None:
        checkpoint = chunk < d and torch.is_grad_enabled()

    def run(tangents: Tensor) -> tuple[Tensor, Tensor]:
        if tangents.shape[0] == 1:  # a single tangent: plain jvp, no vmap overhead
            out, jac = jvp(fn, (z,), (tangents[0],))
            return out, jac.unsqueeze(0)
        return push(tangents)

    outputs, columns = None, []
    for index, tangents in enumerate(basis.split(chunk)):
        if checkpoint and index > 0:  # the first chunk's primal is the (kept) output
            _, jac = torch.utils.checkpoint.checkpoint(run, tangents, use_reentrant=False)
        elif checkpoint:
            out, jac = torch.utils.checkpoint.checkpoint(run, tangents, use_reentrant=False)
        else:
            out, jac = run(tangents)
        outputs = out if outputs is None else outputs
        columns.append(jac)
    jacobian = torch.cat(columns).permute(1, 2, 0)  # (d, B, D) -> (B, D, d)
    return outputs, jacobian


def _cholesky_logdet(gram: Tensor, max_tries: int) -> tuple[Tensor, Tensor]:
    """log det of SPD matrices ``(B, d, d)`` by Cholesky, retrying failed rows with jitter.

    The jitter grows by 100× per try, starting at ``sqrt(eps)``·mean-diagonal; rows still not
    positive definite after ``max_tries`` give NaN (the caller's non-finite guard sees them).
    One host sync per call decides whether any retry is needed.
    """
    chol, info = torch.linalg.cholesky_ex(gram)
    jitter = torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device)
    if max_tries > 0 and bool((info > 0).any()):
        scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(torch.finfo(gram.dtype).tiny)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        level = math.sqrt(torch.finfo(gram.dtype).eps)
        for _ in range(max_tries):
            failed = info > 0
            jitter = torch.where(failed, level * scale, jitter)
            retry, retry_info = torch.linalg.cholesky_ex(gram + jitter[:, None, None] * eye)
            chol = torch.where(failed[:, None, None], retry, chol)
            info = torch.where(failed, retry_info, info)
            level *= 100.0
            if not bool((info > 0).any()):
                break
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet = torch.where(info > 0, torch.full_like(logdet, float("nan")), logdet)
    return logdet, jitter


def logdet_exact(
    fn: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    chunk_size: int | None = None,
    max_jitter_tries: int = DEFAULTS.max_jitter_tries,
    stats: VolumeStats | None = None,
    return_output: bool = False,
    checkpoint: bool | None = None,
    tangents: TangentOps | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Exact :math:`\log\det(J^\top J)` per row of ``z``, differentiable in ``z`` and parameters.

    Arguments:
        fn: maps ``(B, d)`` to ``(B, D)`` row-independently (an ``nn.Module`` or any callable
            built from ``torch.func``-compatible ops).
        z: points, shape ``(B, d)``.
        chunk_size: tangents per vmapped pass (bounds memory; ``None`` = all ``d`` at once).
        checkpoint: recompute chunks in backward rather than store them (default: when
            chunking under autograd; see :func:`jacobian_and_output`).
        max_jitter_tries: Cholesky retries with growing diagonal jitter for rows that fail.
        stats: if given, receives ``tangent_passes`` and the per-row ``jitter`` used.
        return_output: also return ``fn(z)`` (computed in the same pass, for free).
        tangents: hand-written derivatives of ``fn`` (used unless ``chunk_size`` is set).

    Returns:
        ``(B,)`` log-determinants (and ``fn(z)`` if ``return_output``).

    Example:
        >>> decoder = torch.nn.Linear(2, 5)
        >>> logdet_exact(decoder, torch.randn(8, 2)).shape
        torch.Size([8])
    """
    if tangents is not None and chunk_size is None:
        _check_inputs(z, "logdet_exact")
        d = z.shape[1]
        basis = torch.eye(d, dtype=z.dtype, device=z.device).unsqueeze(1).expand(d, z.shape[0], d)
        output, columns = tangents.push(z, basis)  # (B, D), (d, B, D)
        gram = None if d == 1 else torch.einsum("ibk,jbk->bij", columns, columns)
    else:
        output, jacobian = jacobian_and_output(fn, z, chunk_size=chunk_size, checkpoint=checkpoint)
        columns = jacobian.permute(2, 0, 1)  # (d, B, D)
        gram = None if z.shape[1] == 1 else jacobian.transpose(-1, -2) @ jacobian
    if gram is None:  # d = 1: JᵀJ is the scalar ‖J‖²; no Cholesky, no host sync
        logdet, jitter = logdet_column(columns[0]), z.new_zeros(z.shape[0])
    else:
        logdet, jitter = _cholesky_logdet(gram, max_jitter_tries)
    if stats is not None:
        stats.tangent_passes += z.shape[1]
        stats.jitter = jitter
    return (logdet, output) if return_output else logdet


def logdet_column(column: Tensor) -> Tensor:
    r""":math:`\log\det(J^\top J) = \log\lVert J\rVert^2` per row for a one-column Jacobian
    ``(B, D)`` (``d = 1``): a sum of squares and a log, differentiable. A zero column gives
    ``-inf``, which a training step's finiteness check skips."""
    return column.square().sum(-1).log()


def sample_probes(
    shape: tuple[int, ...],
    probe: Probe,
    *,
    like: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hutchinson probes with identity covariance: standard Gaussian or Rademacher (±1)."""
    if probe == "gaussian":
        return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)
    if probe == "rademacher":
        bits = torch.randint(0, 2, shape, device=like.device, generator=generator)
        return bits.to(like.dtype) * 2 - 1
    raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")


class ReverseLinearization:
    r"""Matrix-free :math:`v\mapsto Jv` and :math:`u\mapsto J^\top u` from reverse mode only.

    ``fn(z)`` is evaluated once with a graph; :math:`J^\top w` is taken once with
    ``create_graph`` at a dummy ``w`` (it is linear in ``w``), and then
    :math:`Jv = \partial(w^\top J v)/\partial w` is one backward through that backward
    ("double-vjp"). Every product afterwards is a plain backward pass: on CPU this is several
    times cheaper than ``torch.func.jvp`` (whose forward-mode rules decompose into Python
    references), and it needs no forward-mode rule at all. Products are detached.

    Attributes:
        output: ``fn(z)`` with its graph (differentiable in ``z`` and the parameters).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], z: Tensor) -> None:
        with torch.enable_grad():
            self.z = z if z.requires_grad else z.detach().requires_grad_()
            self.output = fn(self.z)
            self._w = torch.zeros_like(self.output, requires_grad=True)
            (self._jt_w,) = torch.autograd.grad(self.output, self.z, self._w, create_graph=True)

    def jvp(self, v: Tensor) -> Tensor:
        """:math:`Jv` per row, ``(N, d) -> (N, D)``."""
        return torch.autograd.grad(self._jt_w, self._w, v, retain_graph=True)[0].detach()

    def vjp(self, u: Tensor, *, create_graph: bool = False) -> Tensor:
        """:math:`J^\top u` per row, ``(N, D) -> (N, d)`` (differentiable with ``create_graph``)."""
        out = torch.autograd.grad(self.output, self.z, u, retain_graph=True, create_graph=create_graph)[0]
        return out if create_graph else out.detach()

    def gram_matvec(self, v: Tensor) -> Tensor:
        """:math:`J^\top J v` per row."""
        return self.vjp(self.jvp(v))


def gram_inverse(
    fn: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    rows: int = 8,
    ridge: float = DEFAULTS.precond_ridge,
    tangents: TangentOps | None = None,
) -> Tensor:
    r""":math:`M^{-1}` (``d × d``) for :math:`M` = the mean :math:`J^\top J` over the first ``rows`` rows.

    One vmapped forward-mode pass over ``d`` tangents on ``rows`` rows (``d·rows`` tangent
    rows, about one matvec's worth when ``rows·d ≈ 2B``) gives exact Jacobians there; their
    mean Gram matrix (plus ``ridge`` × its mean diagonal, which keeps it SPD) is shared by the
    whole batch. It captures what the rows have in common (the flow's scale per latent
    direction), which is most of the conditioning of a coupling flow's :math:`J^\top J`.
    No host sync (``cholesky_ex``).
    """
    with torch.no_grad():
        sub = z.detach()[: max(1, int(rows))]
        if tangents is not None:
            d = sub.shape[1]
            basis = torch.eye(d, dtype=sub.dtype, device=sub.device).unsqueeze(1).expand(d, sub.shape[0], d)
            columns = tangents.push(sub, basis)[1]  # (d, rows, D)
            gram = torch.einsum("ibk,jbk->ij", columns, columns) / sub.shape[0]
        else:
            _, jac = jacobian_and_output(fn, sub, checkpoint=False)
            gram = (jac.transpose(-1, -2) @ jac).mean(0)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        gram = gram + ridge * gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny) * eye
        chol, _ = torch.linalg.cholesky_ex(gram)
        return torch.cholesky_inverse(chol)


def gram_preconditioner(
    fn: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    rows: int = 8,
    ridge: float = DEFAULTS.precond_ridge,
    tangents: TangentOps | None = None,
) -> Callable[[Tensor], Tensor]:
    r"""The map :math:`r \mapsto r M^{-1}` of :func:`gram_inverse` (CG's preconditioner)."""
    inverse = gram_inverse(fn, z, rows=rows, ridge=ridge, tangents=tangents)
    return lambda r: r @ inverse


class GramCache:
    r"""The Gram preconditioner's :math:`M^{-1}` carried across training steps.

    A fresh :func:`gram_inverse` costs ``d·rows`` tangent rows — at 64×64×3 with d = 64 and
    B = 16 one row is already 2 matvec-equivalents, a third of the step's volume-term budget.
    :math:`M` only has to capture what :math:`J^\top J` has in common across rows (the flow's
    scale per latent direction), which changes slowly with the parameters, so this cache
    rebuilds it every ``every`` calls (on the current batch's first rows) and reuses it in
    between. Any SPD :math:`M` leaves CG's solution unchanged; a stale one can only make a
    fixed budget of iterations less accurate (``bench/estimators.py``'s ``grad err`` measures
    it). Also rebuilt when ``d``, dtype or device change. Not part of a checkpoint: a resumed
    run rebuilds it on its first step.
    """

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"GramCache: every must be >= 1, got {every}")
        self.every = int(every)
        self.inverse: Tensor | None = None
        self.calls = 0  # calls since the last rebuild

    def get(self, build: Callable[[], Tensor], like: Tensor) -> tuple[Tensor, bool]:
        """``(M⁻¹, rebuilt)``: the cached inverse, or ``build()``'s when due or incompatible."""
        d = like.shape[-1]
        stale = (
            self.inverse is None
            or self.calls >= self.every
            or self.inverse.shape[-1] != d
            or self.inverse.dtype != like.dtype
            or self.inverse.device != like.device
        )
        if stale:
            self.inverse, self.calls = build(), 0
        self.calls += 1
        return self.inverse, stale


def logdet_surrogate(
    fn: Callable[[Tensor], Tensor],
    z: Tensor,
    options: EstimatorOptions | None = None,
    *,
    generator: torch.Generator | None = None,
    stats: VolumeStats | None = None,
    return_output: bool = False,
    probes: Tensor | None = None,
    tangents: TangentOps | None = None,
    precond_cache: GramCache | None = None,
    **overrides: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""A per-row scalar whose gradient estimates :math:`\nabla\log\det(J^\top J)` without bias.

    With :math:`K` probes :math:`\varepsilon_k` per row and :math:`x_k = A^{-1}\varepsilon_k`
    solved by CG at the detached point (matvec :math:`v\mapsto J^\top(Jv)`), the surrogate is
    :math:`\tfrac1K\sum_k (J x_k)\cdot(J\varepsilon_k)` with :math:`x_k,\varepsilon_k` held
    constant; its gradient is :math:`\tfrac1K\sum_k x_k^\top(\nabla A)\varepsilon_k`, an unbiased
    estimate of :math:`\mathrm{tr}(A^{-1}\nabla A)` up to the CG tolerance. The *value* is not
    the log-determinant: never report it as a likelihood.

    Arguments:
        fn: maps ``(B, d)`` to ``(B, D)`` row-independently.
        z: points, shape ``(B, d)``.
        options: the estimator settings (default :data:`~rfdist.core.options.DEFAULTS`, those of
            ``rfdist train``); ``num_samples``, ``cg_tol``, ``cg_max_iters``, ``probe``,
            ``matvec``, ``preconditioner``, ``precond_rows``, ``check_every`` matter here.
        **overrides: any :class:`~rfdist.core.options.EstimatorOptions` field, e.g.
            ``num_samples=4, cg_tol=1e-6`` (an unknown name is a ``TypeError``).
        generator: optional RNG for the probes.
        stats: if given, receives CG iterations, residual and matvec counts.
        return_output: also return ``fn(z)`` (from the same differentiable pass).
        probes: ``(K, B, d)`` probes to use instead of drawing ``num_samples`` (a test seam:
            all ``2^d`` Rademacher vectors make the estimate exact).
        tangents: hand-written derivatives of ``fn``; when given, ``matvec`` is moot: CG runs
            on the cached linearisation and the surrogate is the forward-mode form.
        precond_cache: a :class:`GramCache` that keeps the ``"gram"`` preconditioner across
            calls (rebuilt every ``precond_cache.every`` calls); ``stats`` then reports its
            cost amortised over that period.

    ``matvec="jvp"``: forward-mode jvp + one reused vjp pullback; ``"vjp"``: reverse mode only
    (:class:`ReverseLinearization`; cheaper on CPU, same estimate). ``preconditioner="gram"``:
    CG on :math:`M^{-1}A` (:func:`gram_preconditioner`), same solution, fewer iterations.

    Returns:
        ``(B,)`` surrogate values (and ``fn(z)`` if ``return_output``).

    Example:
        >>> decoder = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh())
        >>> z = torch.randn(8, 2)
        >>> logdet_surrogate(decoder, z, num_samples=2).sum().backward()
    """
    _check_inputs(z, "logdet_surrogate")
    opts = merge_options(options, overrides, where="logdet_surrogate")
    eps = _surrogate_probes(z, opts, probes, generator)
    precond, precond_cost = _surrogate_preconditioner(fn, z, opts, tangents, precond_cache)
    cg = {
        "tol": opts.cg_tol,
        "max_iters": opts.cg_budget(z.shape[1]),
        "check_every": opts.check_every,
        "preconditioner": precond,
    }
    if tangents is not None:
        surrogate, output, info = _surrogate_tangents(tangents, z, eps, cg)
    elif opts.matvec == "vjp":
        surrogate, output, info = _surrogate_reverse(fn, z, eps, cg)
    else:
        surrogate, output, info = _surrogate_forward(fn, z, eps, cg)
    _record_cg(stats, info, z, precond_cost)
    return (surrogate, output) if return_output else surrogate


def _surrogate_probes(
    z: Tensor, opts: EstimatorOptions, probes: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    """The ``(K, B, d)`` probes: ``probes`` checked and cast, else ``num_samples`` drawn."""
    batch, d = z.shape
    if probes is None:
        return sample_probes((int(opts.num_samples), batch, d), opts.probe, like=z, generator=generator)
    if probes.ndim != 3 or tuple(probes.shape[1:]) != (batch, d):
        raise ValueError(
            f"logdet_surrogate: probes must have shape (K, {batch}, {d}), got {tuple(probes.shape)}"
        )
    return probes.to(dtype=z.dtype, device=z.device)


def _surrogate_preconditioner(
    fn: Callable[[Tensor], Tensor],
    z: Tensor,
    opts: EstimatorOptions,
    tangents: TangentOps | None,
    cache: GramCache | None,
) -> tuple[Callable[[Tensor], Tensor] | None, float]:
    """CG's preconditioner (``None`` unless ``gram``) and its cost in tangent rows per call."""
    batch, d = z.shape
    if opts.preconditioner != "gram" or d == 1:  # d = 1: CG's first step is already exact
        return None, 0
    rows = opts.gram_rows(d, batch)
    build = lambda: gram_inverse(fn, z, rows=rows, ridge=opts.precond_ridge, tangents=tangents)  # noqa: E731
    if cache is None:
        inverse, every = build(), 1
    else:
        inverse, every = cache.get(build, z)[0], cache.every
    return (lambda r: r @ inverse), min(rows, batch) * d / every  # tangent rows, amortised


def _surrogate_forward(
    fn: Callable[[Tensor], Tensor], z: Tensor, eps: Tensor, cg: dict[str, Any]
) -> tuple[Tensor, Tensor, CGInfo]:
    """:func:`logdet_surrogate` in forward mode: CG's matvec is a ``jvp`` then one reused
    ``vjp`` pullback (built once per solve); the surrogate pushes ``[x_k; ε_k]`` by ``2K`` jvps."""
    k, batch, d = eps.shape
    z_const = z.detach()
    with torch.no_grad():
        _, pullback = vjp(fn, z_const)

        def push(t: Tensor) -> Tensor:
            return jvp(fn, (z_const,), (t,))[1]

        many_push = vmap(push)
        many_pull = vmap(lambda c: pullback(c)[0])

        def gram_matvec(v: Tensor) -> Tensor:  # (K*B, d) -> (K*B, d)
            v = v.view(k, batch, d)
            if k == 1:
                out = pullback(push(v[0]))[0].unsqueeze(0)
            else:
                out = many_pull(many_push(v))
            return out.reshape(k * batch, d)

        solution, info = conjugate_gradient(gram_matvec, eps.reshape(k * batch, d), **cg)
    solution = solution.view(k, batch, d)
    constants = torch.cat([solution, eps])  # (2K, B, d)
    output, pushed = vmap(lambda t: jvp(fn, (z,), (t,)), out_dims=(None, 0))(constants)
    surrogate = (pushed[:k] * pushed[k:]).sum(-1).mean(0)
    return surrogate, output, info


def _record_cg(stats: VolumeStats | None, info: CGInfo, z: Tensor, precond_cost: float) -> None:
    """Add one CG solve's counters to ``stats`` (device tensors: no host sync)."""
    if stats is None:
        return
    stats.cg_iterations = info.iterations.float().mean()
    stats.cg_max_iterations = info.iterations.max().float()
    stats.cg_residual = info.residual.max()
    stats.matvecs += info.matvecs
    stats.tangent_passes += info.matvecs + 2
    if precond_cost:
        stats.extra["precond_tangent_rows"] = z.new_tensor(float(precond_cost))


def _surrogate_reverse(
    fn: Callable[[Tensor], Tensor], z: Tensor, eps: Tensor, cg: dict[str, Any]
) -> tuple[Tensor, Tensor, CGInfo]:
    r""":func:`logdet_surrogate` with reverse-mode products only.

    The surrogate is :math:`\tfrac1K\sum_k \langle J^\top c_k, x_k\rangle +
    \langle J^\top e_k, \varepsilon_k\rangle` with constants :math:`c_k = J\varepsilon_k`,
    :math:`e_k = Jx_k`: its gradient is :math:`x_k^\top(\nabla J^\top J)\varepsilon_k`, as for
    the forward-mode form, from two differentiable vjps instead of ``2K`` jvps.
    """
    k, batch, d = eps.shape
    zk = z if k == 1 else z.repeat(k, 1)  # all K·B systems in one graph
    lin = ReverseLinearization(fn, zk)
    rhs = eps.reshape(k * batch, d)
    solution, info = conjugate_gradient(lin.gram_matvec, rhs, **cg)
    solution = solution.detach()
    push_eps, push_x = lin.jvp(rhs), lin.jvp(solution)
    surrogate = (lin.vjp(push_eps, create_graph=True) * solution).sum(-1) + (
        lin.vjp(push_x, create_graph=True) * rhs
    ).sum(-1)
    # value as in the forward-mode form, (Jx)·(Jε); gradient from the vjp terms above
    surrogate = surrogate - surrogate.detach() + (push_eps * push_x).sum(-1)
    surrogate = surrogate.view(k, batch).mean(0)
    return surrogate, lin.output[:batch], info


def _surrogate_tangents(
    tangents: TangentOps, z: Tensor, eps: Tensor, cg: dict[str, Any]
) -> tuple[Tensor, Tensor, CGInfo]:
    r""":func:`logdet_surrogate` on hand-written derivatives.

    One differentiable primal pass caches the linearisation; CG's matvec :math:`J^\top(Jv)`
    runs on it without autograd (all ``K·B`` systems in one product); then the ``2K`` constant
    tangents :math:`[x_k; \varepsilon_k]` go through the same linearisation with autograd on,
    and the surrogate is :math:`\tfrac1K\sum_k (Jx_k)\cdot(J\varepsilon_k)`, as in the
    ``jvp`` form.
    """
    k, batch, d = eps.shape
    output, jvp_, vjp_ = tangents.linearize(z, True)
    with torch.no_grad():

        def gram_matvec(v: Tensor) -> Tensor:  # (K*B, d) -> (K*B, d)
            return vjp_(jvp_(v.view(k, batch, d))).reshape(k * batch, d)

        solution, info = conjugate_gradient(gram_matvec, eps.reshape(k * batch, d), **cg)
    pushed = jvp_(torch.cat([solution.view(k, batch, d), eps]))
    surrogate = (pushed[:k] * pushed[k:]).sum(-1).mean(0)
    return surrogate, output, info
