"""The PH step's compiled solve: Newton on the coupled ports only, the state reads set once per sample.

The step's nonlinearity (:class:`~circuitsim.formulations.phs.charges.Charges`) reads, besides the device
ports ``v̄`` and the end values ``w_n``, ``s_n`` of the damped storage, that storage's earlier values
``w_{n-1}, w_{n-2}, w_{n-3}`` and ``s_{n-1}, s_{n-2}, s_{n-3}`` (docs/phs.md, "Alternation damping").  Their
rows of ``K`` are zero: in DK's form ``v = p + K f(v)`` (:mod:`circuitsim.kernels.statespace`) such a port is
``v_h = p_h = G_h x + H_h u``, a value of the state alone.  The core's Newton would carry them as unknowns
(on the DS-1 booster 14 instead of 5, its LU and ``I - K J`` sized accordingly).  The module keeps DK's hooks
(residual, limiting, adjoint: the same discrete system, so the core's Newton, fallbacks and the
implicit-function adjoint apply unchanged) and adds the explicit-solve hook ``fm_solve`` (docs/architecture.md,
"Plugging a formulation into the core"; as :mod:`circuitsim.kernels.sparse_lu` does): it sets ``v_h = p_h``
and runs Newton on the free ports ``r`` alone,

    g_r = p_r + K_r f(v) - v_r,    M_rr = I - K_r J_{:,r},    v_r <- v_r + M_rr^-1 g_r,

with the core's stop rule (``newton_stop``, shared with ``newton_plain``: scaled step ``<= 1``, the contraction
estimate, or the early accept from Newton's quadratic convergence), the run's tolerances, quadratic constant and
bound (the core passes them to ``fm_solve``) and junction limiting.  The predictor and max_iter of
:class:`~circuitsim.kernels.core.KernelOptions` follow the device parameters in ``theta``, so that one compiled
module serves every setting.  Where it does not converge it returns False and
the core's full Newton and fallbacks solve the sample.  Its first guess is the tangent
``v_r[n-1] + M_rr^-1 (Δp_r + K_r J_{:,h} Δp_h)`` with the LU of the previous sample's last iteration
(``dg = Δp + K J Δv``, ``Δv_h = Δp_h``), or ``v_r[n-1]`` where ``predictor="previous"``.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import torch

from circuitsim.kernels import codegen
from circuitsim.kernels.core import F_ABSTOL, F_RELTOL, KernelOptions, StepFormulation, newton_stop
from circuitsim.kernels.linalg import borrow, lu_solve, solve_into
from circuitsim.kernels.nonlinearity import Nonlinearity
from circuitsim.kernels.statespace import _DK_CONSTANTS, _DK_HOOKS

# placeholders of the generated module (see circuitsim.kernels.core); the module's constants define them
NV = NF = PH_NR = PH_X0 = 0
PH_WJ = PH_WM = PH_WV = PH_WG = PH_WD = PH_WT = PH_WZ = PH_WP = PH_WS = PH_WF = 0
PH_FREE = PH_FIXED = np.zeros(1, np.int64)


def ph_nl_eval(v, theta, f, J, work):  # pragma: no cover - generated (one non-inlined copy of nl_eval)
    raise NotImplementedError


def nl_limit(vold, vnew, lc):  # pragma: no cover - the nonlinearity's
    raise NotImplementedError


def nl_prepare(theta, lc):  # pragma: no cover - the nonlinearity's
    raise NotImplementedError


# fmt: off
# ----------------------------------------------------------------------------- the hook (numba template)


def fm_prepare(P, theta, lc):
    nl_prepare(theta, lc)  # DK's, without its explicit diode root


def fm_solve(P, p, z, theta, phi, lc, work, fopt, est, early):
    # work after the nonlinearity's: J (NF x NV) and M (NR x NR, its LU) of the last iteration, the LU's pivots,
    # g, dz (NR), zt (NV), z and p of the last sample this solve accepted (NV), t (NF), flag (1: those are set)
    # borrowed views (no reference counting, kernels/linalg.py): the core keeps work and the arguments alive
    K = borrow(P[0])
    work = borrow(work)
    z, p, phi, theta = borrow(z), borrow(p), borrow(phi), borrow(theta)
    J = borrow(work[PH_WJ:PH_WJ + NF * NV].reshape((NF, NV)))
    M = borrow(work[PH_WM:PH_WM + PH_NR * PH_NR].reshape((PH_NR, PH_NR)))
    piv = borrow(work[PH_WV:PH_WV + PH_NR].view(np.int64))  # the LU's pivots, kept in work's float slots as int64
    g = borrow(work[PH_WG:PH_WG + PH_NR])
    dz = borrow(work[PH_WD:PH_WD + PH_NR])
    zt = borrow(work[PH_WT:PH_WT + NV])
    zp = borrow(work[PH_WZ:PH_WZ + NV])
    pp = borrow(work[PH_WP:PH_WP + NV])
    t = borrow(work[PH_WS:PH_WS + NF])
    # the core's tolerances, quadratic constant est[0] and bound est[1] (kernels/core.py, newton_plain)
    reltol, abstol, bound = fopt[F_RELTOL], fopt[F_ABSTOL], est[1]
    max_iter = int(theta[PH_X0 + 1])
    tangent = theta[PH_X0] != 0.0 and work[PH_WF] != 0.0
    if tangent:
        for i in range(NV):
            if z[i] != zp[i]:
                tangent = False  # z[n-1] came from the core's Newton: no LU of ours at it
    for a in range(NV - PH_NR):  # the state reads: v_h = p_h (zero rows of K)
        i = PH_FIXED[a]
        z[i] = p[i]
    if tangent:  # M_rr dv_r = dp_r + K_r J_{:,h} dp_h (dv_h = dp_h), J and the LU of the last iteration
        for k in range(NF):
            s = 0.0
            for b in range(NV - PH_NR):
                h = PH_FIXED[b]
                s += J[k, h] * (p[h] - pp[h])
            t[k] = s
        for a in range(PH_NR):
            i = PH_FREE[a]
            s = p[i] - pp[i]
            for k in range(NF):
                s += K[i, k] * t[k]
            dz[a] = s
        lu_solve(M, piv, dz, PH_NR)
        for a in range(PH_NR):
            z[PH_FREE[a]] += dz[a]
    work[PH_WF] = 0.0
    c = est[0] * 0.999
    prev = math.inf
    for _ in range(max_iter):
        ph_nl_eval(z, theta, phi, J, work)
        for a in range(PH_NR):
            i = PH_FREE[a]
            s = p[i] - z[i]
            for k in range(NF):
                s += K[i, k] * phi[k]
            g[a] = s
            for b in range(PH_NR):
                j = PH_FREE[b]
                m = 1.0 if a == b else 0.0
                for k in range(NF):
                    m -= K[i, k] * J[k, j]
                M[a, b] = m
        if not solve_into(M, piv, g, dz, PH_NR):
            return False
        step = 0.0
        for a in range(PH_NR):
            i = PH_FREE[a]
            r = abs(dz[a]) / (reltol * abs(z[i]) + abstol)
            if not (r <= 1e300):
                return False
            if r > step:
                step = r
        done, c = newton_stop(step, prev, c, early)
        if done:
            for k in range(NF):  # phi += J dz, as the core's accept_step
                s = 0.0
                for a in range(PH_NR):
                    s += J[k, PH_FREE[a]] * dz[a]
                phi[k] += s
            for a in range(PH_NR):
                z[PH_FREE[a]] += dz[a]
            for i in range(NV):
                if not abs(z[i]) <= bound:
                    return False
                zp[i] = z[i]
                pp[i] = p[i]
            work[PH_WF] = 1.0
            est[0] = c
            return True
        for i in range(NV):
            zt[i] = z[i]
        for a in range(PH_NR):
            zt[PH_FREE[a]] += dz[a]
        prev = step
        nl_limit(z, zt, lc)
        for a in range(PH_NR):
            i = PH_FREE[a]
            if zt[i] != z[i] + dz[a]:
                prev = math.inf  # a limited step says nothing about the rate
        for i in range(NV):
            z[i] = zt[i]
    return False


# fmt: on
def _wrapper() -> str:
    # one non-inlined copy of the nonlinearity's nl_eval for fm_solve: the core's Newton has its own inlined
    # one, and a second inlined copy of a BJT's equations would double forward_segment's compile
    return ("\n\n@njit(cache=True)\ndef ph_nl_eval(v, theta, f, J, work):\n"
            "    nl_eval(v, theta, f, J, work)\n")


def ph_step(free: tuple[int, ...], n_ports: int, n_theta: int) -> StepFormulation:
    """DK's hooks plus :func:`fm_solve` on the ports ``free`` (the others have zero rows of ``K``); the solve's
    options are read from ``theta[n_theta:]`` (:func:`theta_with_options`)."""
    free = tuple(sorted(free))
    fixed = tuple(i for i in range(n_ports) if i not in free)
    nr = len(free)
    layout = ["PH_WJ = N_WORK", "PH_WM = PH_WJ + NF * NV", f"PH_WV = PH_WM + {nr * nr}", f"PH_WG = PH_WV + {nr}",
              f"PH_WD = PH_WG + {nr}", f"PH_WT = PH_WD + {nr}", "PH_WZ = PH_WT + NV", "PH_WP = PH_WZ + NV",
              "PH_WS = PH_WP + NV", "PH_WF = PH_WS + NF", "FM_WORK = PH_WF + 1"]
    consts = (_DK_CONSTANTS.replace("FM_WORK = N_WORK\n", "")
              + f"FM_EXPLICIT = 1\nPH_NR = {nr}\nPH_X0 = {int(n_theta)}\n"
              + f"PH_FREE = np.array({list(free)!r}, dtype=np.int64)\n"
              + f"PH_FIXED = np.array({list(fixed)!r}, dtype=np.int64)\n" + "\n".join(layout) + "\n" + _wrapper())
    return StepFormulation(name=f"phs_reduced{nr}of{n_ports}", hooks=(fm_prepare, *_DK_HOOKS[1:], fm_solve),
                           constants=consts)  # the hooks' sources are in the module text: no dependency


def theta_with_options(theta: torch.Tensor, options: KernelOptions) -> torch.Tensor:
    """``theta`` followed by what :func:`fm_solve` reads there: tangent predictor (0/1) and max_iter (the
    tolerances, early accept and bound it takes from the core's arguments), so that one compiled module serves all."""
    extra = torch.tensor([float(options.predictor == "tangent"), float(options.max_iter)], dtype=theta.dtype)
    return torch.cat([theta, extra])


_MODULES: dict[tuple, tuple[Nonlinearity, ModuleType]] = {}


def ph_module(nl: Nonlinearity, free: tuple[int, ...], n_theta: int) -> ModuleType:
    """The generated module of the PH step's nonlinearity ``nl`` with :func:`ph_step`, once per process (the
    loader's content hash reads the source's dependencies: tens of milliseconds a call)."""
    key = (id(nl), tuple(free), n_theta)
    if key not in _MODULES:  # the entry keeps nl alive, so its id is not reused
        _MODULES[key] = (nl, codegen.step_module(nl.nb_source, ph_step(free, nl.n_ports, n_theta)))
    return _MODULES[key][1]


__all__ = ["fm_solve", "ph_module", "ph_step", "theta_with_options"]
