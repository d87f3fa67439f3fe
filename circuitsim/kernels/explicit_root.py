"""Explicit root of a diode or an anti-parallel diode pair facing a resistance (Wright omega).

A formulation whose residual on one port is ``v = p + K f(v)`` with ``f`` the currents of at most
one plain diode each way (no charge, breakdown, knee or recombination current) and
``K[0, o] = -R s_o`` (``s_o = ±1`` the diode's orientation on the port, ``R > 0``) obeys

    v (1 + R g) + R sum_o s_o pn_o(s_o v) = p

(``g`` the GMIN conductances, ``pn`` ngspice's junction current, docs/devices.md).  That is the
WDF one-port root facing a port resistance ``R`` (docs/wdf.md eq. (7)) and DK's diode clipper
(``K = -R`` with ``R`` the Thevenin resistance seen by the diodes).  Werner et al., DAFx-15, "An
improved and generalized diode clipper model for wave digital filters", and D'Angelo et al. on
the Wright omega function: the sign of ``v`` is the sign of ``p``; in the frame ``u = sign(p) v``
the forward-biased diode (``IsP``, ``VP = N Vt``) is on its exponential branch, and

    u = VP (mu - omega(mu + ln kappa)),   kappa = R IsP / ((1 + R g) VP),   mu = (c + R IsP) / ((1 + R g) VP)

solves ``u (1 + R g) + R IsP (exp(u/VP) - 1) = c`` exactly (docs/wdf.md eq. (9)).  The
reverse-biased diode adds ``r(u) = -pn_S(-u)``, which lies in ``[0, IsS)`` with
``|r'| <= IsS/VS``; it is handled by the fixed point ``u_{k+1} = U(p - R r(u_k))`` from ``r = 0``.
``|dU/dc| <= 1/(1 + R g)``, so the error after ``k`` omega evaluations is at most
``R IsS (R IsS / VS)^(k-1)`` volts (docs/wdf.md eq. (10)): :func:`pair_setup` picks the smallest
``k`` whose bound is below ``OMEGA_TOL``, or none (the caller then runs Newton).  No Newton
iteration runs.

Wright omega (Lawrence, Corless & Jeffrey, ACM TOMS 38(3), 2012, "Algorithm 917"): the
series/asymptotic starting values of their regions, then the fourth-order Fritsch-Shafer-Crowley
iteration until its residual shows machine precision.

The compiled core calls this through a formulation's ``fm_solve`` hook (docs/architecture.md,
"Plugging a formulation into the core"): ``fm_prepare`` fills a *plan* (``PLAN_SIZE`` floats of
the limiting-constant array) with :func:`pair_setup` once per run, and ``fm_solve`` calls
:func:`pair_root` per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from circuitsim.devices.constants import CONST_E, EXP_LIMIT
from circuitsim.devices.diode import DIODE_LAYOUT

OMEGA_TOL = 1e-11  # volts: bound on the explicit root's error (1e-9 of a 10 mV peak)
MAX_OMEGA_STEPS = 6

# the diode theta slots read here (devices/diode.py, DIODE_LAYOUT)
S_IS, S_VTE, S_GMIN = DIODE_LAYOUT.index("IS_EFF"), DIODE_LAYOUT.index("VTE"), DIODE_LAYOUT.index("GMIN")
S_BV, S_IKF, S_IKR, S_ISR = (DIODE_LAYOUT.index(k) for k in ("BV_EFF", "IKF_EFF", "IKR_EFF", "ISR"))

# plan layout: steps (0 = no explicit root), linearised (0/1), R, 1 + R g, R / (1 + R g), then per
# diode (direction 0: orientation +1, forward-biased for p >= 0; direction 1: orientation -1)
# present (0/1), Is, N Vt, GMIN, ln kappa, 1/kappa, kappa, 1/((1 + R g) N Vt), 1/(N Vt), and the
# last omega evaluation of this direction (argument, value; value -1: none) as the next warm start
P_STEPS, P_LINEAR, P_R, P_ONERG, P_RG = range(5)
D_HAS, D_IS, D_VTE, D_GMIN, D_LNK, D_INVK, D_KAPPA, D_SCALE, D_INVV, D_XW, D_W = range(11)
N_PLAN_HEAD, DIR_SIZE = 5, 11
PLAN_SIZE = N_PLAN_HEAD + 2 * DIR_SIZE
WARM_SPAN = 1e-3  # warm start when the argument moved by less than this times (1 + omega)


# --------------------------------------------------------------------------- Wright omega
@njit(cache=True, inline="always", error_model="numpy")
def _omega_refine(x: float, w: float) -> float:
    """Fritsch-Shafer-Crowley steps from ``w`` until the relative error is at machine precision.

    ``r = x - w - ln w`` estimates the relative error of ``w`` as ``r / (1 + w)``; one FSC step maps a
    relative error ``e`` to O(e^4), so a step from ``|e| < 2e-4`` ends below
    1e-15 and the loop stops after it (Lawrence et al. 2012).
    """
    for _ in range(6):
        r = x - w - math.log(w)
        wp1 = 1.0 + w
        t = wp1 * (wp1 + (2.0 / 3.0) * r)
        w = w + w * r * (t - 0.5 * r) / (wp1 * (t - r))
        if abs(r) < 2e-4 * wp1:
            break
    return w


@njit(cache=True, inline="always", error_model="numpy")
def omega_guess(x: float) -> float:
    """Starting value of omega(x) by region (Lawrence et al. 2012): Lambert series, Taylor at 1, asymptotic."""
    if x < -2.0:  # Lambert series of W(e^x): z - z^2 + 3/2 z^3 - 8/3 z^4 + 125/24 z^5
        z = math.exp(x)
        return z * (1.0 - z * (1.0 - z * (1.5 - z * (8.0 / 3.0 - z * (125.0 / 24.0)))))
    if x <= 1.0:
        y = x - 1.0
        return 1.0 + y * (0.5 + y * (1.0 / 16.0 + y * (-1.0 / 192.0 + y * (-1.0 / 3072.0 + y * (13.0 / 61440.0)))))
    lx = math.log(x)
    return x - lx + lx / x


@njit(cache=True, error_model="numpy", inline="always")
def wright_omega(x: float, w0: float = -1.0) -> float:
    """omega(x) for real x: the solution w of ``w + ln w = x`` (Lambert W of exp(x)).

    ``w0 > 0`` is a warm start above -8 (below, the series is exact to rounding); otherwise the
    regional guess.
    """
    if x < -700.0:
        return math.exp(x)
    if x < -8.0:
        # the series' next term is 324/30 z^6: relative error below 11 z^5 < 1e-16 for z = e^x < e^-8
        return omega_guess(x)
    w = w0 if w0 > 0.0 else omega_guess(x)
    return _omega_refine(x, w)


@njit(cache=True, inline="always", error_model="numpy")
def pn(vd: float, isat: float, vte: float) -> float:
    """ngspice's junction current without GMIN (docs/devices.md), amperes: exponential / cubic reverse branch."""
    if vd >= -3.0 * vte:
        return isat * (math.exp(vd / vte) - 1.0)
    a = 3.0 * vte / (vd * CONST_E)
    return -isat * (1.0 + a * a * a)


