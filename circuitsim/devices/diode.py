"""The ngspice 39 junction diode (level 1) at TEMP = TNOM = 27 degC, in differentiable torch.

Equations: ``docs/devices.md`` (the single statement of them), transcribed from ngspice-39
``src/spicelib/devices/dio/dioload.c`` (currents, charge), ``diotemp.c`` (derived quantities at
T = TNOM), ``diosetup.c`` (defaults, AREA/M scaling) and ``dio.c`` (the parameter table).

Conventions: ``vd`` is the internal anode minus cathode voltage (volts); the current (amperes)
flows anode -> cathode through the junction, the charge (coulombs) sits on the same branch.
The series resistance RS is not part of the junction: the caller adds an internal node.

The equations are written once, as a program (:func:`diode_program`); the torch evaluation,
the numba forward, the Jacobian and the parameter VJP are generated from it
(``circuitsim.devices.program``).  The derived quantities (:func:`diode_model`, diotemp.c) are
slots of the parameter vector (``DIODE_LAYOUT``) that both read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import sympy
import torch
from sympy import Piecewise
from torch import Tensor

from circuitsim.devices.constants import EPSMIN, GMIN, RELTOL, ROOT2, VT
from circuitsim.devices.family import DeviceFamily, Limit, Output, param_value
from circuitsim.devices.junction import depletion, pn
from circuitsim.devices.program import Program, _t, limexp

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


def _get(p: Mapping[str, Tensor | float], key: str) -> Tensor:
    return param_value(p, key, DIODE_DEFAULTS, DIODE_OPTIONS)


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


# ----------------------------------------------------------------------------- the theta layout
# The raw entries (what a card gives; the torch derived quantities are recomputed from them) and
# the derived constants of diode_model, keyed as diode_model names them.
DIODE_PARAM_ORDER: tuple[str, ...] = tuple(DIODE_DEFAULTS) + tuple(DIODE_OPTIONS)
DIODE_DERIVED_ORDER: tuple[str, ...] = (
    "IS_EFF", "VTE", "VJ_EFF", "M_EFF", "DEPCAP", "F1", "F2", "F3", "IKF_EFF", "IKR_EFF", "BV_EFF",
    "VTEBRK", "VTR", "VCRIT",
)
_DERIVED_KEYS = ("IS", "VTE", "VJ", "M", "DEPCAP", "F1", "F2", "F3", "IKF", "IKR", "BV", "VTEBRK", "VTR", "VCRIT")
DIODE_LAYOUT: tuple[str, ...] = DIODE_PARAM_ORDER + DIODE_DERIVED_ORDER
# diode_model key -> slot of the layout, for the keys the equations read
_SLOT = {**{k: DIODE_LAYOUT.index(k) for k in ("CJO", "TT", "ISR", "GMIN")},
         **{k: len(DIODE_PARAM_ORDER) + i for i, k in enumerate(_DERIVED_KEYS)}}


def _raw(p: Mapping[str, Tensor | float], key: str) -> Tensor:
    return _get(p, key).to(DTYPE).reshape(())


def diode_params_torch(p: Mapping[str, Tensor | float]) -> Tensor:
    """The diode parameter vector (``DIODE_LAYOUT``, 31 entries), differentiable in ``p``."""
    raw = [_raw(p, k) for k in DIODE_PARAM_ORDER]
    d = diode_model(dict(zip(DIODE_PARAM_ORDER, raw)))
    return torch.stack(raw + [d[k].reshape(()) for k in _DERIVED_KEYS])


# ----------------------------------------------------------------------------- the equations


def diode_program(features: frozenset[str]) -> Program:
    """The junction of dioload.c as a program (docs/devices.md, "Diode"): outputs ``i``, ``q``.

    ``features`` switches on the optional terms: ``BV`` (breakdown), ``ISR`` (recombination),
    ``IKF`` / ``IKR`` (high injection), ``TT`` (diffusion charge), ``CJO`` (depletion charge).
    Without them the same terms are exactly zero, so a variant agrees with the full program.
    """
    b = Program("diode")
    vd = b.port("vd")
    P = {k: b.param(k, slot) for k, slot in _SLOT.items() if k != "VCRIT"}  # noqa: N806
    fwd = vd >= -3 * P["VTE"]
    brk = (P["BV"], P["VTEBRK"]) if "BV" in features else None
    cd = pn(b, "cd", vd, P["IS"], P["VTE"], brk)
    if "ISR" in features:  # recombination current, forward branch only (DIOrecSatCurGiven)
        gen = ((1 - vd / P["VJ"]) ** 2 + sympy.Float(0.005)) ** (P["M"] / 2)
        rec = b.let("rec", Piecewise((P["ISR"] * (limexp(vd / P["VTR"]) - 1) * gen, fwd), (0, True)),
                    zero_if=sympy.Eq(P["ISR"], 0))
        cd = b.let("cd_rec", cd + rec)
    knees = []  # high injection: ngspice's 1e-18 A thresholds (a tiny jump, as in ngspice)
    if "IKF" in features:
        knees.append((cd / (1 + sympy.sqrt(cd / P["IKF"])), fwd & (P["IKF"] > 0) & (cd > 1e-18)))
    if "IKR" in features:
        knees.append((cd / (1 + sympy.sqrt(cd / -P["IKR"])), ~fwd & (P["IKR"] > 0) & (cd < -1e-18)))
    if knees:
        cd = b.let("cd_knee", Piecewise(*knees, (cd, True)))
    i = b.output("i", cd + P["GMIN"] * vd)
    # ngspice 39: the diffusion charge is TT times the final current (after the knee, with GMIN)
    q = P["TT"] * i if "TT" in features else sympy.S.Zero
    if "CJO" in features:
        q = q + depletion(b, "qdep", vd, P["CJO"], P["VJ"], P["M"], P["DEPCAP"], P["F1"], P["F2"], P["F3"])
    b.output("q", q)
    return b


class DiodeFamily(DeviceFamily):
    """The ngspice 39 junction diode (level 1): terminals anode, cathode; RS on the anode side."""

    name = "diode"
    letter = "D"
    model_types = ("D",)
    terminals = ("a", "k")
    series = {"a": "RS"}
    ports = (("a", "k"),)
    outputs = (Output("i", "a", "k"), Output("q", "a", "k", charge=True))
    defaults = DIODE_DEFAULTS
    aliases = DIODE_ALIASES
    silent = DIODE_SILENT
    unmodelled = DIODE_UNMODELLED
    instance = DIODE_INSTANCE
    scaling = ("AREA", "M")
    layout = DIODE_LAYOUT
    # dioload.c: DEVpnjlim(vd, vold, N Vt, tVcrit)
    limits = (Limit(0, "VTE", "VCRIT"),)
    charge_params = frozenset({"CJO", "TT"})
    all_features = frozenset({"BV", "ISR", "IKF", "IKR", "TT", "CJO"})
    inline = True  # about 10 ns per sample faster on the clipper than a call

    def program(self, features: frozenset[str]) -> Program:
        return diode_program(features)

    def instance_params(self, p: Mapping[str, Tensor], inst: Mapping[str, Tensor],
                        model_type: str) -> dict[str, Tensor]:
        return diode_instance_params(p, inst.get("AREA", 1.0), inst.get("M", 1.0))

    def theta(self, p: Mapping[str, Tensor], model_type: str) -> Tensor:
        return diode_params_torch(p)


FAMILY = DiodeFamily()


def diode_junction(vd: Tensor, p: Mapping[str, Tensor | float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(i, di/dvd, q, dq/dvd) of the intrinsic junction (ngspice 39 dioload.c).

    ``vd``: internal anode - cathode, volts (any shape).  ``p`` holds the DIODE_DEFAULTS keys
    (missing ones take the defaults) with AREA already applied by the caller (see
    :func:`diode_instance_params`); optionally GMIN and RELTOL.  Returns amperes, siemens,
    coulombs, farads.  The current includes GMIN*vd; the diffusion charge is TT times that total
    current (ngspice 39 multiplies TT by the current after high injection and GMIN).  Evaluated
    by the torch code generated from :func:`diode_program` (all terms); the derivatives are the
    generated forward-mode ones, exact derivatives of the current and charge.
    """
    (i, q), ((g,), (c,)) = FAMILY.evaluate([_t(vd)], diode_model(p))
    return i, g, q, c


__all__ = [
    "DIODE_ALIASES",
    "DIODE_DEFAULTS",
    "DIODE_INSTANCE",
    "DIODE_OPTIONS",
    "DIODE_SILENT",
    "DIODE_UNMODELLED",
    "DIODE_DERIVED_ORDER",
    "DIODE_LAYOUT",
    "DIODE_PARAM_ORDER",
    "FAMILY",
    "DiodeFamily",
    "diode_breakdown_voltage",
    "diode_instance_params",
    "diode_junction",
    "diode_model",
    "diode_params_torch",
    "diode_program",
]
