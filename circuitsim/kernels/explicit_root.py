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

solves ``u (1 + R g) + R IsP (exp(u/VP) - 1) = c`` exactly (docs/wdf.md eq. (9)): one omega
evaluation, from the piecewise polynomials of :mod:`circuitsim.kernels.omega_table` on [-20, 64)
(no logarithm, exponential or division; eq. (13)), which give ``1/(1 + omega)`` and ``1/omega`` too.
The reverse-biased diode adds ``r(u) = -pn_S(-u)`` in ``[0, IsS)``; chord steps on
``h(delta) = delta + VP omega (exp(delta/VP) - 1) + rho r(u1 + delta)`` (``rho = R/(1 + R g)``, eq. (11)),
``delta <- delta - h(delta) / (1 + omega)`` from ``delta = 0``, err by at most ``E0 L^k`` volts after
``k`` steps, ``L = (2 e0/VT) exp(2 e0/VT)``, ``e0 = rho IsS`` (eq. (12)); each step is closed-form and
division-free, its exponentials those at ``u1`` taken from omega (``exp(u1/VP) = omega/kappa``,
``exp(-u1/VS) = kappa/omega`` for equal ``N Vt``) times Taylor series in ``delta``.  :func:`pair_setup`
picks the smallest ``k`` whose bound is below ``OMEGA_TOL``, or none (the caller then runs Newton).
No Newton iteration of the core runs.

A sample is one chain of dependent operations (``p -> omega -> delta -> currents`` and on through the
state to the next ``p``), so the code is arranged for latency (docs/wdf.md, "Speed of the explicit
root"): the sign of ``p`` is a branch into two copies with constant offsets (:func:`pair_solve`), the
table's interval and offset come from one addition (:func:`omega_table_at`), and the currents'
Taylor coefficients are plan constants times omega or ``1/omega`` (:func:`_current_poly`), so that
only two multiply-adds follow ``delta``.

Wright omega outside the table (Lawrence, Corless & Jeffrey, ACM TOMS 38(3), 2012, "Algorithm 917"):
the series/asymptotic starting values of their regions, then the fourth-order Fritsch-Shafer-Crowley
iteration until its residual shows machine precision.

The compiled core calls this through a formulation's ``fm_solve`` hook (docs/architecture.md,
"Plugging a formulation into the core"): ``fm_prepare`` fills a *plan* (``PLAN_SIZE`` floats of
the limiting-constant array) with :func:`pair_setup` once per run, and ``fm_solve`` calls
:func:`pair_solve` per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from llvmlite import ir as llir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from circuitsim.devices.constants import CONST_E, EXP_LIMIT
from circuitsim.devices.diode import DIODE_LAYOUT
from circuitsim.kernels import omega_table

OMEGA_TOL = 1e-11  # volts: bound on the explicit root's error (1e-9 of a 10 mV peak)
MAX_OMEGA_STEPS = 6

# the diode theta slots read here (devices/diode.py, DIODE_LAYOUT)
S_IS, S_VTE, S_GMIN = DIODE_LAYOUT.index("IS_EFF"), DIODE_LAYOUT.index("VTE"), DIODE_LAYOUT.index("GMIN")
S_BV, S_IKF, S_IKR, S_ISR = (DIODE_LAYOUT.index(k) for k in ("BV_EFF", "IKF_EFF", "IKR_EFF", "ISR"))

# plan layout: chord corrections per sample (-1: no explicit root), the degree of their series,
# then per direction (0: the diode oriented +1 forward-biased, for p >= 0; 1: the one oriented -1)
# the forward diode's present (0/1), Is, N Vt, GMIN, 1/(N Vt), kappa, 1/kappa, the table coordinate
# of x (eq. (9)) per volt of c and its offset, the offset of u, 1/(1 + R g), the reverse diode's rho IsS
# (rho = R/(1 + R g)), this diode's (3 N Vt / e)^3 (its cubic reverse branch, as the reverse diode of
# the other frame), "VS = VP" (0/1), the reverse diode's IsS (3 VS / e)^3 and rho IsS (3 VS / e)^3 (its
# cubic branch), then the coefficients of the two currents' Taylor series in delta (_current_poly):
# the forward diode's (IsP / kappa) (1/VP)^k / k!, times omega, and the reverse diode's
# IsS (-1/VS)^k / k! (times kappa where VS = VP), times exp(-u1/VS) (1/omega where VS = VP), k = 0..7
P_STEPS, P_DEG = range(2)
(D_HAS, D_IS, D_VTE, D_GMIN, D_INVV, D_KAPPA, D_INVK, D_SCALE, D_XOFF, D_UOFF, D_A1, D_RIS, D_K3,
 D_SAME, D_QC, D_RK3) = range(16)