# --------------------------------------------------------------------------- the plan
@njit(cache=True, error_model="numpy")
def omega_steps(e1: float, lip: float, vmin: float) -> tuple:
    """(omega evaluations per sample, linearised?) for an error bound below OMEGA_TOL volts; (0, False): none.

    Full fixed point: error ``<= e1 L^(k-1)`` with ``e1 = R IsS``, ``L = R IsS / VS`` (eq. (10),
    maxima over the diodes).  Linearised corrections around the first omega solution add the
    Taylor remainder ``E2 = (R IsS)^2 / (2 VP)`` (``|U''| <= 1/VP``): error ``<= e1 L^(k-1) + E2 / (1 - L)``;
    used when that meets the tolerance and ``R IsS / VP < 1e-5`` (so the second-order exp update of
    :func:`pair_root` is exact to rounding).  ``vmin``: the smallest ``N Vt``, volts.
    """
    e2 = e1 * e1 / (2.0 * vmin)
    if lip < 1.0 and e1 / vmin < 1e-5:
        for k in range(1, MAX_OMEGA_STEPS + 1):
            if e1 * lip ** (k - 1) + e2 / (1.0 - lip) <= OMEGA_TOL:
                return k, True
    for k in range(1, MAX_OMEGA_STEPS + 1):
        if e1 * lip ** (k - 1) <= OMEGA_TOL:
            return k, False
    return 0, False


