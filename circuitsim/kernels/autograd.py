"""``torch.autograd.Function`` around the compiled state-space loops.

Forward: :func:`circuitsim.kernels.statespace.forward` (numba, Newton per sample), saving the
port-voltage trajectory (Nv doubles per sample) and state checkpoints.  Backward: the
compiled adjoint loop :func:`circuitsim.kernels.statespace.backward` gives the gradients of
the nine matrices, the input and the initial state, and -- in the same loop, with the generated
``nl_vjp_theta`` -- the device parameter gradient ``dL/dtheta = sum_n mu[n] . df/dtheta(v[n])``
(``mu[n] = dL/df[n]``).  That gradient is w.r.t. every theta entry, the derived slots of the
device vectors included; autograd carries it to the raw parameters through
``diode_params_torch`` / ``bjt_params_torch``, which build those slots.  :func:`theta_gradient`
computes the same sum in torch (:meth:`Nonlinearity.torch_eval` and autograd): the test oracle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from circuitsim.kernels import statespace
from circuitsim.kernels.nonlinearity import Nonlinearity
from circuitsim.kernels.statespace import ST_DAMPED, ST_HOMOTOPY, ST_ITER, ST_MAXITER, KernelOptions
from circuitsim.solvers.newton import NewtonError as _NewtonError

DTYPE = torch.float64
MATRIX_NAMES = ("A", "B", "C", "D", "E", "F", "G", "H", "K")
THETA_CHUNK = 1 << 15  # samples per torch_eval call when forming dL/dtheta


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


def _raise_if_failed(res: statespace.ForwardResult, sample_rate: float | None, sample_offset: int) -> None:
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
        "samples": int(stats[:, statespace.ST_SAMPLES].sum()),
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


class StateSpaceFunction(torch.autograd.Function):
    """``y, x_final, warm, stats = StateSpaceFunction.apply(A, B, C, D, E, F, G, H, K, theta, u, x0,
    nonlinearity, options, v_init, sample_rate, sample_offset)``.

    Differentiable in the nine matrices, ``theta``, ``u`` (batch, T, Nu) and ``x0`` (batch, Nx)
    through ``y`` (batch, T, Ny) and ``x_final`` (batch, Nx).  ``warm`` (Newton warm start for
    the next block) and ``stats`` are not differentiable.  Raises :class:`NewtonError`.
    """

    @staticmethod
    def forward(
        ctx: Any,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        E: torch.Tensor,
        F: torch.Tensor,
        G: torch.Tensor,
        H: torch.Tensor,
        K: torch.Tensor,
        theta: torch.Tensor,
        u: torch.Tensor,
        x0: torch.Tensor,
        nonlinearity: Nonlinearity,
        options: KernelOptions | None = None,
        v_init: torch.Tensor | np.ndarray | None = None,
        sample_rate: float | None = None,
        sample_offset: int = 0,
    ) -> tuple[torch.Tensor, ...]:
        options = options or KernelOptions()
        mats = tuple(_np(m) for m in (A, B, C, D, E, F, G, H, K))
        th, un, xn = _np(theta), _np(u), _np(x0)
        vi = None if v_init is None else (_np(v_init) if isinstance(v_init, torch.Tensor) else v_init)
        res = statespace.forward(nonlinearity, mats, th, un, xn, vi, options, save=True)
        _raise_if_failed(res, sample_rate, sample_offset)
        ctx.nl = nonlinearity
        ctx.options = options
        ctx.arrays = (mats, th, un, res.v, res.checkpoints)
        ctx.save_for_backward(theta)
        ctx.dtypes = (u.dtype, x0.dtype)
        y = torch.from_numpy(res.y)
        xT = torch.from_numpy(res.x_final)
        warm = torch.from_numpy(res.warm)
        stats = torch.from_numpy(res.stats)
        ctx.mark_non_differentiable(warm, stats)
        return y, xT, warm, stats

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor | None, gx: torch.Tensor | None, *_: Any) -> tuple[Any, ...]:
        mats, th, un, v, ckpt = ctx.arrays
        batch, T = un.shape[:2]
        ny, nx = mats[3].shape
        gy_np = np.zeros((batch, T, ny)) if gy is None else _np(gy)
        gx_np = None if gx is None else _np(gx)
        want_theta = bool(ctx.needs_input_grad[9])
        res = statespace.backward(ctx.nl, mats, th, un, v, ckpt, gy_np, gx_np, ctx.options, theta_grad=want_theta)
        grads: list[Any] = [
            torch.from_numpy(d) if need else None for d, need in zip(res.dmats, ctx.needs_input_grad[:9])
        ]
        (theta,) = ctx.saved_tensors
        grads.append(torch.from_numpy(res.dtheta).to(theta.dtype).reshape(theta.shape) if want_theta else None)
        grads.append(torch.from_numpy(res.du).to(ctx.dtypes[0]) if ctx.needs_input_grad[10] else None)
        grads.append(torch.from_numpy(res.dx0).to(ctx.dtypes[1]) if ctx.needs_input_grad[11] else None)
        return (*grads, None, None, None, None, None)


def _matrices(matrices: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(matrices, Mapping):
        return tuple(matrices[k] for k in MATRIX_NAMES)
    mats = tuple(matrices)
    if len(mats) != 9:
        raise ValueError(f"expected the 9 matrices {MATRIX_NAMES}, got {len(mats)}")
    return mats


def run_state_space(
    matrices: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    theta: torch.Tensor,
    u: torch.Tensor,
    x0: torch.Tensor,
    nonlinearity: Nonlinearity,
    *,
    sample_rate: float | None = None,
    v_init: torch.Tensor | np.ndarray | None = None,
    options: KernelOptions | None = None,
    sample_offset: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """Run the recursion; differentiable when any input requires grad (and grad mode is on).

    ``matrices``: ``(A, B, C, D, E, F, G, H, K)`` or a mapping by those names; ``u`` (batch, T, Nu)
    input (volts / amperes); ``x0`` (batch, Nx) or (Nx,) initial state; ``v_init``: first Newton
    guess (batch, Nv) or the ``final["v"]`` of a previous block (streaming: identical to one
    long run).  Returns ``y`` (batch, T, Ny), ``final = {"x": state (batch, Nx), "v": warm
    start}`` and Newton statistics.  Raises :class:`NewtonError` naming the sample (offset by
    ``sample_offset``) and the time (when ``sample_rate`` in hertz is given).
    """
    mats = _matrices(matrices)
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, T, Nu), got shape {tuple(u.shape)}")
    if x0.ndim == 1:
        x0 = x0.expand(u.shape[0], x0.shape[0])
    tensors = (*mats, theta, u, x0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        y, xT, warm, st = StateSpaceFunction.apply(
            *tensors, nonlinearity, options, v_init, sample_rate, sample_offset
        )
        stats = st.numpy()
    else:
        vi = _np(v_init) if isinstance(v_init, torch.Tensor) else v_init
        res = statespace.forward(
            nonlinearity, tuple(_np(m) for m in mats), _np(theta), _np(u), _np(x0), vi, options, save=False
        )
        _raise_if_failed(res, sample_rate, sample_offset)
        y, xT, warm, stats = (
            torch.from_numpy(res.y),
            torch.from_numpy(res.x_final),
            torch.from_numpy(res.warm),
            res.stats,
        )
    return y, {"x": xT, "v": warm}, stats_dict(stats)


__all__ = ["NewtonError", "StateSpaceFunction", "run_state_space", "stats_dict", "theta_gradient"]