N_TAYLOR = 8  # coefficients of degree 0..7 (the largest series degree chord_steps chooses)
D_FC, D_RC = 16, 16 + N_TAYLOR
N_PLAN_HEAD, DIR_SIZE = 2, 16 + 2 * N_TAYLOR
PLAN_SIZE = N_PLAN_HEAD + 2 * DIR_SIZE


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


# cubic fits of omega on [-3, -2), [-2, -1), [-1, 0), [0, 1) and [2^k, 2^(k+1)), k = 0..5, in t = x - centre:
# (centre, c0, c1, c2, c3) each.  Least-squares Chebyshev fits with weight 1/omega
# (numpy.polynomial.Chebyshev.fit, 4000 Chebyshev points against scipy.special.wrightomega); relative
# error below 9e-5 (tests/test_wdf.py), so one Fritsch-Shafer-Crowley step from them reaches machine
# precision (|r| < 2e-4 (1 + w) in _omega_refine).  The Taylor series at 1 they replace on [-3, 1) was
# 4e-2 off at -2 (three steps, three logarithms, where a driven clipper spends many samples).
_CUBIC = (
    -2.5, 0.07606667614484308, 0.07071368430253512, 0.030719670405329854, 0.00732234379373669,
    -1.5, 0.18537960939086062, 0.15638067211762166, 0.055489058626040984, 0.008245689304154487,
    -0.5, 0.4046881148384452, 0.288059047395781, 0.0725264101439887, 0.00252211803279769,
    0.5, 0.7662558647461548, 0.43380995722465243, 0.06929410319192292, -0.003800001602553815,
    1.5, 1.2649591511034701, 0.5584894478514655, 0.05445235745822342, -0.0053781824792884,
    3.0, 2.207900556244987, 0.6883151394217268, 0.03376593148503712, -0.0037646701236826734,
    6.0, 4.496453245524742, 0.8182438736775355, 0.01397071074269244, -0.0012820162280850805,
    12.0, 9.724870724278912, 0.9069518466574252, 0.0041450273743830835, -0.00023670222795249232,
    24.0, 20.957030604500453, 0.9545720035747303, 0.0010493364940966626, -3.203205449038156e-05,
    48.0, 44.210553022504214, 0.9779381781956317, 0.0002540259157512434, -3.9155827471520446e-06,
)


@njit(cache=True, inline="always", error_model="numpy")
def omega_guess(x: float) -> float:
    """Starting value of omega(x) by region: Lambert series below -3 (Lawrence et al. 2012), the cubic
    fits ``_CUBIC`` on [-3, 64) (no logarithm), asymptotic above."""
    if x < -3.0:  # Lambert series of W(e^x): z - z^2 + 3/2 z^3 - 8/3 z^4 + 125/24 z^5
        z = math.exp(x)
        z2 = z * z  # Estrin's scheme: two multiply-adds less in sequence than Horner's
        return z * ((1.0 - z) + z2 * ((1.5 - z * (8.0 / 3.0)) + z2 * (125.0 / 24.0)))
    if x < 64.0:
        if x < 1.0:
            b = 0 if x < -2.0 else 5 if x < -1.0 else 10 if x < 0.0 else 15
        else:
            b = 20 if x < 2.0 else 25 if x < 4.0 else 30 if x < 8.0 else 35 if x < 16.0 else 40 if x < 32.0 else 45
        t = x - _CUBIC[b]
        return _CUBIC[b + 1] + t * (_CUBIC[b + 2] + t * (_CUBIC[b + 3] + t * _CUBIC[b + 4]))
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


