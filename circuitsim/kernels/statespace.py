"""The DK method's nonlinear state-space recursion, as a formulation of the compiled core.

Per sample ``n`` (Yeh 2009, ch. 4; Holters & Zölzer, DAFx-11, eqs. 13-16)::

    p[n]   = G x[n] + H u[n]                       (Nv)
    v[n]   solves  g(v) = p[n] + K f(v) - v = 0    (Nv nonlinear port voltages)
    y[n]   = D x[n] + E u[n] + F f(v[n])           (Ny)
    x[n+1] = A x[n] + B u[n] + C f(v[n])           (Nx)

which is the core's one-step form (:mod:`circuitsim.kernels.core`) with unknowns ``z = v``,
``phi = f(v)``, ``r(v) = K f(v) - v`` and the formulation matrices ``P = (K,)``.  The hooks
below give the core the residual, the Newton matrix ``M = -dg/dv = I - K J`` (``J = df/dv``),
SPICE junction limiting (``nl_limit``) and the parameter VJP: with the cotangent ``gf`` of
``f[n]`` and ``w = dL/dp[n]``, ``mu[n] = gf + K' w`` is the cotangent of a direct perturbation
of ``f[n]``, so ``dK += w f[n]'`` and ``dtheta += (df/dtheta at v[n])' mu[n]``.

:func:`forward` and :func:`backward` take the nine matrices ``(A, ..., H, K)`` and the
:class:`~circuitsim.kernels.nonlinearity.Nonlinearity`; ``Nonlinearity.module`` is the generated
module of this formulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from circuitsim.kernels import core
from circuitsim.kernels.core import (  # noqa: F401  (re-exported: the kernels' public names)
    N_STATS,
    PREDICTORS,
    ST_DAMPED,
    ST_FAIL,
    ST_HOMOTOPY,
    ST_ITER,
    ST_MAXITER,
    ST_SAMPLES,
    BackwardResult,
    ForwardResult,
    KernelOptions,
    StepFormulation,
    warm_state,
)
from circuitsim.kernels.linalg import borrow, copy_into, mtv, outer_acc  # noqa: F401  (borrow: generated modules)

if TYPE_CHECKING:
    from circuitsim.kernels.nonlinearity import Nonlinearity

# placeholders of the generated module (see circuitsim.kernels.core)
NV = NF = 0


def nl_eval(v, theta, f, J, work):  # pragma: no cover - replaced in generated code
    raise NotImplementedError


def nl_prepare(theta, lc):  # pragma: no cover
    raise NotImplementedError


def nl_limit(vold, vnew, lc):  # pragma: no cover
    raise NotImplementedError


def nl_vjp_theta(v, theta, mu, gtheta, work):  # pragma: no cover
    raise NotImplementedError


# fmt: off
# ----------------------------------------------------------------------------- the DK hooks


def fm_prepare(theta, lc):
    nl_prepare(theta, lc)


def fm_eval(P, p, z, theta, phi, dphi, g, M, work):
    # f, J = df/dv at v = z; g = p + K f - v; M = -dg/dv = I - K J; returns |g|^2
    K = P[0]
    nl_eval(z, theta, phi, dphi, work)
    n2 = 0.0
    for i in range(NV):
        s = p[i] - z[i]
        for k in range(NF):
            s += K[i, k] * phi[k]
        g[i] = s
        n2 += s * s
        for j in range(NV):
            m = 1.0 if i == j else 0.0
            for k in range(NF):
                m -= K[i, k] * dphi[k, j]
            M[i, j] = m
    return n2


def fm_limit(P, zold, znew, lc, work):
    nl_limit(zold, znew, lc)  # SPICE pnjlim on the junction ports


def fm_vjp(P, z, phi, theta, gphi, w, dP, dtheta, mq, want_theta, work):
    # mu = gf + K' w; dK += w f'; dtheta += (df/dtheta)' mu
    copy_into(mq, gphi, NF)
    mtv(mq, P[0], w, NV, NF, True)
    outer_acc(dP[0], w, phi, NV, NF)
    if want_theta:
        nl_vjp_theta(z, theta, mq, dtheta, work)


# fmt: on
DK_STEP = StepFormulation(
    name="dk",
    hooks=(fm_prepare, fm_eval, fm_limit, fm_vjp),
    constants="NZ = NV\nNPHI = NF\nFM_WORK = N_WORK\n",
)


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def check_matrices(nl: Nonlinearity, mats: Sequence[np.ndarray], theta_size: int) -> None:
    """Raise ``ValueError`` unless ``K`` fits the nonlinearity and ``theta`` is long enough."""
    if len(mats) != 9:
        raise ValueError(f"expected the 9 matrices A..H, K, got {len(mats)}")
    K = mats[8]
    if K.shape != (nl.n_ports, nl.n_outputs):
        raise ValueError(f"K is {K.shape} but the nonlinearity maps {nl.n_ports} ports to {nl.n_outputs}")
    if theta_size < nl.n_theta:
        raise ValueError(f"theta has {theta_size} entries, the nonlinearity reads {nl.n_theta}")


def forward(nl: Nonlinearity, mats: Sequence[np.ndarray], theta: np.ndarray, u: np.ndarray, x0: np.ndarray,
        v_init: np.ndarray | None = None, options: KernelOptions | None = None, save: bool = True
) -> ForwardResult:
    """Run the DK recursion over ``u`` (batch, T, Nu) volts/amperes from states ``x0`` (batch, Nx).

    ``mats = (A, B, C, D, E, F, G, H, K)``.  ``save=True`` also returns the port-voltage
    trajectory and state checkpoints for :func:`backward`.  Streaming: pass ``warm`` and
    ``x_final`` of one block as ``v_init`` and ``x0`` of the next (identical to one long run).
    Newton failures are reported in ``stats`` (never raised).
    """
    mats = tuple(_c(m) for m in mats)
    check_matrices(nl, mats, np.size(theta))
    return core.forward(nl.module, mats[:8], mats[8:], theta, u, x0, v_init, options, save)


def backward(nl: Nonlinearity, mats: Sequence[np.ndarray], theta: np.ndarray, u: np.ndarray, v: np.ndarray,
        checkpoints: np.ndarray, gy: np.ndarray, gx_final: np.ndarray | None = None,
        options: KernelOptions | None = None, theta_grad: bool = False
) -> BackwardResult:
    """Adjoint of :func:`forward` given ``gy = dL/dy`` (batch, T, Ny) and optionally ``gx_final =
    dL/dx[T]`` (batch, Nx): gradients of the nine matrices, ``du``, ``dx0``, ``mu = dL/df`` and,
    with ``theta_grad``, ``dtheta`` (``nl_vjp_theta`` at every sample, in the same loop)."""
    mats = tuple(_c(m) for m in mats)
    saved = ForwardResult(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64), v, checkpoints)
    return core.backward(nl.module, mats[:8], mats[8:], theta, u, saved, gy, gx_final, options, theta_grad)


def theta_vjp(
    nl: Nonlinearity, theta: np.ndarray, v: np.ndarray, mu: np.ndarray, threads: int | None = None
) -> np.ndarray:
    """``sum_{b,n} (df/dtheta at v[b, n])' mu[b, n]`` with the compiled ``nl_vjp_theta``.

    ``v`` (batch, T, Nv) port voltages (volts), ``mu`` (batch, T, Nf) adjoints of ``f``.  The
    gradient is w.r.t. every entry of ``theta``, the derived slots of device vectors included.
    """
    return core.theta_vjp(nl.module, theta, v, mu, threads)


__all__ = [
    "DK_STEP",
    "BackwardResult",
    "ForwardResult",
    "KernelOptions",
    "backward",
    "borrow",
    "check_matrices",
    "forward",
    "theta_vjp",
    "warm_state",
]
