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

Where the step nonlinearity is a diode pair on one port plus damped capacitors (:func:`explicit_spec`: the diode
clipper, the TS-808 clipping stage and pedal), :func:`ph_explicit` runs first: with the capacitors' ``h`` fixed the
pair's port is DK's explicit Wright-omega root (:mod:`circuitsim.kernels.explicit_root`, planned per run by
``pair_setup`` as for DK), each capacitor's end value is then a linear function, and ``h`` (the damping law PH-D1,
docs/phs.md) is iterated to its fixed point; a sample it does not settle in ``XR_ROUNDS`` rounds goes on to the
Newton above from its last round.  It solves the same equations (the step's outputs agree with the Newton's to
2e-13 V on the diode clipper, 3e-12 V on the clipping stage: docs/phs.md, "Speed").
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from numba import njit

from circuitsim.formulations.phs import charges as _charges
from circuitsim.formulations.phs.charges import Charges
from circuitsim.kernels import codegen
from circuitsim.kernels.core import F_ABSTOL, F_RELTOL, KernelOptions, StepFormulation, newton_stop
from circuitsim.kernels.explicit_root import (
    MAX_OMEGA_STEPS,
    PLAN_SIZE,
    S_GMIN,
    S_IS,
    S_VTE,
    diode_pair_spec,
    pair_setup,
    pair_solve,
)
from circuitsim.kernels.linalg import borrow, lu_solve, solve_into
from circuitsim.kernels.nonlinearity import DeviceBlock, ExprBlock
from circuitsim.kernels.statespace import _DK_CONSTANTS, _DK_HOOKS

# the factors of docs/phs.md's damping rho = RHO0 r_n r_{n-1} in compiled code: the function the step nonlinearity's
# symbolic law is built from (charges.alternation, plain arithmetic on two increments)
ph_alternation = njit(cache=True, inline="always")(_charges.alternation)
RHO0 = _charges.RHO0

# placeholders of the generated module (see circuitsim.kernels.core); the module's constants define them
NV = NF = PH_NR = PH_X0 = 0
PH_WJ = PH_WM = PH_WV = PH_WG = PH_WD = PH_WT = PH_WZ = PH_WP = PH_WS = PH_WF = PH_WH = 0
PH_FREE = PH_FIXED = np.zeros(1, np.int64)
# the explicit solve of a diode pair with damped capacitors (explicit_spec): on (1) or off (0), the number of damped
# capacitors, their end-value ports, earlier-value ports (s⁻ of each, then s⁻⁻, then s⁻⁻⁻) and h outputs, the most
# fixed-point rounds, and DK's explicit-root constants (kernels/statespace.py)
PH_XR = PH_ND = PH_XR_ROUNDS = XR_PLAN = XR_MAX_COST = 0
XR_LINEAR = 0.0
PH_SP = PH_HP = PH_HO = np.zeros(1, np.int64)
XR_SPEC = (-1, -1, -1, -1)


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
    if PH_XR != 0:  # the diode pair's explicit root on the step's port 0 (kernels/explicit_root.py)
        pair_setup(P[0], theta, XR_SPEC, lc, XR_PLAN, XR_MAX_COST)