@intrinsic
def fma(typingctx, a, b, c):  # noqa: ANN001, ANN201 - numba intrinsic
    """``a b + c`` rounded once: LLVM's ``llvm.fma.f64``, the CPU's fused multiply-add (numba contracts
    no ``a * b + c`` by itself: each would be a multiplication and an addition in sequence)."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        f64 = llir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, llir.FunctionType(f64, [f64] * 3), "llvm.fma.f64")
        return builder.call(fn, [context.cast(builder, v, t, types.float64) for v, t in zip(args, sig.args)])

    return types.float64(a, b, c), codegen


# the piecewise polynomials of omega and v = 1/(omega (1 + omega)) (kernels/omega_table.py, docs/wdf.md eq. (13))
_TAB = np.ascontiguousarray(omega_table.COEFFS)
TAB_XLO, TAB_H, TAB_INVH = omega_table.XLO, omega_table.H, 1.0 / omega_table.H
TAB_N = float(omega_table.N_INTERVALS)
TAB_ERR_W, TAB_ERR_V = omega_table.ERR_W, omega_table.ERR_V
assert omega_table.DEG_W == 7 and omega_table.DEG_V == 5 and _TAB.shape == (omega_table.N_INTERVALS, 14)


@intrinsic
def _low_bits(typingctx, x):  # noqa: ANN001, ANN201 - numba intrinsic
    """The bits of the float64 ``x`` as a uint64 (LLVM ``bitcast``: one register move)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.bitcast(context.cast(builder, args[0], sig.args[0], types.float64), llir.IntType(64))

    return types.uint64(x), codegen


# 1.5 2^52: for |y| < 2^51, y + ROUND_MAGIC rounded to float64 holds round(y) in its low mantissa bits, and
# (y + ROUND_MAGIC) - ROUND_MAGIC is round(y) exactly (round to nearest, ties to even)
ROUND_MAGIC = 6755399441055744.0
_MAGIC_BITS = np.uint64(np.float64(ROUND_MAGIC).view(np.uint64))


@njit(cache=True, inline="always", error_model="numpy")
def omega_table_at(sc: float) -> tuple:
    """``(omega(x), 1/(omega(x) (1 + omega(x))))`` at the centred table coordinate ``sc = (x - TAB_XLO) / H - 1/2``
    in ``[-1/2, N_INTERVALS - 1/2)``: the interval ``j = round(sc)``'s two polynomials in ``tau = sc - j``
    (kernels/omega_table.py) by Estrin's scheme in fused multiply-adds, no logarithm, exponential or
    division; absolute error of omega below ``TAB_ERR_W``, relative error of v below ``TAB_ERR_V``
    (docs/wdf.md eq. (13)).  ``j`` and ``tau`` come from one addition of ``ROUND_MAGIC`` (no conversion
    between float and integer: a shorter chain from ``sc`` to the polynomials)."""
    r = sc + ROUND_MAGIC
    j = _low_bits(r) - _MAGIC_BITS  # round(sc) in [0, N_INTERVALS), unsigned: no wraparound check
    t = sc - (r - ROUND_MAGIC)  # in [-1/2, 1/2]
    c = _TAB
    t2 = t * t
    t4 = t2 * t2
    w = fma(fma(fma(c[j, 7], t, c[j, 6]), t2, fma(c[j, 5], t, c[j, 4])), t4,
            fma(fma(c[j, 3], t, c[j, 2]), t2, fma(c[j, 1], t, c[j, 0])))
    v = fma(fma(c[j, 13], t, c[j, 12]), t4, fma(fma(c[j, 11], t, c[j, 10]), t2, fma(c[j, 9], t, c[j, 8])))
    return w, v


@njit(cache=True, inline="always", error_model="numpy")
def omega_and_v(sc: float) -> tuple:
    """``(omega(x), 1/(omega (1 + omega)))`` at ``sc = (x - TAB_XLO) / H - 1/2``: the table on [-20, 64), else
    :func:`wright_omega` and one division."""
    if sc >= -0.5 and sc < TAB_N - 0.5:
        return omega_table_at(sc)
    w = wright_omega(TAB_XLO + (sc + 0.5) * TAB_H)
    return w, 1.0 / (w * (1.0 + w))


def omega_table_eval(x: float) -> tuple[float, float]:
    """:func:`omega_and_v` at ``x`` (tests)."""
    return omega_and_v((x - TAB_XLO) * TAB_INVH - 0.5)


@njit(cache=True, inline="always", error_model="numpy")
def pn(vd: float, isat: float, vte: float) -> float:
    """ngspice's junction current without GMIN (docs/devices.md), amperes: exponential / cubic reverse branch."""
    if vd >= -3.0 * vte:
        return isat * (math.exp(vd / vte) - 1.0)
    a = 3.0 * vte / (vd * CONST_E)
    return -isat * (1.0 + a * a * a)