@njit(cache=True, error_model="numpy")
def pair_setup(K: np.ndarray, theta: np.ndarray, spec: tuple, X: np.ndarray, o: int, max_cost: int) -> int:
    """Fill the plan ``X[o : o + PLAN_SIZE]`` of ``v = p + K f(v)``; returns the omega evaluations per sample.

    ``max_cost``: the most omega evaluations per sample worth taking (the linearised corrections
    count as none); a plan that needs more is refused (Newton is cheaper there: DK's choice).

    ``spec = (out_pos, theta_pos, out_neg, theta_neg)``: the output index and theta offset of the
    diode oriented +1 and -1 on the port (-1: none); ``K`` (1, Nf) ohms.  Returns 0 (and writes
    ``steps = 0``) unless ``K[0, o] = -R s_o`` with one ``R > 0``, every diode is plain at these
    values (no breakdown, knee or recombination current) and a bound of eq. (10) meets ``OMEGA_TOL``.
    """
    X[o + P_STEPS] = 0.0
    X[o + P_LINEAR] = 0.0
    R = -1.0
    g = 0.0
    e1 = 0.0
    lip = 0.0
    vmin = math.inf
    ok = True
    for d in range(2):
        b = o + N_PLAN_HEAD + d * DIR_SIZE
        out, off = spec[2 * d], spec[2 * d + 1]
        X[b + D_HAS] = 0.0
        if out < 0:
            continue
        r = -K[0, out] if d == 0 else K[0, out]
        if R < 0.0:
            R = r
        elif not abs(r - R) <= 1e-12 * abs(R):
            ok = False
        isat, vte = theta[off + S_IS], theta[off + S_VTE]
        plain = (theta[off + S_BV] == math.inf and theta[off + S_IKF] == 0.0 and theta[off + S_IKR] == 0.0
                 and theta[off + S_ISR] == 0.0)
        if not (plain and isat > 0.0 and vte > 0.0):
            ok = False
        X[b + D_HAS] = 1.0
        X[b + D_IS] = isat
        X[b + D_VTE] = vte
        X[b + D_GMIN] = theta[off + S_GMIN]
        g += theta[off + S_GMIN]
        e1 = max(e1, isat)
        lip = max(lip, isat / vte)
        vmin = min(vmin, vte)
    if not (ok and R > 0.0 and R < math.inf):
        return 0
    onerg = 1.0 + R * g
    X[o + P_R] = R
    X[o + P_ONERG] = onerg
    X[o + P_RG] = R / onerg
    for d in range(2):
        b = o + N_PLAN_HEAD + d * DIR_SIZE
        X[b + D_W] = -1.0
        if X[b + D_HAS] != 0.0:
            kappa = R * X[b + D_IS] / (onerg * X[b + D_VTE])
            X[b + D_LNK] = math.log(kappa)
            X[b + D_INVK] = 1.0 / kappa  # exp(u/VP) = omega/kappa
            X[b + D_KAPPA] = kappa
            X[b + D_SCALE] = 1.0 / (onerg * X[b + D_VTE])
            X[b + D_INVV] = 1.0 / X[b + D_VTE]
    steps, linear = omega_steps(R * e1, R * lip, vmin)
    if (1 if linear else steps) > max_cost:
        steps = 0
    X[o + P_STEPS] = float(steps)
    X[o + P_LINEAR] = 1.0 if linear else 0.0
    return steps


# --------------------------------------------------------------------------- the root
@njit(cache=True, error_model="numpy", inline="always")
def _omega_warm(x: float, X: np.ndarray, b: int) -> float:
    """omega(x) warm-started from direction ``b``'s last evaluation when its argument is within
    ``WARM_SPAN (1 + omega)`` (|d omega/dx| < 1: one FSC step then ends at machine precision);
    records this evaluation for the next."""
    w0 = X[b + D_W]
    if not abs(x - X[b + D_XW]) < WARM_SPAN * (1.0 + w0):
        w0 = -1.0
    w = wright_omega(x, w0)
    X[b + D_XW] = x
    X[b + D_W] = w
    return w