def ph_explicit(K, p, z, theta, phi, lc, work, reltol, abstol, bound):
    # the diode pair's port v0 = p0 + K_0 f(v0) + sum_j K_{0,hj} h_j with the damped capacitors' h fixed is DK's
    # explicit root; each capacitor's end value s_j = p_sj + K_sj [f; h] is then explicit, and h_j = -2 rho (s_j -
    # s_j⁻) (PH-D1) is iterated to its fixed point from h extrapolated from the last three accepted samples (rho is
    # O(1) near a turning point of s, where both increments are O(T^2), docs/phs.md: two rounds on most samples,
    # the second the check; from the second update on, a secant step per capacitor on hn(h) - h).  A round
    # whose q = p0 + K_0h h is within XR_LINEAR volts of the last solved one takes the root's first-order change
    # instead of solving again (dv = dq / (1 - K_0f f'(v)), f += f' dv; its error is below v'' dq^2 / 2 <=
    # 0.15 dq^2 / (N Vt), 1e-15 V at XR_LINEAR, as Newton's own accepted step phi += J dz, kernels/core.py).  True: z
    # and phi hold the step's solution (KCL exactly with the h it used, that h within the tolerance of the damping
    # law and of its sign); False: fm_solve's Newton continues from z
    h = borrow(work[PH_WH:PH_WH + PH_ND])
    hn = borrow(work[PH_WH + PH_ND:PH_WH + 2 * PH_ND])
    sv = borrow(work[PH_WH + 2 * PH_ND:PH_WH + 3 * PH_ND])
    hh = borrow(work[PH_WH + 3 * PH_ND:PH_WH + 6 * PH_ND])  # h of the last three samples this solve accepted
    rh = borrow(work[PH_WH + 6 * PH_ND:PH_WH + 7 * PH_ND])  # RHO0 r_{n-1}: the history's factor of rho
    hp = borrow(work[PH_WH + 7 * PH_ND:PH_WH + 8 * PH_ND])  # the previous round's h and hn - h (the secant)
    fp = borrow(work[PH_WH + 8 * PH_ND:PH_WH + 9 * PH_ND])
    first = True
    for j in range(PH_ND):  # first h: extrapolated from them (its third difference is the error)
        h[j] = 3.0 * (hh[j] - hh[PH_ND + j]) + hh[2 * PH_ND + j]
        sp, spp = z[PH_HP[j]], z[PH_HP[PH_ND + j]]
        rh[j] = RHO0 * ph_alternation(sp - spp, spp - z[PH_HP[2 * PH_ND + j]])
    full = True
    qs = vs = ips = ins = gp = gn = den = 0.0  # the last solved root: q, v, currents, their dv slopes, dv/dq
    for _ in range(PH_XR_ROUNDS):
        q = p[0]
        for j in range(PH_ND):
            q += K[0, PH_HO[j]] * h[j]
        if full or not abs(q - qs) <= XR_LINEAR:
            ok, vs, ips, ins = pair_solve(q, lc, XR_PLAN)
            if not ok:
                return False
            qs = q
            # the outputs' slopes at vs on the exponential branch, (pn + IS)/(N Vt) + GMIN with pn = i - GMIN u (the
            # reverse diode's cubic branch has a slope below IS/(N Vt): it moves dv/dq by < 1e-6 there)
            gp = gn = 0.0
            if XR_SPEC[0] >= 0:
                o = XR_SPEC[1]
                gp = (ips - theta[o + S_GMIN] * vs + theta[o + S_IS]) / theta[o + S_VTE] + theta[o + S_GMIN]
            if XR_SPEC[2] >= 0:  # oriented -1: it sees -v
                o = XR_SPEC[3]
                gn = -((ins + theta[o + S_GMIN] * vs + theta[o + S_IS]) / theta[o + S_VTE] + theta[o + S_GMIN])
            den = 1.0 - (K[0, XR_SPEC[0]] * gp if XR_SPEC[0] >= 0 else 0.0) - (
                K[0, XR_SPEC[2]] * gn if XR_SPEC[2] >= 0 else 0.0)
            full = False
        dv = (q - qs) / den
        v = vs + dv
        i_pos = ips + gp * dv
        i_neg = ins + gn * dv
        done = True
        for j in range(PH_ND):
            i = PH_SP[j]
            s = p[i]
            if XR_SPEC[0] >= 0:
                s += K[i, XR_SPEC[0]] * i_pos
            if XR_SPEC[2] >= 0:
                s += K[i, XR_SPEC[2]] * i_neg
            for k in range(PH_ND):
                s += K[i, PH_HO[k]] * h[k]
            sv[j] = s
            sp = z[PH_HP[j]]
            hn[j] = -2.0 * rh[j] * ph_alternation(s - sp, sp - z[PH_HP[PH_ND + j]]) * (s - sp)  # charges.damping
            # converged, and the h taken of the law's sign (h (s - s⁻) <= 0: PH-D2's numerical dissipation >= 0; an
            # extrapolated h at the rounding level of a decayed state need not be)
            if not (abs(hn[j] - h[j]) <= reltol * abs(s) + abstol and h[j] * (s - sp) <= 0.0):
                done = False
        z[0] = v
        for j in range(PH_ND):
            z[PH_SP[j]] = sv[j]
        if done:
            if not abs(v) <= bound:
                return False
            for k in range(NF):
                phi[k] = 0.0
            if XR_SPEC[0] >= 0:
                phi[XR_SPEC[0]] = i_pos
            if XR_SPEC[2] >= 0:
                phi[XR_SPEC[2]] = i_neg
            for j in range(PH_ND):
                if not abs(sv[j]) <= bound:
                    return False
                phi[PH_HO[j]] = h[j]
            ph_h_history(phi, work)
            return True
        for j in range(PH_ND):  # the next h: a secant step on F(h) = hn(h) - h per capacitor, else the fixed point
            f1 = hn[j] - h[j]
            nxt = hn[j]
            if not first:
                df = f1 - fp[j]
                if df != 0.0:
                    nxt = h[j] - f1 * (h[j] - hp[j]) / df
            hp[j] = h[j]
            fp[j] = f1
            h[j] = nxt
        first = False
    return False