# --------------------------------------------------------------------------- the plan
@njit(cache=True, error_model="numpy")
def chord_steps(e0: float, vmin: float, vmax: float) -> tuple:
    """(chord corrections per sample, series degree) for an error bound below OMEGA_TOL volts; (-1, 0): none.

    ``e0 = R IsS / (1 + R g)`` (volts, the largest IsS of the pair), ``vmin``/``vmax`` the smallest and
    largest ``N Vt``.  Chord steps on eq. (11) from ``delta = 0`` (docs/wdf.md eq. (12)): every iterate in
    ``[-2 e0, 0]`` and ``|delta_k - delta*| <= E0 L^k`` with ``E0 = e0 (1 + 2 e0/VT)``,
    ``L = (2 e0/VT) exp(2 e0/VT)``; to that the bound adds the table's omega and v (eq. (13):
    ``VP TAB_ERR_W + 2 e0 TAB_ERR_V``) and the cubic branch's series (``5 e0 (2 e0 / (3 VT))^3``).
    The exponentials of a correction are Taylor series of degree 3, 5 or 7 in
    ``|delta| / VT <= 3 e0 / vmin``, chosen so the remainder is below 3e-17 relative (rounding).
    """
    dmax = 3.0 * e0 / vmin
    if dmax <= 1e-4:
        deg = 3
    elif dmax <= 5e-3:
        deg = 5
    elif dmax <= 2e-2:
        deg = 7
    else:
        return -1, 0
    y = 2.0 * e0 / vmin
    L = y * math.exp(y)
    rest = vmax * TAB_ERR_W + 2.0 * e0 * TAB_ERR_V + 5.0 * e0 * (2.0 * e0 / (3.0 * vmin)) ** 3
    err = e0 * (1.0 + y)
    for k in range(MAX_OMEGA_STEPS):
        if err + rest <= OMEGA_TOL:
            return k, deg
        err *= L
    return -1, 0


