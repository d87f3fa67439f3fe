"""Scalar numba kernels of the ngspice 39 diode and Gummel-Poon BJT, and their parameter vectors.

The equations are the ones of ``circuitsim.devices.diode`` / ``circuitsim.devices.bjt`` (see
``docs/devices.md``; ngspice-39 ``dioload.c`` and ``bjtload.c``), evaluated one sample at a time
with no allocation: the forward junction costs one ``exp``; depletion charges add a ``log`` and an
``exp`` only when their zero-bias capacitance is non-zero.

Parameter vectors (float64, built by :func:`diode_params_vector` / :func:`bjt_params_vector`
or, differentiably, by :func:`diode_params_torch` / :func:`bjt_params_torch`):

* diode: the 17 entries of ``DIODE_PARAM_ORDER`` (the model parameters in ``DIODE_DEFAULTS``
  order, then the options GMIN and RELTOL), then the 14 derived constants of
  ``DIODE_DERIVED_ORDER`` -- 31 entries.
* BJT: the 34 entries of ``BJT_PARAM_ORDER`` (POLARITY = +1 NPN / -1 PNP, the model parameters
  in ``BJT_DEFAULTS`` order, then GMIN), then the 26 derived constants of ``BJT_DERIVED_ORDER``
  -- 60 entries.

The derived constants are pure functions of the raw entries (``diode_model`` / ``bjt_model``,
i.e. diotemp.c / bjttemp.c at T = TNOM); the torch equations recompute them from the raw
entries, so gradients w.r.t. a vector reach the raw entries only.  The kernels read the derived
slots (and a few raw ones: TT, CJO, ISR, GMIN; BF, BR, TF, TR, XTF, ITF, CJE, VJE, VJC).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from numba import njit

from circuitsim.devices.bjt import BJT_DEFAULTS, BJT_OPTIONS, bjt_model
from circuitsim.devices.constants import CONST_E, EXP_LIMIT
from circuitsim.devices.diode import DIODE_DEFAULTS, DIODE_OPTIONS, diode_model

DTYPE = torch.float64

# ----------------------------------------------------------------------------- layouts
DIODE_PARAM_ORDER: tuple[str, ...] = (
    "IS", "N", "RS", "CJO", "VJ", "M", "FC", "TT", "BV", "IBV", "NBV", "IKF", "IKR", "ISR", "NR",
    "GMIN", "RELTOL",
)
DIODE_DERIVED_ORDER: tuple[str, ...] = (
    "IS_EFF", "VTE", "VJ_EFF", "M_EFF", "DEPCAP", "F1", "F2", "F3", "IKF_EFF", "IKR_EFF", "BV_EFF",
    "VTEBRK", "VTR", "VCRIT",
)
_DIODE_DERIVED_KEYS = ("IS", "VTE", "VJ", "M", "DEPCAP", "F1", "F2", "F3", "IKF", "IKR", "BV", "VTEBRK",
                       "VTR", "VCRIT")
DIODE_LAYOUT: tuple[str, ...] = DIODE_PARAM_ORDER + DIODE_DERIVED_ORDER

BJT_PARAM_ORDER: tuple[str, ...] = (
    "POLARITY",
    "IS", "IBE", "IBC", "BF", "NF", "VAF", "IKF", "NKF", "ISE", "NE", "BR", "NR", "VAR", "IKR", "ISC", "NC",
    "RB", "RC", "RE", "CJE", "VJE", "MJE", "TF", "XTF", "VTF", "ITF", "CJC", "VJC", "MJC", "XCJC", "TR", "FC",
    "GMIN",
)
BJT_POLARITY_INDEX: int = 0
BJT_DERIVED_ORDER: tuple[str, ...] = (
    "ISBE", "ISBC", "ISE_EFF", "ISC_EFF", "VTF_N", "VTR_N", "VTE", "VTC", "IVAF", "IVAR", "IIKF", "IIKR",
    "NKF_EFF", "OVTF", "FCPE", "F1", "F2", "F3", "FCPC", "F5", "F6", "F7", "CZBC", "MJE_EFF", "MJC_EFF",
    "VCRIT",
)
_BJT_DERIVED_KEYS = ("ISBE", "ISBC", "ISE", "ISC", "VTF", "VTR", "VTE", "VTC", "IVAF", "IVAR", "IIKF", "IIKR",
                     "NKF", "OVTF", "FCPE", "F1", "F2", "F3", "FCPC", "F5", "F6", "F7", "CZBC", "MJE", "MJC",
                     "VCRIT")
BJT_LAYOUT: tuple[str, ...] = BJT_PARAM_ORDER + BJT_DERIVED_ORDER

# The kernels index with literal constants (numba freezes globals at compile time and its cache
# only watches this file), so the layouts above are spelled out and checked here.
assert DIODE_PARAM_ORDER[:15] == tuple(DIODE_DEFAULTS), "DIODE_PARAM_ORDER out of date"
assert BJT_PARAM_ORDER[1:-1] == tuple(BJT_DEFAULTS), "BJT_PARAM_ORDER out of date"

# diode indices
_D_CJO, _D_TT, _D_ISR, _D_GMIN = 3, 7, 13, 15
(_D_ISEFF, _D_VTE, _D_VJ, _D_M, _D_DEPCAP, _D_F1, _D_F2, _D_F3, _D_IKF, _D_IKR, _D_BV, _D_VTEBRK, _D_VTR,
 _D_VCRIT) = range(17, 31)
# BJT indices
_B_POL, _B_BF, _B_BR, _B_CJE, _B_VJE, _B_TF, _B_XTF, _B_ITF = 0, 4, 11, 20, 21, 23, 24, 26
_B_VJC, _B_TR, _B_GMIN = 28, 31, 33
(_B_ISBE, _B_ISBC, _B_ISE, _B_ISC, _B_VTF, _B_VTR, _B_VTE, _B_VTC, _B_IVAF, _B_IVAR, _B_IIKF, _B_IIKR, _B_NKF,
 _B_OVTF, _B_FCPE, _B_F1, _B_F2, _B_F3, _B_FCPC, _B_F5, _B_F6, _B_F7, _B_CZBC, _B_MJE, _B_MJC,
 _B_VCRIT) = range(34, 60)

for _name, _idx in (("CJO", _D_CJO), ("TT", _D_TT), ("ISR", _D_ISR), ("GMIN", _D_GMIN), ("IS_EFF", _D_ISEFF),
                    ("VCRIT", _D_VCRIT)):
    assert DIODE_LAYOUT[_idx] == _name, _name
for _name, _idx in (("POLARITY", _B_POL), ("BF", _B_BF), ("BR", _B_BR), ("CJE", _B_CJE), ("VJE", _B_VJE),
                    ("TF", _B_TF), ("XTF", _B_XTF), ("ITF", _B_ITF), ("VJC", _B_VJC), ("TR", _B_TR),
                    ("GMIN", _B_GMIN), ("ISBE", _B_ISBE), ("VCRIT", _B_VCRIT)):
    assert BJT_LAYOUT[_idx] == _name, _name
assert len(DIODE_LAYOUT) == 31 and len(BJT_LAYOUT) == 60

# ----------------------------------------------------------------------------- vectors


def _raw(p: Mapping[str, torch.Tensor | float], key: str, defaults: Mapping[str, float],
         options: Mapping[str, float]) -> torch.Tensor:
    v = p[key] if key in p else (defaults[key] if key in defaults else options[key])
    return (v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=DTYPE)).to(DTYPE).reshape(())


def diode_params_torch(p: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """The diode parameter vector (``DIODE_LAYOUT``, 31 entries), differentiable in ``p``."""
    raw = [_raw(p, k, DIODE_DEFAULTS, DIODE_OPTIONS) for k in DIODE_PARAM_ORDER]
    d = diode_model(dict(zip(DIODE_PARAM_ORDER, raw)))
    return torch.stack(raw + [d[k].reshape(()) for k in _DIODE_DERIVED_KEYS])


def bjt_params_torch(p: Mapping[str, torch.Tensor | float], polarity: float) -> torch.Tensor:
    """The BJT parameter vector (``BJT_LAYOUT``, 60 entries), differentiable in ``p``."""
    if float(polarity) not in (1.0, -1.0):
        raise ValueError(f"polarity must be +1 (NPN) or -1 (PNP), got {polarity}")
    raw = [_raw(p, k, BJT_DEFAULTS, BJT_OPTIONS) for k in BJT_PARAM_ORDER[1:]]
    d = bjt_model(dict(zip(BJT_PARAM_ORDER[1:], raw)))
    pol = torch.tensor(float(polarity), dtype=DTYPE)
    return torch.stack([pol] + raw + [d[k].reshape(()) for k in _BJT_DERIVED_KEYS])


def diode_params_vector(p: Mapping[str, float]) -> np.ndarray:
    """The diode parameter vector for :func:`diode_nb` (missing keys take ngspice's defaults)."""
    with torch.no_grad():
        return diode_params_torch({k: float(v) for k, v in p.items()}).numpy().copy()


def bjt_params_vector(p: Mapping[str, float], polarity: float) -> np.ndarray:
    """The BJT parameter vector for :func:`bjt_nb`; ``polarity`` +1 NPN, -1 PNP."""
    with torch.no_grad():
        return bjt_params_torch({k: float(v) for k, v in p.items()}, polarity).numpy().copy()


# ----------------------------------------------------------------------------- kernels


@njit(cache=True, fastmath=False)
def _limexp(x):
    # exp(x) and its derivative, continued linearly above EXP_LIMIT (devices.diode.limexp)
    if x > EXP_LIMIT:
        e = math.exp(EXP_LIMIT)
        return e * (1.0 + (x - EXP_LIMIT)), e
    e = math.exp(x)
    return e, e


@njit(cache=True, fastmath=False)
def _pn(v, isat, vte):
    # dioload.c / bjtload.c junction current without GMIN: (amperes, siemens)
    if v >= -3.0 * vte:
        e, de = _limexp(v / vte)
        return isat * (e - 1.0), isat * de / vte
    arg = 3.0 * vte / (v * CONST_E)
    arg = arg * arg * arg
    return -isat * (1.0 + arg), isat * 3.0 * arg / v


@njit(cache=True, fastmath=False)
def _depletion(v, cj0, vj, mg, fcv, f1, f2, f3):
    # depletion charge and capacitance with the FC linearisation (dioload.c, bjtload.c)
    if v < fcv:
        arg = 1.0 - v / vj
        sarg = math.exp(-mg * math.log(arg))
        return vj * cj0 * (1.0 - arg * sarg) / (1.0 - mg), cj0 * sarg
    czof2 = cj0 / f2
    return (cj0 * f1 + czof2 * (f3 * (v - fcv) + (mg / (vj + vj)) * (v * v - fcv * fcv)),
            czof2 * (f3 + mg * v / vj))


@njit(cache=True, fastmath=False)
def diode_nb(vd, p):
    """(i, di/dvd, q, dq/dvd) of the diode junction at ``vd`` volts; ``p`` from diode_params_vector."""
    isat = p[_D_ISEFF]
    vte = p[_D_VTE]
    if vd >= -3.0 * vte:
        e, de = _limexp(vd / vte)
        cd = isat * (e - 1.0)
        gd = isat * de / vte
        isr = p[_D_ISR]
        if isr != 0.0:  # recombination current
            vtr = p[_D_VTR]
            er, der = _limexp(vd / vtr)
            c_rec = isr * (er - 1.0)
            g_rec = isr * der / vtr
            mg = p[_D_M]
            vj = p[_D_VJ]
            x = 1.0 - vd / vj
            t1 = x * x + 0.005
            gen = math.pow(t1, mg / 2.0)
            gen_vd = -(mg / vj) * x * math.pow(t1, mg / 2.0 - 1.0)
            cd += c_rec * gen
            gd += g_rec * gen + c_rec * gen_vd
        ikf = p[_D_IKF]
        if ikf > 0.0 and cd > 1.0e-18:  # high injection
            s = math.sqrt(cd / ikf)
            gd = ((1.0 + s) * gd - cd * gd / (2.0 * s * ikf)) / (1.0 + 2.0 * s + cd / ikf)
            cd = cd / (1.0 + s)
    else:
        if vd >= -p[_D_BV]:
            arg = 3.0 * vte / (vd * CONST_E)
            arg = arg * arg * arg
            cd = -isat * (1.0 + arg)
            gd = isat * 3.0 * arg / vd
        else:  # breakdown
            vtb = p[_D_VTEBRK]
            evrev, devrev = _limexp(-(p[_D_BV] + vd) / vtb)
            cd = -isat * evrev
            gd = isat * devrev / vtb
        ikr = p[_D_IKR]
        if ikr > 0.0 and cd < -1.0e-18:
            s = math.sqrt(cd / (-ikr))
            gd = ((1.0 + s) * gd + cd * gd / (2.0 * s * ikr)) / (1.0 + 2.0 * s - cd / ikr)
            cd = cd / (1.0 + s)
    gmin = p[_D_GMIN]
    gd = gd + gmin
    cd = cd + gmin * vd
    tt = p[_D_TT]
    q = tt * cd
    c = tt * gd
    cj0 = p[_D_CJO]
    if cj0 != 0.0:
        qd, cp = _depletion(vd, cj0, p[_D_VJ], p[_D_M], p[_D_DEPCAP], p[_D_F1], p[_D_F2], p[_D_F3])
        q = q + qd
        c = c + cp
    return cd, gd, q, c


@njit(cache=True, fastmath=False)
def bjt_nb(vbe, vbc, p, out):
    """Gummel-Poon BJT at internal voltages ``vbe``, ``vbc`` (volts); ``p`` from bjt_params_vector.

    Writes ``out[0:4] = ib, ic, qbe, qbc`` and ``out[4:12] = dib/dvbe, dib/dvbc, dic/dvbe,
    dic/dvbc, dqbe/dvbe, dqbe/dvbc, dqbc/dvbe, dqbc/dvbc`` (the conventions of bjt_junctions).
    """
    s = p[_B_POL]
    ve = s * vbe
    vc = s * vbc
    gmin = p[_B_GMIN]
    cbe, gbe = _pn(ve, p[_B_ISBE], p[_B_VTF])
    cbc, gbc = _pn(vc, p[_B_ISBC], p[_B_VTR])
    cben = 0.0
    gben = 0.0
    if p[_B_ISE] != 0.0:
        cben, gben = _pn(ve, p[_B_ISE], p[_B_VTE])
    cbcn = 0.0
    gbcn = 0.0
    if p[_B_ISC] != 0.0:
        cbcn, gbcn = _pn(vc, p[_B_ISC], p[_B_VTC])
    cben = cben + gmin * ve
    gben = gben + gmin
    cbcn = cbcn + gmin * vc
    gbcn = gbcn + gmin

    ivaf = p[_B_IVAF]
    ivar = p[_B_IVAR]
    iikf = p[_B_IIKF]
    iikr = p[_B_IIKR]
    q1 = 1.0 / (1.0 - ivaf * vc - ivar * ve)
    if iikf == 0.0 and iikr == 0.0:
        qb = q1
        dqbdve = q1 * qb * ivar
        dqbdvc = q1 * qb * ivaf
    else:
        arg = 1.0 + 4.0 * (iikf * cbe + iikr * cbc)
        if arg > 0.0:
            nkf = p[_B_NKF]
            if nkf == 0.5:
                sqarg = math.sqrt(arg)
            else:
                sqarg = math.pow(arg, nkf)
            dsq = 2.0 * sqarg * nkf / arg
        else:
            sqarg = 1.0
            dsq = 0.0
        qb = q1 * (1.0 + sqarg) / 2.0
        dqbdve = q1 * (qb * ivar + iikf * gbe * dsq)
        dqbdvc = q1 * (qb * ivaf + iikr * gbc * dsq)

    bf = p[_B_BF]
    br = p[_B_BR]
    cc = (cbe - cbc) / qb - cbc / br - cbcn
    cb = cbe / bf + cben + cbc / br + cbcn
    gpi = gbe / bf + gben
    gmu = gbc / br + gbcn
    go = (gbc + (cbe - cbc) * dqbdvc / qb) / qb
    gmgo = (gbe - (cbe - cbc) * dqbdve / qb) / qb

    tf = p[_B_TF]
    geqcb = 0.0
    if ve > 0.0:
        ovtf = p[_B_OVTF]
        xtf = p[_B_XTF]
        argtf = 0.0
        arg2 = 0.0
        dargtf = 0.0  # d(argtf)/d(vbc) / ovtf; equals argtf unless the exponent passed EXP_LIMIT
        if xtf != 0.0:
            argtf = xtf
            dargtf = xtf
            if ovtf != 0.0:
                e, de = _limexp(vc * ovtf)
                argtf = argtf * e
                dargtf = dargtf * de
            arg2 = argtf
            itf = p[_B_ITF]
            if itf != 0.0:
                temp = cbe / (cbe + itf)
                argtf = argtf * temp * temp
                dargtf = dargtf * temp * temp
                arg2 = argtf * (3.0 - temp - temp)
        arg3 = cbe * dargtf * ovtf
        cbe_m = cbe * (1.0 + argtf) / qb
        gbe_m = (gbe * (1.0 + arg2) - cbe_m * dqbdve) / qb
        geqcb = tf * (arg3 - cbe_m * dqbdvc) / qb
    else:
        cbe_m = cbe
        gbe_m = gbe
    qbe = tf * cbe_m
    cqbe = tf * gbe_m
    cje = p[_B_CJE]
    if cje != 0.0:
        qd, cp = _depletion(ve, cje, p[_B_VJE], p[_B_MJE], p[_B_FCPE], p[_B_F1], p[_B_F2], p[_B_F3])
        qbe = qbe + qd
        cqbe = cqbe + cp
    tr = p[_B_TR]
    qbc = tr * cbc
    cqbc = tr * gbc
    czbc = p[_B_CZBC]
    if czbc != 0.0:
        qd, cp = _depletion(vc, czbc, p[_B_VJC], p[_B_MJC], p[_B_FCPC], p[_B_F5], p[_B_F6], p[_B_F7])
        qbc = qbc + qd
        cqbc = cqbc + cp

    out[0] = s * cb
    out[1] = s * cc
    out[2] = s * qbe
    out[3] = s * qbc
    out[4] = gpi
    out[5] = gmu
    out[6] = gmgo
    out[7] = -(gmu + go)
    out[8] = cqbe
    out[9] = geqcb
    out[10] = 0.0
    out[11] = cqbc


# ----------------------------------------------------------------------------- parameter VJPs
# Reverse-mode derivatives of the kernels above w.r.t. the parameter-vector slots they read (the
# derived slots included), written out by hand.  They accumulate ``g += (df/dp)^T a`` for the
# adjoints ``a`` of the outputs; autograd then carries ``g`` to the raw parameters through
# diode_params_torch / bjt_params_torch.  Where the torch equations (devices.diode, devices.bjt)
# evaluate a term whatever its parameter (recombination, leakage, depletion, XTF, the knees), so
# do these: a zero ISR, ISE, CJO or XTF still has a derivative.  Branch conditions carry none.


@njit(cache=True, fastmath=False)
def _pn_vjp(v, isat, vte):
    # d/d(isat), d/d(vte) of the junction current of _pn
    if v >= -3.0 * vte:
        e, de = _limexp(v / vte)
        return e - 1.0, -isat * de * v / (vte * vte)
    arg = 3.0 * vte / (v * CONST_E)
    arg = arg * arg * arg
    return -(1.0 + arg), -isat * 3.0 * arg / vte


@njit(cache=True, fastmath=False)
def _depletion_vjp(v, cj0, vj, mg, fcv, f1, f2, f3):
    # d q / d(cj0, vj, mg, fcv, f1, f2, f3) of _depletion's charge
    if v < fcv:
        arg = 1.0 - v / vj
        lg = math.log(arg)
        sarg = math.exp(-mg * lg)
        a1 = arg * sarg  # arg**(1 - mg)
        om = 1.0 - mg
        d_cj0 = vj * (1.0 - a1) / om
        d_vj = cj0 * (1.0 - a1) / om - cj0 * sarg * v / vj
        d_mg = vj * cj0 * (lg * a1 / om + (1.0 - a1) / (om * om))
        return d_cj0, d_vj, d_mg, 0.0, 0.0, 0.0, 0.0
    dv2 = v * v - fcv * fcv
    bq = f3 * (v - fcv) + (mg / (vj + vj)) * dv2
    czof2 = cj0 / f2
    return (f1 + bq / f2, -czof2 * mg * dv2 / (2.0 * vj * vj), czof2 * dv2 / (vj + vj),
            czof2 * (-f3 - mg * fcv / vj), cj0, -czof2 * bq / f2, czof2 * (v - fcv))


@njit(cache=True, fastmath=False)
def diode_vjp_nb(vd, p, a_i, a_q, g):
    """Accumulate ``g += a_i * di/dp + a_q * dq/dp`` for the diode at ``vd`` volts.

    ``p`` is the diode parameter vector (``DIODE_LAYOUT``), ``g`` a vector of the same length;
    ``a_i`` (per ampere) and ``a_q`` (per coulomb) are the adjoints of the current and charge.
    """
    isat = p[_D_ISEFF]
    vte = p[_D_VTE]
    # pre-knee current cd and its partials
    d_is = 0.0
    d_vte = 0.0
    d_isr = 0.0
    d_vtr = 0.0
    d_m = 0.0
    d_vj = 0.0
    d_bv = 0.0
    d_vtb = 0.0
    kc = 1.0  # d(knee current)/d(cd)
    kk = 0.0  # d(knee current)/d(IKF or IKR)
    ik = -1
    if vd >= -3.0 * vte:
        e, de = _limexp(vd / vte)
        cd = isat * (e - 1.0)
        d_is = e - 1.0
        d_vte = -isat * de * vd / (vte * vte)
        # recombination (computed even for ISR = 0: its ISR derivative is not zero)
        isr = p[_D_ISR]
        vtr = p[_D_VTR]
        er, der = _limexp(vd / vtr)
        mg = p[_D_M]
        vj = p[_D_VJ]
        x = 1.0 - vd / vj
        t1 = x * x + 0.005
        gen = math.pow(t1, mg / 2.0)
        d_isr = (er - 1.0) * gen
        if isr != 0.0:
            c_rec = isr * (er - 1.0)
            d_vtr = -isr * der * vd / (vtr * vtr) * gen
            d_m = c_rec * gen * math.log(t1) / 2.0
            d_vj = c_rec * mg * x * vd / (vj * vj) * (gen / t1)
            cd += c_rec * gen
        ikf = p[_D_IKF]
        if ikf > 0.0 and cd > 1.0e-18:  # high injection: cd / (1 + sqrt(cd / ikf))
            s = math.sqrt(cd / ikf)
            r = 1.0 / (1.0 + s)
            kc = r - cd * r * r / (2.0 * s * ikf)
            kk = cd * s * r * r / (2.0 * ikf)
            ik = 11
            cd = cd * r
    else:
        if vd >= -p[_D_BV]:
            arg = 3.0 * vte / (vd * CONST_E)
            arg = arg * arg * arg
            cd = -isat * (1.0 + arg)
            d_is = -(1.0 + arg)
            d_vte = -isat * 3.0 * arg / vte
        else:  # breakdown
            vtb = p[_D_VTEBRK]
            bvv = p[_D_BV] + vd
            evrev, devrev = _limexp(-bvv / vtb)
            cd = -isat * evrev
            d_is = -evrev
            d_bv = isat * devrev / vtb
            d_vtb = -isat * devrev * bvv / (vtb * vtb)
        ikr = p[_D_IKR]
        if ikr > 0.0 and cd < -1.0e-18:  # cd / (1 + sqrt(-cd / ikr))
            s = math.sqrt(cd / (-ikr))
            r = 1.0 / (1.0 + s)
            kc = r + cd * r * r / (2.0 * s * ikr)
            kk = cd * s * r * r / (2.0 * ikr)
            ik = 12
            cd = cd * r
    cd = cd + p[_D_GMIN] * vd
    tt = p[_D_TT]
    g[_D_TT] += a_q * cd
    a_c = a_i + a_q * tt  # adjoint of the current after the knee and GMIN
    g[_D_GMIN] += a_c * vd
    if ik == 11:
        g[_D_IKF] += a_c * kk
    elif ik == 12:
        g[_D_IKR] += a_c * kk
    a = a_c * kc
    g[_D_ISEFF] += a * d_is
    g[_D_VTE] += a * d_vte
    g[_D_ISR] += a * d_isr
    g[_D_VTR] += a * d_vtr
    g[_D_M] += a * d_m
    g[_D_VJ] += a * d_vj
    g[_D_BV] += a * d_bv
    g[_D_VTEBRK] += a * d_vtb
    if a_q != 0.0:  # depletion charge, computed even for CJO = 0
        q_cj, q_vj, q_m, q_fc, q_f1, q_f2, q_f3 = _depletion_vjp(
            vd, p[_D_CJO], p[_D_VJ], p[_D_M], p[_D_DEPCAP], p[_D_F1], p[_D_F2], p[_D_F3])
        g[_D_CJO] += a_q * q_cj
        g[_D_VJ] += a_q * q_vj
        g[_D_M] += a_q * q_m
        g[_D_DEPCAP] += a_q * q_fc
        g[_D_F1] += a_q * q_f1
        g[_D_F2] += a_q * q_f2
        g[_D_F3] += a_q * q_f3


@njit(cache=True, fastmath=False)
def bjt_vjp_nb(vbe, vbc, p, a_ib, a_ic, a_qbe, a_qbc, g):
    """Accumulate ``g += (d(ib, ic, qbe, qbc)/dp)^T (a_ib, a_ic, a_qbe, a_qbc)`` for the BJT.

    ``vbe``, ``vbc`` as for :func:`bjt_nb` (volts); ``p`` the BJT parameter vector
    (``BJT_LAYOUT``), ``g`` a vector of the same length (nothing is added to POLARITY).
    """
    s = p[_B_POL]
    ve = s * vbe
    vc = s * vbc
    # adjoints of the NPN-frame outputs (PNP outputs are -f(-v))
    a_cb = s * a_ib
    a_cc = s * a_ic
    a_qe = s * a_qbe
    a_qc = s * a_qbc
    cbe, _ = _pn(ve, p[_B_ISBE], p[_B_VTF])
    cbc, _ = _pn(vc, p[_B_ISBC], p[_B_VTR])
    ivaf = p[_B_IVAF]
    ivar = p[_B_IVAR]
    iikf = p[_B_IIKF]
    iikr = p[_B_IIKR]
    nkf = p[_B_NKF]
    q1 = 1.0 / (1.0 - ivaf * vc - ivar * ve)
    arg = 1.0 + 4.0 * (iikf * cbe + iikr * cbc)
    if arg > 0.0:
        sqarg = math.sqrt(arg) if nkf == 0.5 else math.pow(arg, nkf)
    else:
        sqarg = 1.0
    qb = q1 * (1.0 + sqarg) / 2.0
    bf = p[_B_BF]
    br = p[_B_BR]
    tf = p[_B_TF]
    a_cbe = 0.0
    a_cbc = 0.0
    a_qb = 0.0
    # qbe = tf * cbe_m + qde
    if ve > 0.0:
        ovtf = p[_B_OVTF]
        xtf = p[_B_XTF]
        itf = p[_B_ITF]
        e, de = _limexp(vc * ovtf)
        t2 = 1.0
        temp = 0.0
        if itf != 0.0:
            temp = cbe / (cbe + itf)
            t2 = temp * temp
        argtf = xtf * e * t2
        cbe_m = cbe * (1.0 + argtf) / qb
        a_m = a_qe * tf
        a_cbe += a_m * (1.0 + argtf) / qb
        a_qb -= a_m * cbe_m / qb
        a_arg = a_m * cbe / qb
        g[_B_XTF] += a_arg * e * t2
        g[_B_OVTF] += a_arg * xtf * t2 * de * vc
        if itf != 0.0:
            a_temp = a_arg * xtf * e * 2.0 * temp
            den = (cbe + itf) * (cbe + itf)
            a_cbe += a_temp * itf / den
            g[_B_ITF] -= a_temp * cbe / den
    else:
        cbe_m = cbe
        a_cbe += a_qe * tf
    g[_B_TF] += a_qe * cbe_m
    # qbc = tr * cbc + qdc
    g[_B_TR] += a_qc * cbc
    a_cbc += a_qc * p[_B_TR]
    if a_qe != 0.0:
        q_cj, q_vj, q_m, q_fc, q_f1, q_f2, q_f3 = _depletion_vjp(
            ve, p[_B_CJE], p[_B_VJE], p[_B_MJE], p[_B_FCPE], p[_B_F1], p[_B_F2], p[_B_F3])
        g[_B_CJE] += a_qe * q_cj
        g[_B_VJE] += a_qe * q_vj
        g[_B_MJE] += a_qe * q_m
        g[_B_FCPE] += a_qe * q_fc
        g[_B_F1] += a_qe * q_f1
        g[_B_F2] += a_qe * q_f2
        g[_B_F3] += a_qe * q_f3
    if a_qc != 0.0:
        q_cj, q_vj, q_m, q_fc, q_f1, q_f2, q_f3 = _depletion_vjp(
            vc, p[_B_CZBC], p[_B_VJC], p[_B_MJC], p[_B_FCPC], p[_B_F5], p[_B_F6], p[_B_F7])
        g[_B_CZBC] += a_qc * q_cj
        g[_B_VJC] += a_qc * q_vj
        g[_B_MJC] += a_qc * q_m
        g[_B_FCPC] += a_qc * q_fc
        g[_B_F5] += a_qc * q_f1
        g[_B_F6] += a_qc * q_f2
        g[_B_F7] += a_qc * q_f3
    # cb = cbe/bf + cben + cbc/br + cbcn;  cc = (cbe - cbc)/qb - cbc/br - cbcn
    a_cbe += a_cb / bf + a_cc / qb
    a_cbc += a_cb / br - a_cc / qb - a_cc / br
    g[_B_BF] -= a_cb * cbe / (bf * bf)
    g[_B_BR] += (a_cc - a_cb) * cbc / (br * br)
    a_qb -= a_cc * (cbe - cbc) / (qb * qb)
    a_ln = a_cb  # adjoint of cben
    a_lc = a_cb - a_cc  # adjoint of cbcn
    # qb = q1 (1 + sqarg) / 2, sqarg = arg**nkf, arg = 1 + 4 (iikf cbe + iikr cbc), q1 = 1/(1 - ivaf vc - ivar ve)
    a_q1 = a_qb * (1.0 + sqarg) / 2.0
    if arg > 0.0:
        a_sq = a_qb * q1 / 2.0
        g[_B_NKF] += a_sq * sqarg * math.log(arg)
        a_q2 = 4.0 * a_sq * nkf * sqarg / arg
        g[_B_IIKF] += a_q2 * cbe
        g[_B_IIKR] += a_q2 * cbc
        a_cbe += a_q2 * iikf
        a_cbc += a_q2 * iikr
    g[_B_IVAF] += a_q1 * q1 * q1 * vc
    g[_B_IVAR] += a_q1 * q1 * q1 * ve
    # the junction currents (leakages computed even for ISE = ISC = 0), GMIN on the leakages
    di, dv = _pn_vjp(ve, p[_B_ISBE], p[_B_VTF])
    g[_B_ISBE] += a_cbe * di
    g[_B_VTF] += a_cbe * dv
    di, dv = _pn_vjp(vc, p[_B_ISBC], p[_B_VTR])
    g[_B_ISBC] += a_cbc * di
    g[_B_VTR] += a_cbc * dv
    di, dv = _pn_vjp(ve, p[_B_ISE], p[_B_VTE])
    g[_B_ISE] += a_ln * di
    g[_B_VTE] += a_ln * dv
    di, dv = _pn_vjp(vc, p[_B_ISC], p[_B_VTC])
    g[_B_ISC] += a_lc * di
    g[_B_VTC] += a_lc * dv
    g[_B_GMIN] += a_ln * ve + a_lc * vc


__all__ = [
    "BJT_DERIVED_ORDER",
    "BJT_LAYOUT",
    "BJT_PARAM_ORDER",
    "BJT_POLARITY_INDEX",
    "DIODE_DERIVED_ORDER",
    "DIODE_LAYOUT",
    "DIODE_PARAM_ORDER",
    "bjt_nb",
    "bjt_params_torch",
    "bjt_params_vector",
    "bjt_vjp_nb",
    "diode_nb",
    "diode_params_torch",
    "diode_params_vector",
    "diode_vjp_nb",
]