def ph_h_history(phi, work):
    # the damped capacitors' h of the last three accepted samples (ph_explicit's first guess)
    hh = borrow(work[PH_WH + 3 * PH_ND:PH_WH + 6 * PH_ND])
    for j in range(PH_ND):
        hh[2 * PH_ND + j] = hh[PH_ND + j]
        hh[PH_ND + j] = hh[j]
        hh[j] = phi[PH_HO[j]]


def fm_solve(P, p, z, theta, phi, lc, work, fopt, est, early):
    # work after the nonlinearity's: J (NF x NV) and M (NR x NR, its LU) of the last iteration, the LU's pivots,
    # g, dz (NR), zt (NV), z and p of the last sample this solve accepted (NV), t (NF), flag (1: those are set)
    # borrowed views (no reference counting, kernels/linalg.py): the core keeps work and the arguments alive
    K = borrow(P[0])
    work = borrow(work)
    z, p, phi, theta = borrow(z), borrow(p), borrow(phi), borrow(theta)
    # the core's tolerances, quadratic constant est[0] and bound est[1] (kernels/core.py, newton_plain)
    reltol, abstol, bound = fopt[F_RELTOL], fopt[F_ABSTOL], est[1]
    if PH_XR != 0 and lc[XR_PLAN] >= 0.0:  # the plan's chord steps (P_STEPS = 0; -1: no explicit root at these values)
        for a in range(NV - PH_NR):  # the state reads: v_h = p_h (zero rows of K)
            i = PH_FIXED[a]
            z[i] = p[i]
        if ph_explicit(K, p, z, theta, phi, lc, work, reltol, abstol, bound):
            work[PH_WF] = 0.0  # no LU of ours at this z: the next Newton sample starts from it
            return True
        work[PH_WF] = 0.0  # z holds the fixed point's last round: Newton starts there, without the tangent
    J = borrow(work[PH_WJ:PH_WJ + NF * NV].reshape((NF, NV)))
    M = borrow(work[PH_WM:PH_WM + PH_NR * PH_NR].reshape((PH_NR, PH_NR)))
    piv = borrow(work[PH_WV:PH_WV + PH_NR].view(np.int64))  # the LU's pivots, kept in work's float slots as int64
    g = borrow(work[PH_WG:PH_WG + PH_NR])
    dz = borrow(work[PH_WD:PH_WD + PH_NR])
    zt = borrow(work[PH_WT:PH_WT + NV])
    zp = borrow(work[PH_WZ:PH_WZ + NV])
    pp = borrow(work[PH_WP:PH_WP + NV])
    t = borrow(work[PH_WS:PH_WS + NF])
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
            if PH_XR != 0:
                ph_h_history(phi, work)
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


def explicit_spec(ch: Charges) -> tuple | None:
    """``(XR_SPEC, s ports, earlier-value ports, h outputs)`` of :func:`ph_explicit` where the step nonlinearity is
    at most one plain diode each way on one device port plus damped capacitors (no junction charge, no behavioural
    source: the diode clipper, the TS-808), else None.  Whether the values allow the explicit root is decided per run
    (``pair_setup``, as for DK)."""
    nl, nd = ch.step_nl, ch.n_damped
    devices = [b for b in nl.blocks if isinstance(b, DeviceBlock)]
    exprs = [b for b in nl.blocks if isinstance(b, ExprBlock)]
    np_ = nl.n_ports - (_charges.HISTORY + 1) * nd
    if ch.size or not nd or np_ != 1 or len(exprs) != nd or len(devices) + nd != len(nl.blocks):
        return None
    spec = diode_pair_spec(devices, 1)
    if spec is None:
        return None
    sp = tuple(range(1, 1 + nd))
    hp = tuple(range(1 + nd, 1 + (_charges.HISTORY + 1) * nd))
    ho = tuple(range(nl.n_outputs - nd, nl.n_outputs))
    return spec, sp, hp, ho


# fixed-point rounds of ph_explicit before its last iterate goes to Newton
XR_ROUNDS = 6
# volts: a round whose q is within this of the last solved root's takes the root's first-order change (ph_explicit)
XR_LINEAR_V = 1e-8