@njit(cache=True, error_model="numpy")
def pair_setup(K: np.ndarray, theta: np.ndarray, spec: tuple, X: np.ndarray, o: int, max_cost: int) -> int:
    """Fill the plan ``X[o : o + PLAN_SIZE]`` of ``v = p + K f(v)``; returns its cost (0: no explicit root).

    The cost is one omega evaluation plus the chord corrections of the reverse-biased diode
    (eqs. (11)-(12)); ``max_cost``: the most worth taking (a plan that costs more is refused: DK's
    Newton from the tangent predictor is cheaper there).

    ``spec = (out_pos, theta_pos, out_neg, theta_neg)``: the output index and theta offset of the
    diode oriented +1 and -1 on the port (-1: none); ``K`` (1, Nf) ohms.  Returns 0 (and writes
    ``steps = -1``) unless ``K[0, o] = -R s_o`` with one ``R > 0``, every diode is plain at these
    values (no breakdown, knee or recombination current) and the bound of eq. (12) meets ``OMEGA_TOL``.
    """
    X[o + P_STEPS] = -1.0
    R = -1.0
    g = 0.0
    ismax = 0.0
    vmin = math.inf
    vmax = 0.0
    ok = True
    for d in range(2):
        b = o + N_PLAN_HEAD + d * DIR_SIZE
        out, off = spec[2 * d], spec[2 * d + 1]
        X[b + D_HAS] = 0.0
        X[b + D_IS] = 0.0
        X[b + D_GMIN] = 0.0
        X[b + D_VTE] = 1.0
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
        ismax = max(ismax, isat)
        vmin = min(vmin, vte)
        vmax = max(vmax, vte)
    if not (ok and R > 0.0 and R < math.inf):
        return 0
    onerg = 1.0 + R * g
    rho = R / onerg
    for d in range(2):
        b = o + N_PLAN_HEAD + d * DIR_SIZE
        bs = o + N_PLAN_HEAD + (1 - d) * DIR_SIZE
        vp, isp, vs, iss = X[b + D_VTE], X[b + D_IS], X[bs + D_VTE], X[bs + D_IS]
        X[b + D_INVV] = 1.0 / vp
        X[b + D_A1] = 1.0 / onerg
        X[b + D_SCALE] = TAB_INVH / (onerg * vp)  # the table coordinate s = c D_SCALE + D_XOFF of x
        X[b + D_RIS] = rho * iss  # the reverse-biased diode of this frame
        X[b + D_K3] = (3.0 * vp / CONST_E) ** 3  # this diode's cubic reverse branch (docs/devices.md)
        if X[b + D_HAS] != 0.0:
            kappa = rho * isp / vp
            if not kappa > 1e-280:  # omega(ln kappa + kappa) = kappa would underflow: 1/omega
                return 0
            X[b + D_KAPPA] = kappa
            X[b + D_INVK] = 1.0 / kappa  # exp(u/VP) = omega/kappa
            X[b + D_XOFF] = (rho * isp / vp + math.log(kappa) - TAB_XLO) * TAB_INVH - 0.5  # centred: omega_and_v
            X[b + D_UOFF] = R * isp  # u1 = (c + R IsP)/(1 + R g) - VP omega
        else:
            X[b + D_KAPPA] = X[b + D_INVK] = X[b + D_XOFF] = X[b + D_UOFF] = 0.0
        # the first correction in one division: both diodes present with VS = VP (exp(-u1/VS) = kappa/omega)
        X[b + D_SAME] = 1.0 if X[b + D_HAS] != 0.0 and X[bs + D_HAS] != 0.0 and vs == vp else 0.0
        k3 = (3.0 * vs / CONST_E) ** 3  # the reverse diode's cubic branch
        X[b + D_QC] = iss * k3
        X[b + D_RK3] = rho * iss * k3
        # the currents' Taylor coefficients in delta (_current_poly): forward IsP exp(u1/VP) = (IsP/kappa) omega
        fc = isp * X[b + D_INVK] if X[b + D_HAS] != 0.0 else 0.0
        rc = iss * (X[b + D_KAPPA] if X[b + D_SAME] != 0.0 else 1.0)
        for k in range(N_TAYLOR):
            X[b + D_FC + k] = fc
            X[b + D_RC + k] = rc
            fc *= X[b + D_INVV] / (k + 1)
            rc *= -1.0 / (vs * (k + 1))
    # a single diode has a reverse half-wave too: that frame has no forward diode (omega = 0)
    steps, deg = chord_steps(rho * ismax, vmin, vmax)
    cost = 1 + steps
    if steps < 0 or cost > max_cost:
        return 0
    X[o + P_STEPS] = float(steps)
    X[o + P_DEG] = float(deg)
    return cost


# --------------------------------------------------------------------------- the root
@njit(cache=True, error_model="numpy", inline="always")
def _expm1_series(t: float, deg: float) -> float:
    """exp(t) - 1 by its Taylor series of degree 3, 5 or 7 (the plan's choice for its bound on |t|), Horner
    in fused multiply-adds."""
    if deg == 3.0:
        return t * fma(t, fma(t, 1.0 / 6.0, 0.5), 1.0)
    if deg == 5.0:
        return t * fma(t, fma(t, fma(t, fma(t, 1.0 / 120.0, 1.0 / 24.0), 1.0 / 6.0), 0.5), 1.0)
    return t * fma(t, fma(t, fma(t, fma(t, fma(t, fma(t, 1.0 / 5040.0, 1.0 / 720.0), 1.0 / 120.0), 1.0 / 24.0),
                                    1.0 / 6.0), 0.5), 1.0)


@njit(cache=True, error_model="numpy", inline="always")
def _current_poly(d: float, scale: float, X: np.ndarray, b: int, g0: float, lin: float, deg: float) -> float:
    """``g0 + lin d + scale sum_k X[b + k] d^k`` (k = 1..deg; degree 3, 5 or 7) by Estrin's scheme in fused
    multiply-adds: a device current at ``u1 + d`` from its value ``g0`` at ``u1``, the coefficients of
    ``exp(u/VT)`` taken from the plan times one number from omega (``scale``), so that they are all ready
    when ``d`` is and two (three) multiply-adds follow it."""
    d2 = d * d
    lo = fma(fma(scale, X[b + 1], lin), d, g0)
    hi = fma(scale * X[b + 3], d, scale * X[b + 2])
    if deg == 3.0:
        return fma(hi, d2, lo)
    lo = fma(hi, d2, lo)
    d4 = d2 * d2
    h5 = fma(scale * X[b + 5], d, scale * X[b + 4])
    if deg == 5.0:
        return fma(h5, d4, lo)
    h7 = fma(scale * X[b + 7], d, scale * X[b + 6])
    return fma(fma(h7, d2, h5), d4, lo)


