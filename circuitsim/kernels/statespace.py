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
:class:`~circuitsim.kernels.nonlinearity.Nonlinearity` and run ``codegen.dk_module(nl)``, the
generated module of this formulation (kept as ``Nonlinearity.module``).  Where the nonlinearity is
at most one plain diode each way on one port, :func:`dk_step` adds the explicit Wright-omega root
(``fm_solve``, :mod:`circuitsim.kernels.explicit_root`; docs/wdf.md eqs. (9), (11)-(12)) in front of
Newton.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from circuitsim.kernels import codegen, core
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
from circuitsim.kernels.explicit_root import PLAN_SIZE, diode_pair_spec, pair_setup, pair_solve, plan
from circuitsim.kernels.linalg import borrow, copy_into, mtv, outer_acc  # noqa: F401  (borrow: generated modules)

if TYPE_CHECKING:
    from circuitsim.kernels.nonlinearity import Nonlinearity

# placeholders of the generated module (see circuitsim.kernels.core); XR_SPEC: (output, theta offset)
# of the diode oriented +1 and of the one oriented -1 on the port (-1: none), XR_PLAN: where the
# explicit root's plan starts in lc
NV = NF = N_LC = FM_EXPLICIT = XR_PLAN = XR_MAX_COST = 0
XR_SPEC = (-1, -1, -1, -1)
# DK takes the explicit root where it costs at most this much per sample (one Wright-omega evaluation
# plus its closed-form chord corrections, kernels/explicit_root.py); beyond, its Newton (one or two
# iterations from the tangent predictor) is as fast (benchmarks/bench_wdf.py --split: the TS-808
# clipping stage's 1 + 3 is faster than Newton)
DK_MAX_OMEGA = 4


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


def fm_prepare(P, theta, lc):
    nl_prepare(theta, lc)
    if FM_EXPLICIT != 0:  # the explicit root's plan at these values (kernels/explicit_root.py)
        pair_setup(P[0], theta, XR_SPEC, lc, XR_PLAN, XR_MAX_COST)


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


def fm_solve(P, p, z, theta, phi, lc, work, fopt, est, early):
    # a diode or an anti-parallel pair on the one port: v = p + K f(v) solved explicitly with the
    # Wright omega function (kernels/explicit_root.py, docs/wdf.md eqs. (9), (11)-(12)); False: Newton
    ok, v, i_pos, i_neg = pair_solve(p[0], lc, XR_PLAN)
    if not ok:
        return False
    z[0] = v
    if XR_SPEC[0] >= 0:
        phi[XR_SPEC[0]] = i_pos
    if XR_SPEC[2] >= 0:
        phi[XR_SPEC[2]] = i_neg
    return True


# fmt: on
_DK_HOOKS = (fm_prepare, fm_eval, fm_limit, fm_vjp)
_DK_CONSTANTS = (
    "NZ = NV\nNPHI = NF\nFM_WORK = N_WORK\nXR_PLAN = 0\nXR_SPEC = (-1, -1, -1, -1)\n"
    "from circuitsim.kernels.explicit_root import pair_setup, pair_solve  # noqa: E402, F401\n"
)
DK_STEP = StepFormulation(name="dk", hooks=_DK_HOOKS, constants=_DK_CONSTANTS)


def dk_step(nl: Nonlinearity, max_omega: int = DK_MAX_OMEGA) -> StepFormulation:
    """DK's hooks for ``nl``: with the explicit diode root (``fm_solve``, ``FM_EXPLICIT = 1``) when ``nl``
    is at most one diode each way on one port with no charge output
    (:func:`~circuitsim.kernels.explicit_root.diode_pair_spec`), else :data:`DK_STEP`.

    Whether the values allow it (``K = -R s``, plain diodes, the error bound) is checked by
    ``fm_prepare`` at the start of every run; where they do not, or where a junction exponent
    would pass EXP_LIMIT, the core's Newton runs instead.  ``max_omega``: the most Wright-omega
    evaluations per sample to take (DK: ``DK_MAX_OMEGA``; the WDF takes every pair, up to
    ``MAX_OMEGA_STEPS``).
    """
    spec = diode_pair_spec(nl.blocks, nl.n_ports)
    if spec is None:
        return DK_STEP
    consts = _DK_CONSTANTS + (f"FM_EXPLICIT = 1\nFM_LC = N_LC + {PLAN_SIZE}\nXR_PLAN = N_LC\nXR_SPEC = {spec!r}\n"
                              f"XR_MAX_COST = {int(max_omega)}\n")
    return StepFormulation(name=f"dk_explicit{max_omega}", hooks=(*_DK_HOOKS, fm_solve), constants=consts)


def explicit_plan(nl: Nonlinearity, K: np.ndarray, theta: np.ndarray, max_omega: int = DK_MAX_OMEGA
                  ) -> tuple[int, bool] | None:
    """``(omega evaluations per sample, linearised?)`` of the explicit root that :func:`dk_step`'s kernel
    takes for ``v = p + K f(v)`` at ``theta`` (volts, ohms), or None where it runs Newton."""
    spec = diode_pair_spec(nl.blocks, nl.n_ports)
    return None if spec is None else plan(K, theta, spec, max_omega)


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
    return core.forward(codegen.dk_module(nl), mats[:8], mats[8:], theta, u, x0, v_init, options, save)


def backward(nl: Nonlinearity, mats: Sequence[np.ndarray], theta: np.ndarray, u: np.ndarray, v: np.ndarray,
        checkpoints: np.ndarray, gy: np.ndarray, gx_final: np.ndarray | None = None,
        options: KernelOptions | None = None, theta_grad: bool = False
) -> BackwardResult:
    """Adjoint of :func:`forward` given ``gy = dL/dy`` (batch, T, Ny) and optionally ``gx_final =
    dL/dx[T]`` (batch, Nx): gradients of the nine matrices, ``du``, ``dx0``, ``mu = dL/df`` and,
    with ``theta_grad``, ``dtheta`` (``nl_vjp_theta`` at every sample, in the same loop)."""
    mats = tuple(_c(m) for m in mats)
    saved = ForwardResult(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64), v, checkpoints)
    return core.backward(codegen.dk_module(nl), mats[:8], mats[8:], theta, u, saved, gy, gx_final, options, theta_grad)


def theta_vjp(
    nl: Nonlinearity, theta: np.ndarray, v: np.ndarray, mu: np.ndarray, threads: int | None = None
) -> np.ndarray:
    """``sum_{b,n} (df/dtheta at v[b, n])' mu[b, n]`` with the compiled ``nl_vjp_theta``.

    ``v`` (batch, T, Nv) port voltages (volts), ``mu`` (batch, T, Nf) adjoints of ``f``.  The
    gradient is w.r.t. every entry of ``theta``, the derived slots of device vectors included.
    """
    return core.theta_vjp(codegen.dk_module(nl), theta, v, mu, threads)


__all__ = [
    "DK_STEP",
    "BackwardResult",
    "DK_MAX_OMEGA",
    "dk_step",
    "explicit_plan",
    "ForwardResult",
    "KernelOptions",
    "backward",
    "borrow",
    "check_matrices",
    "forward",
    "theta_vjp",
    "warm_state",
]