def ph_step(free: tuple[int, ...], n_ports: int, n_theta: int, explicit: tuple | None = None) -> StepFormulation:
    """DK's hooks plus :func:`fm_solve` on the ports ``free`` (the others have zero rows of ``K``); the solve's
    options are read from ``theta[n_theta:]`` (:func:`theta_with_options`).  ``explicit``: :func:`explicit_spec`'s
    tuple, for :func:`ph_explicit` before the Newton."""
    free = tuple(sorted(free))
    fixed = tuple(i for i in range(n_ports) if i not in free)
    nr = len(free)
    nd = 0 if explicit is None else len(explicit[1])
    layout = ["PH_WJ = N_WORK", "PH_WM = PH_WJ + NF * NV", f"PH_WV = PH_WM + {nr * nr}", f"PH_WG = PH_WV + {nr}",
              f"PH_WD = PH_WG + {nr}", f"PH_WT = PH_WD + {nr}", "PH_WZ = PH_WT + NV", "PH_WP = PH_WZ + NV",
              "PH_WS = PH_WP + NV", "PH_WF = PH_WS + NF", "PH_WH = PH_WF + 1", f"FM_WORK = PH_WH + {9 * nd}"]
    consts = (_DK_CONSTANTS.replace("FM_WORK = N_WORK\n", "")
              + f"FM_EXPLICIT = 1\nPH_NR = {nr}\nPH_X0 = {int(n_theta)}\n"
              + f"PH_FREE = np.array({list(free)!r}, dtype=np.int64)\n"
              + f"PH_FIXED = np.array({list(fixed)!r}, dtype=np.int64)\n" + "\n".join(layout) + "\n")
    name = f"phs_reduced{nr}of{n_ports}"
    if explicit is not None:
        spec, sp, hp, ho = explicit
        consts += (f"PH_XR = 1\nPH_ND = {nd}\nPH_XR_ROUNDS = {XR_ROUNDS}\nFM_LC = N_LC + {PLAN_SIZE}\n"
                   f"XR_PLAN = N_LC\nXR_SPEC = {spec!r}\nXR_MAX_COST = {MAX_OMEGA_STEPS}\n"
                   f"PH_SP = np.array({list(sp)!r}, dtype=np.int64)\nPH_HP = np.array({list(hp)!r}, dtype=np.int64)\n"
                   f"PH_HO = np.array({list(ho)!r}, dtype=np.int64)\nXR_LINEAR = {XR_LINEAR_V!r}\n"
                   "from circuitsim.kernels.explicit_root import S_GMIN, S_IS, S_VTE  # noqa: E402, F401\n"
                   "from circuitsim.formulations.phs.kernel import RHO0, ph_alternation  # noqa: E402, F401\n")
        name += f"_explicit{nd}"
    else:
        consts += "PH_XR = 0\nPH_ND = 1\nPH_XR_ROUNDS = 0\nPH_SP = PH_HP = PH_HO = np.zeros(1, np.int64)\n"
    consts += _wrapper()
    hooks = (fm_prepare, *_DK_HOOKS[1:], ph_explicit, ph_h_history, fm_solve)  # their sources are in the module text
    return StepFormulation(name=name, hooks=hooks, constants=consts, dependencies=(Path(_charges.__file__),))


def theta_with_options(theta: torch.Tensor, options: KernelOptions) -> torch.Tensor:
    """``theta`` followed by what :func:`fm_solve` reads there: tangent predictor (0/1) and max_iter (the
    tolerances, early accept and bound it takes from the core's arguments), so that one compiled module serves all."""
    extra = torch.tensor([float(options.predictor == "tangent"), float(options.max_iter)], dtype=theta.dtype)
    return torch.cat([theta, extra])


_MODULES: dict[tuple, tuple[Charges, ModuleType]] = {}


def ph_module(ch: Charges, n_theta: int, explicit: bool = True) -> ModuleType:
    """The generated module of the PH step nonlinearity ``ch.step_nl`` with :func:`ph_step` (Newton on
    ``ch.free_ports()``; with ``explicit``, :func:`ph_explicit` first where :func:`explicit_spec` allows), once per
    process (the loader's content hash reads the source's dependencies: tens of milliseconds a call)."""
    nl = ch.step_nl
    spec = explicit_spec(ch) if explicit else None
    key = (id(nl), n_theta, spec is not None)
    if key not in _MODULES:  # the entry keeps ch (and its nl) alive, so the id is not reused
        _MODULES[key] = (ch, codegen.step_module(nl.nb_source, ph_step(ch.free_ports(), nl.n_ports, n_theta, spec)))
    return _MODULES[key][1]


__all__ = ["explicit_spec", "fm_solve", "ph_alternation", "ph_explicit", "ph_module", "ph_step", "theta_with_options"]