@njit(cache=True, error_model="numpy", inline="always")
def _reverse_at(delta: float, cubic: bool, s1: float, a1: float, inv1: float, invs: float, deg: float) -> float:
    """The reverse-biased diode's ``r(u1 + delta) / IsS`` (docs/devices.md): the exponential branch
    ``1 - exp(-u/VS)`` from ``s1 = exp(-u1/VS)`` times a Taylor series, or the cubic one
    ``1 - (3 VS/(e u))^3`` from ``a1`` (its value at ``u1``) times ``(1 + z)^-3 ~ 1 - 3 z + 6 z^2``,
    ``z = delta/u1``."""
    if cubic:
        z = delta * inv1
        return fma(-a1, fma(z, fma(z, 6.0, -3.0), 1.0), 1.0)
    return fma(-s1, 1.0 + _expm1_series(-delta * invs, deg), 1.0)


@njit(cache=True, error_model="numpy", inline="always")
def pair_root(c0: float, X: np.ndarray, o: int, k: int) -> tuple:
    """The root in the frame of the forward-biased diode (direction ``k``), ``c0 = |p| >= 0`` volts.

    Returns ``(ok, u, i_f, i_r)``: ``v = u`` (k = 0) or ``-u`` (k = 1), and the device outputs
    (amperes, GMIN included) of the diode forward-biased in this frame (it sees ``u``) and of the
    other one (it sees ``-u``).  ``ok`` is False where the plan has no explicit root or the
    junction exponent would pass EXP_LIMIT (the device equations continue linearly there).

    One omega evaluation gives ``u1`` without the reverse-biased diode (eq. (9)), with ``1/(1 + omega)``
    from the same table (eq. (13)); the plan's ``steps`` chord corrections on eq. (11),
    ``delta <- delta - h(delta)/(1 + omega)``, add it.  Every exponential is from ``omega``
    (``exp(u1/VP) = omega/kappa``, and ``exp(-u1/VS) = kappa/omega`` for identical ``VT``) times a
    Taylor series in the correction (docs/wdf.md, "Solving the root").  Where ``x`` lies in the table
    and ``VS = VP``: no logarithm, exponential or division, except ``1/u1`` on the cubic branch.
    ``k`` should be a constant where this is inlined (:func:`pair_solve`): the plan's loads then need
    no offset computed from the sample.
    """
    steps = int(X[o + P_STEPS])
    bp = o + N_PLAN_HEAD + k * DIR_SIZE
    bs = o + N_PLAN_HEAD + (1 - k) * DIR_SIZE
    if steps < 0:
        return False, 0.0, 0.0, 0.0
    has_p = X[bp + D_HAS] != 0.0
    w = 0.0
    v = 1.0
    iw = 1.0  # 1/(1 + omega)
    if has_p:
        w, v = omega_and_v(fma(c0, X[bp + D_SCALE], X[bp + D_XOFF]))
        iw = w * v
    vp = X[bp + D_VTE]
    u1 = fma(-vp, w, (c0 + X[bp + D_UOFF]) * X[bp + D_A1])  # eq. (9), VP mu = (c + R IsP) / (1 + R g)
    delta = 0.0
    i_r = 0.0
    deg = X[o + P_DEG]
    if X[bs + D_HAS] != 0.0:
        vs, invs, ris = X[bs + D_VTE], X[bs + D_INVV], X[bp + D_RIS]
        three = 3.0 * vs
        cubic = u1 > three  # the reverse-biased diode past -3 VS: ngspice's cubic branch
        # every correction lies in [-2 rho IsS, 0] (eq. (12)): only a u1 within that of -3 VS may cross to
        # the exponential branch, and there (rarely) the branch is chosen again at every step
        band = cubic and u1 < three + 2.5 * ris
        same = X[bp + D_SAME] != 0.0
        s1 = a1 = inv1 = i2 = i3 = 0.0
        if cubic:
            inv1 = 1.0 / u1
            i2 = inv1 * inv1
            i3 = i2 * inv1
            a1 = X[bs + D_K3] * i3  # (3 VS / (e u1))^3
        inv_w = fma(w, v, v)  # 1/omega = (1 + omega) v
        if not cubic or band:  # exp(-u1/VS): kappa/omega for equal N Vt
            s1 = X[bp + D_KAPPA] * inv_w if same else math.exp(-u1 * invs)
        if steps > 0:  # the first chord step, at delta = 0: -rho IsS r(u1) / (1 + omega)
            if cubic:  # rho IsS (a1 - 1) / (1 + omega)
                delta = fma(X[bp + D_RK3] * iw, i3, -ris * iw)
            elif same:  # (1 - kappa/omega) / (1 + omega) = (omega - kappa) v
                delta = ris * v * (X[bp + D_KAPPA] - w)
            else:
                delta = ris * iw * (s1 - 1.0)
        for _ in range(1, steps):  # eq. (11): delta <- delta - h(delta) / (1 + omega)
            em1 = _expm1_series(delta * X[bp + D_INVV], deg)
            cb = cubic and not (band and u1 + delta <= three)
            h = delta + vp * w * em1 + ris * _reverse_at(delta, cb, s1, a1, inv1, invs, deg)
            delta -= h * iw
        # the outputs at u = u1 + delta as polynomials in delta, their coefficients ready before delta is
        iss, gs = X[bs + D_IS], X[bs + D_GMIN]
        if cubic and not (band and u1 + delta <= three):
            # -IsS (1 - a1 (1 - 3 z + 6 z^2)) - g u, z = delta/u1, IsS a1 = D_QC / u1^3
            qc = X[bp + D_QC]
            g0 = fma(qc, i3, fma(-gs, u1, -iss))
            i_r = fma(6.0 * qc * (i2 * i3), delta * delta, fma(fma(-3.0 * qc, i2 * i2, -gs), delta, g0))
        else:  # -IsS (1 - s1 exp(-delta/VS)) - g u
            sc = inv_w if same else s1
            i_r = _current_poly(delta, sc, X, bp + D_RC, fma(-gs, u1, fma(sc, X[bp + D_RC], -iss)), -gs, deg)
    u = u1 + delta
    if not has_p:
        return True, u, 0.0, i_r
    if u > EXP_LIMIT * vp:
        return False, u, 0.0, i_r
    gp = X[bp + D_GMIN]  # IsP exp(u1/VP) = (IsP / kappa) omega, then times exp(delta/VP)
    i_f = _current_poly(delta, w, X, bp + D_FC, fma(gp, u1, fma(w, X[bp + D_FC], -X[bp + D_IS])), gp, deg)
    return True, u, i_f, i_r