@njit(cache=True, error_model="numpy", inline="always")
def pair_root(c0: float, X: np.ndarray, o: int, k: int) -> tuple:
    """The root in the frame of the forward-biased diode (direction ``k``), ``c0 = |p| >= 0`` volts.

    Returns ``(ok, u, i_f, i_r)``: ``v = u`` (k = 0) or ``-u`` (k = 1), and the device outputs
    (amperes, GMIN included) of the diode forward-biased in this frame (it sees ``u``) and of the
    other one (it sees ``-u``).  ``ok`` is False where the plan has no explicit root or the
    junction exponent would pass EXP_LIMIT (the device equations continue linearly there).

    Full mode: ``steps`` omega evaluations of the fixed point.  Linearised mode: one omega
    evaluation, then ``steps - 1`` corrections ``u = u1 - U'(c0) R r(u)`` with
    ``U' = 1 / ((1 + R g)(1 + omega))`` (docs/wdf.md, "Solving the root"); the plan allows it only
    where its bound holds.  Later evaluations start from the previous one, whose argument differs
    by at most ``R IsS / VP``.  ``X`` is written: the warm start of the next sample.
    """
    steps = int(X[o + P_STEPS])
    bp = o + N_PLAN_HEAD + k * DIR_SIZE
    bs = o + N_PLAN_HEAD + (1 - k) * DIR_SIZE
    has_p, has_s = X[bp + D_HAS] != 0.0, X[bs + D_HAS] != 0.0
    isp, vp, lnk, scale = X[bp + D_IS], X[bp + D_VTE], X[bp + D_LNK], X[bp + D_SCALE]
    iss, vs = X[bs + D_IS], X[bs + D_VTE]
    R, onerg = X[o + P_R], X[o + P_ONERG]
    u = 0.0
    w = -1.0
    ex = 0.0
    pn_s = 0.0
    if steps == 0:
        return False, u, ex, pn_s
    if X[o + P_LINEAR] != 0.0 and has_p:
        mu = (c0 + R * isp) * scale
        w = _omega_warm(mu + lnk, X, bp)
        u1 = vp * (mu - w)
        u = u1
        if has_s:
            q = 1.0 / (w * (1.0 + w))  # one division for both 1/(1 + omega) and 1/omega
            du = X[o + P_RG] * w * q
            invs = X[bs + D_INVV]
            # exp(-u1/VS): from omega when both diodes share VS = VP (exp(u1/VP) = omega/kappa)
            es1 = (1.0 + w) * q * X[bp + D_KAPPA] if vs == vp else math.exp(-u1 * invs)
            for j in range(steps):
                if u <= 3.0 * vs:  # exponential branch: exp(-u/VS) = es1 exp(-(u-u1)/VS), |u-u1|/VS < 1e-5
                    e = -(u - u1) * invs
                    pn_s = iss * (es1 * (1.0 + e * (1.0 + 0.5 * e)) - 1.0)
                else:
                    pn_s = pn(-u, iss, vs)
                if j == steps - 1:
                    break  # pn_s is now the reverse-biased diode's current at the returned u
                u = u1 + du * pn_s
        d = (u - u1) * X[bp + D_INVV]  # |d| < 1e-5: exp(d) to second order is exact to rounding
        ex = w * X[bp + D_INVK] * (1.0 + d * (1.0 + 0.5 * d))
    else:
        rs = 0.0
        for j in range(steps):
            c = c0 - R * rs
            if has_p:
                mu = (c + R * isp) * scale
                w = _omega_warm(mu + lnk, X, bp) if j == 0 else wright_omega(mu + lnk, w)
                u = vp * (mu - w)
            else:
                u = c / onerg
            if not has_s:
                break
            rs = -pn(-u, iss, vs)
        pn_s = -rs
        if has_p:
            ex = w * X[bp + D_INVK]  # exp(u/VP) = omega/kappa at the last evaluation
    if has_p and u > EXP_LIMIT * vp:
        return False, u, ex, pn_s
    i_f = isp * (ex - 1.0) + X[bp + D_GMIN] * u if has_p else 0.0
    return True, u, i_f, pn_s - X[bs + D_GMIN] * u


# --------------------------------------------------------------------------- which nonlinearities
def diode_pair_spec(blocks: Sequence[object], n_ports: int) -> tuple[int, int, int, int] | None:
    """``(out_pos, theta_pos, out_neg, theta_neg)`` when the blocks are at most one diode each way on
    one port with no charge output (the structure :func:`pair_setup` solves), else None.

    ``blocks``: a :class:`~circuitsim.kernels.nonlinearity.Nonlinearity`'s blocks (device blocks
    with ``family``, ``ports``, ``outs``, ``theta``, ``sign``).  Whether the values allow the
    explicit root (plain diodes, ``K`` of the right form) is decided at run time by :func:`pair_setup`.
    """
    if n_ports != 1 or not blocks:
        return None
    found: dict[float, tuple[int, int]] = {}
    for blk in blocks:
        if getattr(blk, "family", None) != "diode":
            return None
        outs, sign, th = blk.outs, float(blk.sign), blk.theta  # type: ignore[attr-defined]
        off = int(th.start or 0) if isinstance(th, slice) else int(th)
        if outs[0] < 0 or outs[1] >= 0 or sign in found:
            return None
        found[sign] = (int(outs[0]), off)
    pos, neg = found.get(1.0, (-1, -1)), found.get(-1.0, (-1, -1))
    return pos[0], pos[1], neg[0], neg[1]


def plan(K: np.ndarray, theta: np.ndarray, spec: tuple[int, int, int, int],
         max_cost: int = MAX_OMEGA_STEPS) -> tuple[int, bool] | None:
    """``(omega evaluations per sample, linearised?)`` of :func:`pair_setup` at these values, or None."""
    X = np.zeros(PLAN_SIZE)
    K = np.ascontiguousarray(K, dtype=np.float64).reshape(1, -1)
    steps = pair_setup(K, np.ascontiguousarray(theta, dtype=np.float64).reshape(-1), spec, X, 0, max_cost)
    return (steps, bool(X[P_LINEAR])) if steps > 0 else None


__all__ = [
    "MAX_OMEGA_STEPS",
    "OMEGA_TOL",
    "PLAN_SIZE",
    "diode_pair_spec",
    "omega_steps",
    "pair_root",
    "pair_setup",
    "plan",
    "pn",
    "wright_omega",
]
