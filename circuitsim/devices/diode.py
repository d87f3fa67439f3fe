"""The ngspice 39 junction diode (level 1) at TEMP = TNOM = 27 degC, in differentiable torch.

Equations: ``docs/devices.md`` (the single statement of them), transcribed from ngspice-39
``src/spicelib/devices/dio/dioload.c`` (currents, charge), ``diotemp.c`` (derived quantities at
T = TNOM), ``diosetup.c`` (defaults, AREA/M scaling) and ``dio.c`` (the parameter table).

Conventions: ``vd`` is the internal anode minus cathode voltage (volts); the current (amperes)
flows anode -> cathode through the junction, the charge (coulombs) sits on the same branch.
The series resistance RS is not part of the junction: the caller adds an internal node.

The same derived quantities (:func:`diode_model`) feed the numba kernel
(``circuitsim.kernels.devices``), so torch and numba evaluate identical constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from circuitsim.devices.constants import CONST_E, EPSMIN, EXP_LIMIT, GMIN, RELTOL, ROOT2, VT

DTYPE = torch.float64
INF = math.inf

# Model parameters that the equations use, with ngspice's defaults (diosetup.c).  Where ngspice
# distinguishes "not given", the default here is a value with the same effect:
#   BV = inf (no breakdown), NBV = 0 (use N), IKF = IKR = inf (no high injection; ngspice also
#   disables them below 1e-28 A, so 0 works too), ISR = 0 (no recombination current).
DIODE_DEFAULTS: dict[str, float] = {
    "IS": 1e-14,  # saturation current, A (floored at 1e-28 as ngspice does)
    "N": 1.0,  # emission coefficient
    "RS": 0.0,  # series resistance, ohms (the caller's linear resistor)
    "CJO": 0.0,  # zero-bias junction capacitance, F
    "VJ": 1.0,  # junction potential, V
    "M": 0.5,  # grading coefficient (ngspice limits it to 0.9)
    "FC": 0.5,  # forward-bias depletion capacitance coefficient
    "TT": 0.0,  # transit time, s
    "BV": INF,  # reverse breakdown voltage, V
    "IBV": 1e-3,  # current at breakdown voltage, A
    "NBV": 0.0,  # breakdown emission coefficient (0: same as N)
    "IKF": INF,  # forward knee current, A
    "IKR": INF,  # reverse knee current, A
    "ISR": 0.0,  # recombination saturation current, A
    "NR": 1.0,  # recombination emission coefficient
}

# Accepted, and without effect on DC and transient results at TEMP = TNOM (temperature
# coefficients, noise, safe-operating-area limits, tunnelling temperature terms).  Alternative
# spellings from ngspice's table are listed too.
DIODE_SILENT: frozenset[str] = frozenset({
    "TNOM", "TREF", "EG", "XTI", "TRS", "TRS1", "TRS2", "TTT1", "TTT2", "TM1", "TM2",
    "CTA", "CTC", "CTP", "TPB", "TVJ", "TPHP", "TCV", "TLEV", "TLEVC", "XTITUN", "KEG",
    "KF", "AF", "FV_MAX", "BV_MAX", "ID_MAX", "TE_MAX", "PD_MAX",
})

# The rest of ngspice 39's diode model table: accepted, but results differ from ngspice when a
# card gives them (sidewall junction, tunnelling currents, level 3 geometry, self-heating, the
# model-level default AREA/PJ).  The circuit builder warns about these.
DIODE_UNMODELLED: frozenset[str] = frozenset({
    "LEVEL", "JSW", "NS", "CJP", "CJSW", "PHP", "MJSW", "FCS", "AREA", "PJ",
    "JTUN", "JTUNSW", "NTUN", "RTH0", "CTH0", "LM", "LP", "WM", "WP", "XOM", "XOI", "XM", "XP",
})

# Alternative spellings of modelled parameters (dio.c IOPR entries).
DIODE_ALIASES: dict[str, str] = {"JS": "IS", "CJ0": "CJO", "CJ": "CJO", "PB": "VJ", "MJ": "M", "IK": "IKF",
                                 "IB": "IBV"}

# Instance parameters (dio.c DIOpTable) with their defaults.  AREA and M scale the model (see
# diode_instance_params); PJ, W, L, LM, LP, WM, WP only matter for the sidewall / level 3 parts
# (unmodelled); TEMP/DTEMP (degC) must leave the device at 27 degC; IC and OFF only steer the
# initial operating point.
DIODE_INSTANCE: dict[str, float] = {
    "AREA": 1.0, "M": 1.0, "PJ": 0.0, "W": 0.0, "L": 0.0, "LM": 0.0, "LP": 0.0, "WM": 0.0, "WP": 0.0,
    "TEMP": 27.0, "DTEMP": 0.0, "IC": 0.0, "OFF": 0.0,
}

# Optional simulator options a parameter mapping may carry (defaults from ngspice cktinit.c).
DIODE_OPTIONS: dict[str, float] = {"GMIN": GMIN, "RELTOL": RELTOL}


def _t(x: Tensor | float) -> Tensor:
    return x if isinstance(x, Tensor) else torch.tensor(float(x), dtype=DTYPE)


def _get(p: Mapping[str, Tensor | float], key: str) -> Tensor:
    if key in p:
        return _t(p[key])
    return torch.tensor(DIODE_DEFAULTS[key] if key in DIODE_DEFAULTS else DIODE_OPTIONS[key], dtype=DTYPE)


def diode_instance_params(p: Mapping[str, Tensor | float], area: Tensor | float = 1.0,
                          m: Tensor | float = 1.0) -> dict[str, Tensor]:
    """Model parameters scaled for one instance exactly as ngspice 39 does (diosetup.c, diotemp.c).

    ngspice folds the multiplier into the area (``area = AREA * M``) and scales IS, ISR, IKF,
    IKR and CJO by it (RS is divided by it); the level 1 breakdown current IBV is scaled by M
    only.  GMIN is *not* scaled.  The result is what :func:`diode_junction` expects.
    """
    a = _t(area) * _t(m)
    out = {k: _get(p, k) for k in DIODE_DEFAULTS}
    out["IS"] = torch.clamp(out["IS"], min=EPSMIN)  # diosetup.c: IS < EPSMIN -> EPSMIN, before area
    for k in ("IS", "ISR", "IKF", "IKR", "CJO"):
        out[k] = out[k] * a
    out["IBV"] = out["IBV"] * _t(m)
    out["RS"] = out["RS"] / a
    for k in DIODE_OPTIONS:
        if k in p:
            out[k] = _t(p[k])
    return out


def diode_breakdown_voltage(isat: Tensor, bv: Tensor, ibv: Tensor, nbv_vt: Tensor,
                            reltol: Tensor | float = RELTOL) -> Tensor:
    """ngspice's effective breakdown voltage ``tBrkdwnV`` (diotemp.c), volts.

    It moves BV so that the breakdown branch carries IBV at -BV: if ``IBV < IS*BV/Vt`` it is BV
    itself, else the fixed-point iteration of diotemp.c (at most 25 steps, stopping when the
    current matches IBV to ``reltol*IBV``; RELTOL is ngspice's ``.options reltol``).
    Elementwise; ``bv`` must be finite.
    """
    vt = VT
    direct = ibv < isat * bv / vt
    # in the direct case the iteration is not used: feed it a value that keeps its log finite
    cbv = torch.where(direct, isat * (bv / vt + 1.0), ibv)
    tol = reltol * cbv
    xbv = bv - nbv_vt * torch.log(1.0 + cbv / isat)
    done = torch.zeros_like(xbv, dtype=torch.bool)
    for _ in range(25):
        xnew = bv - nbv_vt * torch.log(cbv / isat + 1.0 - xbv / vt)
        xbv = torch.where(done, xbv, xnew)
        xcbv = isat * (torch.exp((bv - xbv) / nbv_vt) - 1.0 + xbv / vt)
        done = done | (torch.abs(xcbv - cbv) <= tol)
        if bool(done.all()):
            break
    return torch.where(direct, bv, xbv)


def diode_model(p: Mapping[str, Tensor | float]) -> dict[str, Tensor]:
    """Derived quantities of diotemp.c at T = TNOM (differentiable in the parameters).

    Keys: ``IS`` (floored), ``VTE`` = N*Vt, ``VJ`` (limited to 1/FC when FC*VJ > 1), ``M``
    (limited to 0.9), ``DEPCAP`` = FC*VJ, ``F1`` (uses the *unlimited* VJ, as diotemp.c does),
    ``F2``, ``F3``, ``IKF``/``IKR`` (0 = disabled), ``BV`` (ngspice's fitted tBrkdwnV, inf = no
    breakdown), ``VTEBRK`` = NBV*Vt, ``VTR`` = NR*Vt, ``VCRIT`` (for junction limiting), plus the
    raw ``CJO``, ``TT``, ``ISR``, ``GMIN`` (volts, amperes, farads, seconds, siemens).
    """
    isat = torch.clamp(_get(p, "IS"), min=EPSMIN)
    n = _get(p, "N")
    vte = n * VT
    vj = _get(p, "VJ")
    fc = _get(p, "FC")
    mg = torch.clamp(_get(p, "M"), max=0.9)  # diotemp.c: grading coefficient limited to 0.9
    xfc = torch.log(1.0 - fc)
    f1 = vj * (1.0 - torch.exp((1.0 - mg) * xfc)) / (1.0 - mg)
    f2 = torch.exp((1.0 + mg) * xfc)
    f3 = 1.0 - fc * (1.0 + mg)
    limit = fc * vj > 1.0  # diotemp.c: "junction potential VJ too large, limited to 1/FC"
    fc_safe = torch.where(limit, fc, torch.ones_like(fc))
    vj_eff = torch.where(limit, 1.0 / fc_safe, vj)
    depcap = fc * vj_eff

    def knee(key: str) -> Tensor:
        x = _get(p, key)
        on = (x >= EPSMIN) & torch.isfinite(x)
        return torch.where(on, x, torch.zeros_like(x))

    nbv = _get(p, "NBV")
    nbv = torch.where(nbv > 0.0, nbv, n)
    vtebrk = nbv * VT
    bv = _get(p, "BV")
    bv_on = torch.isfinite(bv)
    if bool(bv_on.any()):
        bv_safe = torch.where(bv_on, bv, torch.ones_like(bv))
        fitted = diode_breakdown_voltage(isat, bv_safe, _get(p, "IBV"), vtebrk, _get(p, "RELTOL"))
        bv_eff = torch.where(bv_on, fitted, torch.full_like(fitted, INF))
    else:
        bv_eff = torch.full_like(bv, INF)
    return {
        "IS": isat, "VTE": vte, "VJ": vj_eff, "M": mg, "DEPCAP": depcap, "F1": f1, "F2": f2, "F3": f3,
        "IKF": knee("IKF"), "IKR": knee("IKR"), "BV": bv_eff, "VTEBRK": vtebrk, "VTR": _get(p, "NR") * VT,
        "VCRIT": vte * torch.log(vte / (ROOT2 * isat)),
        "CJO": _get(p, "CJO"), "TT": _get(p, "TT"), "ISR": _get(p, "ISR"), "GMIN": _get(p, "GMIN"),
    }


def limexp(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(value, derivative)`` of exp(x), continued linearly above EXP_LIMIT (our overflow guard).

    Below EXP_LIMIT both are exactly ``exp(x)`` as in ngspice; above it ngspice would overflow.
    """
    e = torch.exp(torch.clamp(x, max=EXP_LIMIT))
    return e * (1.0 + torch.clamp(x - EXP_LIMIT, min=0.0)), e


def pn_current(v: Tensor, isat: Tensor, vte: Tensor) -> tuple[Tensor, Tensor]:
    """ngspice's junction current without GMIN: ``IS*(exp(v/vte)-1)`` for ``v >= -3 vte``, else
    ``-IS*(1 + (3 vte/(v e))**3)`` (dioload.c, bjtload.c); returns (amperes, siemens)."""
    fwd = v >= -3.0 * vte
    ev, dev = limexp(v / vte)
    i_f = isat * (ev - 1.0)
    g_f = isat * dev / vte
    vr = torch.where(fwd, -3.0 * vte, v)  # keeps the unused reverse side finite
    arg = 3.0 * vte / (vr * CONST_E)
    arg = arg * arg * arg
    i_r = -isat * (1.0 + arg)
    g_r = isat * 3.0 * arg / vr
    return torch.where(fwd, i_f, i_r), torch.where(fwd, g_f, g_r)


def depletion_charge(v: Tensor, cj0: Tensor, vj: Tensor, mg: Tensor, fcv: Tensor, f1: Tensor, f2: Tensor,
                     f3: Tensor) -> tuple[Tensor, Tensor]:
    """Depletion charge (coulombs) and capacitance (farads) with the FC linearisation.

    Below ``fcv = FC*VJ``: ``VJ*CJ0*(1-(1-v/VJ)**(1-M))/(1-M)``; above it the quadratic
    continuation ``CJ0*F1 + CJ0/F2*(F3*(v-fcv) + M/(2 VJ)*(v**2-fcv**2))`` (dioload.c, bjtload.c).
    """
    below = v < fcv
    vb = torch.where(below, v, torch.zeros_like(v))  # arg = 1 on the unused side
    arg = 1.0 - vb / vj
    sarg = torch.exp(-mg * torch.log(arg))
    q_b = vj * cj0 * (1.0 - arg * sarg) / (1.0 - mg)
    c_b = cj0 * sarg
    czof2 = cj0 / f2
    q_a = cj0 * f1 + czof2 * (f3 * (v - fcv) + (mg / (vj + vj)) * (v * v - fcv * fcv))
    c_a = czof2 * (f3 + mg * v / vj)
    return torch.where(below, q_b, q_a), torch.where(below, c_b, c_a)


def diode_junction(vd: Tensor, p: Mapping[str, Tensor | float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(i, di/dvd, q, dq/dvd) of the intrinsic junction (ngspice 39 dioload.c).

    ``vd``: internal anode - cathode, volts (any shape).  ``p`` holds the DIODE_DEFAULTS keys
    (missing ones take the defaults) with AREA already applied by the caller (see
    :func:`diode_instance_params`); optionally GMIN and RELTOL.  Returns amperes, siemens,
    coulombs, farads.  The current includes GMIN*vd; the diffusion charge is TT times that total
    current (ngspice 39 multiplies TT by the current after high injection and GMIN).
    """
    vd = _t(vd)
    d = diode_model(p)
    isat, vte, gmin = d["IS"], d["VTE"], d["GMIN"]
    fwd = vd >= -3.0 * vte

    cd, gd = pn_current(vd, isat, vte)  # forward and reverse branches
    bv = d["BV"]
    bv_on = torch.isfinite(bv)
    if bool(bv_on.any()):  # breakdown: -IS*exp(-(BV+vd)/(NBV Vt)) below -BV
        bv_s = torch.where(bv_on, bv, torch.zeros_like(bv))
        brk = bv_on & ~fwd & (vd < -bv_s)
        evrev, devrev = limexp(-(bv_s + vd) / d["VTEBRK"])
        cd = torch.where(brk, -isat * evrev, cd)
        gd = torch.where(brk, isat * devrev / d["VTEBRK"], gd)

    isr = d["ISR"]
    if isr.requires_grad or bool((isr != 0.0).any()):
        # recombination current, forward branch only (dioload.c, DIOrecSatCurGiven)
        vtr = d["VTR"]
        er, der = limexp(vd / vtr)
        c_rec = isr * (er - 1.0)
        g_rec = isr * der / vtr
        x = 1.0 - vd / d["VJ"]
        t1 = x * x + 0.005
        gen = torch.pow(t1, d["M"] / 2.0)
        # exact derivative of gen (ngspice's gen_fac_vd lacks the 1/VJ factor and its gd uses
        # c_rec*gen; only the Jacobian differs, the current is the same)
        gen_vd = -(d["M"] / d["VJ"]) * x * torch.pow(t1, d["M"] / 2.0 - 1.0)
        cd = cd + torch.where(fwd, c_rec * gen, torch.zeros_like(c_rec))
        gd = gd + torch.where(fwd, g_rec * gen + c_rec * gen_vd, torch.zeros_like(g_rec))

    # high injection (IKF forward, IKR reverse), then GMIN (dioload.c "limit forward/reverse")
    ikf, ikr = d["IKF"], d["IKR"]
    kf = fwd & (ikf > 0.0) & (cd > 1.0e-18)
    kr = ~fwd & (ikr > 0.0) & (cd < -1.0e-18)
    one = torch.ones_like(cd)
    if bool(kf.any()) or ikf.requires_grad:
        ikf_s = torch.where(ikf > 0.0, ikf, torch.ones_like(ikf))
        cdk = torch.where(kf, cd, one)
        s = torch.sqrt(cdk / ikf_s)
        g_k = ((1.0 + s) * gd - cdk * gd / (2.0 * s * ikf_s)) / (1.0 + 2.0 * s + cdk / ikf_s)
        gd = torch.where(kf, g_k, gd)
        cd = torch.where(kf, cdk / (1.0 + s), cd)
    if bool(kr.any()) or ikr.requires_grad:
        ikr_s = torch.where(ikr > 0.0, ikr, torch.ones_like(ikr))
        cdk = torch.where(kr, cd, -one)
        s = torch.sqrt(cdk / (-ikr_s))
        g_k = ((1.0 + s) * gd + cdk * gd / (2.0 * s * ikr_s)) / (1.0 + 2.0 * s - cdk / ikr_s)
        gd = torch.where(kr, g_k, gd)
        cd = torch.where(kr, cdk / (1.0 + s), cd)
    gd = gd + gmin
    cd = cd + gmin * vd

    # charge: diffusion TT*cd (after knee and GMIN, as in ngspice 39) + depletion
    qdep, cdep = depletion_charge(vd, d["CJO"], d["VJ"], d["M"], d["DEPCAP"], d["F1"], d["F2"], d["F3"])
    tt = d["TT"]
    return cd, gd, tt * cd + qdep, tt * gd + cdep


__all__ = [
    "DIODE_ALIASES",
    "DIODE_DEFAULTS",
    "DIODE_INSTANCE",
    "DIODE_OPTIONS",
    "DIODE_SILENT",
    "DIODE_UNMODELLED",
    "depletion_charge",
    "diode_breakdown_voltage",
    "diode_instance_params",
    "diode_junction",
    "diode_model",
    "limexp",
    "pn_current",
]