@njit(cache=True, error_model="numpy", inline="always")
def pair_solve(p: float, X: np.ndarray, o: int) -> tuple:
    """``v = p + K f(v)`` for the diode or pair of the plan at ``X[o:]``, ``p`` volts: ``(ok, v, i_pos, i_neg)``,
    the port voltage and the outputs (amperes) of the diode oriented +1 and of the one oriented -1.

    The sign of ``p`` picks the frame by a branch into one of two copies of :func:`pair_root`, each with
    its direction a constant: the plan's numbers of that frame are loaded before ``p`` is known (a
    branch predicted from the previous samples), where a selected offset would make every load of the
    sample wait for ``p``.
    """
    if p >= 0.0:
        ok, u, i_f, i_r = pair_root(p, X, o, 0)
        return ok, u, i_f, i_r
    ok, u, i_f, i_r = pair_root(-p, X, o, 1)
    return ok, -u, i_r, i_f


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
    """``(cost, closed form?)`` of :func:`pair_setup` at these values, or None: the cost is one omega
    evaluation plus the chord corrections, all in closed form (no further omega or Newton iteration)."""
    X = np.zeros(PLAN_SIZE)
    K = np.ascontiguousarray(K, dtype=np.float64).reshape(1, -1)
    cost = pair_setup(K, np.ascontiguousarray(theta, dtype=np.float64).reshape(-1), spec, X, 0, max_cost)
    return (cost, True) if cost > 0 else None


__all__ = [
    "MAX_OMEGA_STEPS",
    "OMEGA_TOL",
    "PLAN_SIZE",
    "chord_steps",
    "diode_pair_spec",
    "omega_and_v",
    "omega_table_at",
    "omega_table_eval",
    "pair_root",
    "pair_setup",
    "pair_solve",
    "plan",
    "pn",
    "wright_omega",
]
