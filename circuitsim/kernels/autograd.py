"""``torch.autograd.Function`` around the compiled per-sample core (:mod:`circuitsim.kernels.core`).

Forward: the compiled Newton loop of a formulation's generated module, saving the trajectory of
its unknowns ``z`` (Nz doubles per sample) and state checkpoints.  Backward: the compiled
adjoint loop gives the gradients of the linear maps ``A..H``, of the formulation's matrices
``P``, of the input and the initial state, and -- in the same loop, through the formulation's
``fm_vjp`` -- the device parameter gradient ``dL/dtheta`` (for DK ``sum_n mu[n] . df/dtheta(v[n])``
with ``mu[n] = dL/df[n]``).  That gradient is w.r.t. every theta entry, the derived slots of the
device vectors included; autograd carries it to the raw parameters through the torch functions
that build those slots.  Autograd also carries every matrix gradient to the component values.

:func:`run_step` runs any formulation on the core; :func:`run_state_space` is the DK recursion
(the nine matrices and a :class:`~circuitsim.kernels.nonlinearity.Nonlinearity`).
:func:`theta_gradient` computes the DK parameter gradient in torch (:meth:`Nonlinearity.torch_eval`
and autograd): the test oracle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from circuitsim.kernels import codegen, core
from circuitsim.kernels.core import ST_DAMPED, ST_HOMOTOPY, ST_ITER, ST_MAXITER, KernelOptions
from circuitsim.kernels.nonlinearity import Nonlinearity
from circuitsim.kernels.statespace import check_matrices
from circuitsim.solvers.newton import NewtonError as _NewtonError

DTYPE = torch.float64
MATRIX_NAMES = ("A", "B", "C", "D", "E", "F", "G", "H", "K")
THETA_CHUNK = 1 << 15  # samples per torch_eval call when forming dL/dtheta
DEFAULT_OPTIONS = KernelOptions()  # the options of run_step / run_state_space when none are given


class NewtonError(_NewtonError):
    """The compiled Newton solve failed after all fallbacks.

    ``sample`` is the sample index (counted from the start of the stream when the caller
    passes ``sample_offset``), ``time`` the time in seconds (when the sample rate is known),
    ``batch`` the batch item.
    """

    def __init__(
        self, sample_index: int, time_s: float | None = None, batch_index: int | None = None, detail: str = ""
    ):
        where = f"Newton failed at sample {sample_index}"
        if time_s is not None:
            where += f" (t = {time_s:.9g} s)"
        if batch_index is not None:
            where += f" in batch item {batch_index}"
        RuntimeError.__init__(self, where + (f": {detail}" if detail else ""))
        self.sample = sample_index
        self.time = time_s
        self.batch = batch_index


def _raise_if_failed(res: core.ForwardResult, sample_rate: float | None, sample_offset: int) -> None:
    bad = res.failed
    if bad is None:
        return
    b, n = bad
    n += sample_offset
    detail = "no convergence after plain Newton, damped Newton and homotopy from the previous sample"
    raise NewtonError(n, None if sample_rate is None else n / float(sample_rate), b, detail)


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(dtype=DTYPE, device="cpu").numpy())


def stats_dict(stats: np.ndarray) -> dict[str, int]:
    """Newton statistics summed (``iterations``, fallbacks) or maxed over the batch."""
    return {
        "iterations": int(stats[:, ST_ITER].sum()),
        "max_iterations": int(stats[:, ST_MAXITER].max()) if len(stats) else 0,
        "damped_fallbacks": int(stats[:, ST_DAMPED].sum()),
        "homotopy_fallbacks": int(stats[:, ST_HOMOTOPY].sum()),
        "samples": int(stats[:, core.ST_SAMPLES].sum()),
    }


def theta_gradient(
    nl: Nonlinearity, theta: torch.Tensor, v: np.ndarray, mu: np.ndarray, chunk: int = THETA_CHUNK
) -> torch.Tensor:
    """``sum_{b,n} mu[b,n] . df/dtheta(v[b,n])`` with torch autograd, ``chunk`` samples at a time.

    The oracle for the compiled gradient (slow: hundreds of tensor operations per sample).  The
    torch device equations recompute the derived slots of device vectors from the raw entries,
    so this gradient sits on the raw entries only (the derived slots get 0); after the chain rule
    through ``diode_params_torch`` / ``bjt_params_torch`` it equals the compiled one.
    """
    th = theta.detach().to(DTYPE).requires_grad_(True)
    total = torch.zeros_like(th)
    T = v.shape[1]
    with torch.enable_grad():
        for s in range(0, T, chunk):
            vv = torch.from_numpy(np.ascontiguousarray(v[:, s : s + chunk]))
            mm = torch.from_numpy(np.ascontiguousarray(mu[:, s : s + chunk]))
            f = nl.torch_eval(vv, th)
            if not f.requires_grad:
                continue
            (g,) = torch.autograd.grad(f, th, mm, allow_unused=True)
            if g is not None:
                total = total + g
    return total.to(theta.dtype)


@dataclass(frozen=True)
class StepSpec:
    """The non-tensor arguments of :class:`StepFunction`: the generated ``module``, how many of
    the matrices are the linear maps (8: ``A..H``; the rest are ``P``), Newton ``options``, the
    first guess ``z_init`` and, for error messages, ``sample_rate`` (hertz) and ``sample_offset``."""

    module: ModuleType
    options: KernelOptions
    z_init: torch.Tensor | np.ndarray | None = None
    sample_rate: float | None = None
    sample_offset: int = 0
    n_lin: int = 8
    u_max: tuple[float, ...] | None = None  # the largest |u| of each item, where known (core.forward)

    def run(self, mats: Sequence[np.ndarray], theta: np.ndarray, u: np.ndarray, x0: np.ndarray, save: bool,
            head: np.ndarray | None = None) -> tuple[core.ForwardResult, np.ndarray]:
        """The compiled forward pass and its output (batch, T, Ny); raises :class:`NewtonError`.

        ``head`` (batch, Ny): an output row put before the run's, the output then (batch, 1 + T, Ny) with
        the kernel writing its rows straight after it (``core.forward``'s ``y_out``: no join, no copy)."""
        zi = self.z_init
        zi = _np(zi) if isinstance(zi, torch.Tensor) else zi
        out = None
        if head is not None:
            out = np.empty((u.shape[0], 1 + u.shape[1], head.shape[-1]))
            out[:, 0] = head
        res = core.forward(self.module, mats[: self.n_lin], mats[self.n_lin :], theta, u, x0, zi, self.options, save,
                           None if out is None else out[:, 1:], self.u_max)
        _raise_if_failed(res, self.sample_rate, self.sample_offset)
        return res, res.y if out is None else out


class StepFunction(torch.autograd.Function):
    """``y, x_final, warm, stats = StepFunction.apply(spec, theta, u, x0, head, A, ..., H, *P)``.

    Differentiable in ``theta``, ``u`` (batch, T, Nu), ``x0`` (batch, Nx), ``head`` and every matrix
    through ``y`` (batch, T, Ny) and ``x_final`` (batch, Nx).  ``head``: None, or an output row
    (batch, Ny) put before the run's, ``y`` then (batch, 1 + T, Ny) (:meth:`StepSpec.run`).  ``warm``
    (Newton warm start for the next block) and ``stats`` are not differentiable.  Raises
    :class:`NewtonError`.
    """

    @staticmethod
    def forward(
        ctx: Any, spec: StepSpec, theta: torch.Tensor, u: torch.Tensor, x0: torch.Tensor, head: torch.Tensor | None,
        *mats: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        mats_np = tuple(_np(m) for m in mats)
        th, un = _np(theta), _np(u)
        res, y = spec.run(mats_np, th, un, _np(x0), save=True, head=None if head is None else _np(head))
        ctx.spec = spec
        ctx.arrays = (mats_np, th, un, res)
        ctx.save_for_backward(theta)
        ctx.dtypes = (u.dtype, x0.dtype, None if head is None else head.dtype)
        warm = torch.from_numpy(res.warm)
        stats = torch.from_numpy(res.stats)
        ctx.mark_non_differentiable(warm, stats)
        return torch.from_numpy(y), torch.from_numpy(res.x_final), warm, stats

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor | None, gx: torch.Tensor | None, *_: Any) -> tuple[Any, ...]:
        mats, th, un, saved = ctx.arrays
        spec = ctx.spec
        need = ctx.needs_input_grad
        head = ctx.dtypes[2] is not None
        # with a head row, the run's rows are gy[:, 1:] (a view; contiguous where batch = 1)
        gy_np = np.zeros(saved.y.shape) if gy is None else _np(gy[:, 1:] if head else gy)
        gx_np = None if gx is None else _np(gx)
        want_theta = bool(need[1])
        res = core.backward(
            spec.module, mats[: spec.n_lin], mats[spec.n_lin :], th, un, saved, gy_np, gx_np, spec.options, want_theta,
            want_du=bool(need[2]), want_mu=False,
        )
        (theta,) = ctx.saved_tensors
        dhead = None
        if need[4]:
            dhead = (torch.zeros(saved.y.shape[0], saved.y.shape[2], dtype=ctx.dtypes[2]) if gy is None
                     else gy[:, 0].to(ctx.dtypes[2]))
        return (
            None,
            torch.from_numpy(res.dtheta).to(theta.dtype).reshape(theta.shape) if want_theta else None,
            torch.from_numpy(res.du).to(ctx.dtypes[0]) if need[2] else None,
            torch.from_numpy(res.dx0).to(ctx.dtypes[1]) if need[3] else None,
            dhead,
            *(torch.from_numpy(d) if n else None for d, n in zip(res.dmats, need[5:])),
        )


StateSpaceFunction = StepFunction  # the name the DK code used


def run_step(module: ModuleType, lin: Sequence[torch.Tensor], P: Sequence[torch.Tensor], theta: torch.Tensor,
        u: torch.Tensor, x0: torch.Tensor, *, sample_rate: float | None = None,
        z_init: torch.Tensor | np.ndarray | None = None, options: KernelOptions | None = None,
        sample_offset: int = 0, head: torch.Tensor | None = None, u_max: Sequence[float] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """Run a formulation on the core; differentiable when any input requires grad (and grad mode is on).

    ``module``: the generated module (:func:`circuitsim.kernels.codegen.step_module`); ``lin``:
    ``(A, ..., H)``; ``P``: the formulation's matrices; ``u`` (batch, T, Nu) input; ``x0`` (batch,
    Nx) or (Nx,) initial state; ``z_init``: first Newton guess (batch, Nz) or the ``final["v"]``
    of a previous block (streaming: identical to one long run).  Returns ``y`` (batch, T, Ny),
    ``final = {"x": state (batch, Nx), "v": warm start}`` and Newton statistics.  Raises
    :class:`NewtonError` naming the sample (offset by ``sample_offset``) and the time (when
    ``sample_rate`` in hertz is given).  ``head`` (batch, Ny): an output row put before the run's (e.g.
    the operating point's), ``y`` then (batch, 1 + T, Ny), written in place by the kernel (no join).
    ``u_max``: the largest ``|u|`` of each item, where the caller knows it (``core.forward``).
    """
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, T, Nu), got shape {tuple(u.shape)}")
    if len(lin) != 8:
        raise ValueError(f"expected the 8 linear maps A..H, got {len(lin)}")
    if x0.ndim == 1:
        x0 = x0.expand(u.shape[0], x0.shape[0])
    spec = StepSpec(module, options or DEFAULT_OPTIONS, z_init, sample_rate, sample_offset,
                    u_max=None if u_max is None else tuple(u_max))
    mats = (*lin, *P)
    if head is not None and head.shape != (u.shape[0], lin[3].shape[0]):
        raise ValueError(f"head must be (batch, Ny) = {(u.shape[0], lin[3].shape[0])}, got {tuple(head.shape)}")
    args = (theta, u, x0, *mats) if head is None else (theta, u, x0, head, *mats)
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        y, xT, warm, st = StepFunction.apply(spec, theta, u, x0, head, *mats)
        stats = st.numpy()
    else:
        res, yn = spec.run(tuple(_np(m) for m in mats), _np(theta), _np(u), _np(x0), save=False,
                           head=None if head is None else _np(head))
        y, xT, warm = (torch.from_numpy(a) for a in (yn, res.x_final, res.warm))
        stats = res.stats
    return y, {"x": xT, "v": warm}, stats_dict(stats)


def _matrices(matrices: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(matrices, Mapping):
        return tuple(matrices[k] for k in MATRIX_NAMES)
    mats = tuple(matrices)
    if len(mats) != 9:
        raise ValueError(f"expected the 9 matrices {MATRIX_NAMES}, got {len(mats)}")
    return mats


def run_state_space(matrices: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], theta: torch.Tensor,
        u: torch.Tensor, x0: torch.Tensor, nonlinearity: Nonlinearity, *, sample_rate: float | None = None,
        v_init: torch.Tensor | np.ndarray | None = None, options: KernelOptions | None = None,
        sample_offset: int = 0, module: ModuleType | None = None, head: torch.Tensor | None = None,
        u_max: Sequence[float] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """Run the DK recursion (:mod:`circuitsim.kernels.statespace`) on the core; differentiable.

    ``matrices``: ``(A, B, C, D, E, F, G, H, K)`` or a mapping by those names; ``u`` (batch, T, Nu)
    input (volts / amperes); ``x0`` (batch, Nx) or (Nx,) initial state; ``v_init``: first Newton
    guess (batch, Nv) or the ``final["v"]`` of a previous block (streaming: identical to one
    long run).  Returns ``y`` (batch, T, Ny), ``final = {"x": state (batch, Nx), "v": warm
    start}`` and Newton statistics.  Raises :class:`NewtonError` naming the sample (offset by
    ``sample_offset``) and the time (when ``sample_rate`` in hertz is given).  ``module``: a
    generated DK module of ``nonlinearity`` other than its own (``codegen.dk_module``), e.g. one
    built by ``codegen.step_module(nl.nb_source, statespace.dk_step(nl, max_omega))``.  ``head``, ``u_max``:
    as :func:`run_step`'s.
    """
    mats = _matrices(matrices)
    check_matrices(nonlinearity, mats, theta.numel())
    return run_step(
        module or codegen.dk_module(nonlinearity), mats[:8], mats[8:], theta, u, x0,
        sample_rate=sample_rate, z_init=v_init, options=options, sample_offset=sample_offset, head=head, u_max=u_max,
    )


__all__ = [
    "NewtonError",
    "StateSpaceFunction",
    "StepFunction",
    "StepSpec",
    "run_state_space",
    "run_step",
    "stats_dict",
    "theta_gradient",
]
