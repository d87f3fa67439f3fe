"""The ngspice 39 MOSFET, level 1 (Shichman-Hodges), at TEMP = TNOM.

One module and one registration line (``circuitsim/devices/registry.py``), as docs/architecture.md,
"Adding a device family".  Transcribed from ngspice ``src/spicelib/devices/mos1/mos1load.c``
(bulk diodes, drain current, bulk depletion charges), ``mos1temp.c`` (derived quantities),
``mos1set.c`` (defaults) and ``mos1.c`` (the parameter tables); checked against the ngspice
binary's DC sweep in ``tests/test_mosfet.py``.

Conventions (N-channel frame; P-channel is ``-f(-v)`` through the POLARITY slot): ports
``vgs = V(g) - V(s')``, ``vbs = V(b) - V(s')``, ``vbd = V(b) - V(d')`` (so ``vds = vbs - vbd``);
current branches ``ibs`` b -> s', ``ibd`` b -> d' (the bulk junctions, GMIN included, as
mos1load.c) and ``ids`` d' -> s' (the channel, ngspice's ``mode * cdrain``); charges ``qbs``,
``qbd`` (bulk depletion, CBS/CBD with grading MJ) and the overlap charges ``qgs = CGSO W vgs``,
``qgd = CGDO W vgd``, ``qgb = CGBO Leff vgb`` (linear).  ngspice's ``@m1[id]`` is ``ids - ibd``.
RD and RS are the system layer's series resistors (divided by M, as mos1temp.c).

Not modelled (the builder warns, docs/devices.md): the Meyer gate capacitances (mos1load.c
``DEVqmeyer``; they need TOX, and are zero without it), area/perimeter junctions (CJ, CJSW,
MJSW, JS with AD/AS/PD/PS), RSH with NRD/NRS, KP/GAMMA/PHI/VTO derived from TOX/UO/NSUB/NSS/TPG
(a card that needs one of these derivations is refused).  Newton step limiting: DEVpnjlim on
both bulk junctions (ngspice limits one of them and also applies DEVfetlim/DEVlimvds).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping

import sympy
import torch
from sympy import Piecewise
from torch import Tensor

from circuitsim.devices.constants import GMIN, ROOT2, VT
from circuitsim.devices.family import DeviceFamily, Limit, Output, param_value
from circuitsim.devices.program import Program, limexp, pow1m
from circuitsim.netlist.errors import NetlistWarning

DTYPE = torch.float64

# Model parameters with ngspice's defaults (mos1set.c; `showmod` of ngspice 39).
MOSFET_DEFAULTS: dict[str, float] = {
    "VTO": 0.0,  # zero-bias threshold voltage, V
    "KP": 2e-5,  # transconductance parameter, A/V^2
    "GAMMA": 0.0,  # bulk threshold parameter, V^0.5
    "PHI": 0.6,  # surface potential, V
    "LAMBDA": 0.0,  # channel-length modulation, 1/V
    "RD": 0.0,  # drain resistance, ohms (the system layer's resistor)
    "RS": 0.0,  # source resistance, ohms
    "CBD": 0.0,  # zero-bias B-D junction capacitance, F
    "CBS": 0.0,  # zero-bias B-S junction capacitance, F
    "IS": 1e-14,  # bulk junction saturation current, A
    "PB": 0.8,  # bulk junction potential, V
    "CGSO": 0.0,  # gate-source overlap capacitance per metre of channel width, F/m
    "CGDO": 0.0,  # gate-drain overlap capacitance per metre of channel width, F/m
    "CGBO": 0.0,  # gate-bulk overlap capacitance per metre of channel length, F/m
    "MJ": 0.5,  # bulk junction bottom grading coefficient
    "FC": 0.5,  # forward-bias depletion capacitance coefficient
    "LD": 0.0,  # lateral diffusion, m
    # read only by MOSFETFamily.check (which cards are refused or warned about), not by the equations:
    "LEVEL": 1.0,  # model level (1 only)
    "TOX": 0.0,  # oxide thickness, m (0 = not given: no Meyer capacitance in ngspice either)
    "NSUB": 0.0,  # substrate doping, 1/cm^3 (used by ngspice only together with TOX)
}
MOSFET_ALIASES: dict[str, str] = {"VT0": "VTO", "U0": "UO"}
# accepted silently: TNOM (no effect at TEMP = TNOM), noise
MOSFET_SILENT: frozenset[str] = frozenset({"TNOM", "KF", "AF"})
# accepted with a warning: what this module does not compute (see the module docstring)
MOSFET_UNMODELLED: frozenset[str] = frozenset({"UO", "NSS", "TPG", "CJ", "CJSW", "MJSW", "JS", "RSH"})
MOSFET_INSTANCE: dict[str, float] = {"L": 1e-4, "W": 1e-4, "M": 1.0, "AD": 0.0, "AS": 0.0, "PD": 0.0, "PS": 0.0,
                                     "NRD": 1.0, "NRS": 1.0, "TEMP": 27.0, "DTEMP": 0.0, "OFF": 0.0}
MOSFET_OPTIONS: dict[str, float] = {"GMIN": GMIN}

MOSFET_PARAM_ORDER: tuple[str, ...] = ("POLARITY",) + tuple(MOSFET_DEFAULTS) + tuple(MOSFET_OPTIONS)
MOSFET_DERIVED_ORDER: tuple[str, ...] = ("VBI", "SQRTPHI", "DEPCAP", "F2D", "F3D", "F4D", "F2S", "F3S", "F4S",
                                         "VCRIT")
MOSFET_LAYOUT: tuple[str, ...] = MOSFET_PARAM_ORDER + MOSFET_DERIVED_ORDER


def _get(p: Mapping[str, Tensor | float], key: str) -> Tensor:
    return param_value(p, key, MOSFET_DEFAULTS, MOSFET_OPTIONS)


def mosfet_params_torch(p: Mapping[str, Tensor | float], polarity: float) -> Tensor:
    """The parameter vector (``MOSFET_LAYOUT``) with mos1temp.c's derived quantities at T = TNOM (volts, farads).

    ``p`` holds instance-scaled entries (:meth:`MOSFETFamily.instance_params`: KP is ``Beta``, IS,
    CBD, CBS and the overlap capacitances are totals).  ``VBI = type VTO - GAMMA sqrt(PHI)`` is
    ``type * tVbi`` (the N-frame threshold at ``vbs = 0`` is ``VBI + GAMMA sqrt(PHI)``);
    ``DEPCAP = FC PB``; with ``arg = 1 - FC``, ``sarg = arg^-MJ``: ``F2 = C (1 - FC (1+MJ)) sarg/arg``,
    ``F3 = C MJ sarg/arg/PB``, ``F4 = C PB (1 - arg sarg)/(1 - MJ) - F3/2 DEPCAP^2 - DEPCAP F2`` for
    ``C = CBD`` (F2D..F4D) and ``C = CBS`` (F2S..F4S); ``VCRIT = Vt ln(Vt/(sqrt2 M IS))``.
    """
    raw = [_get(p, k).to(DTYPE).reshape(()) for k in MOSFET_PARAM_ORDER[1:]]
    g = dict(zip(MOSFET_PARAM_ORDER[1:], raw))
    pb, mj, fc = g["PB"], g["MJ"], g["FC"]
    sqrtphi = torch.sqrt(g["PHI"])
    depcap = fc * pb
    arg = 1.0 - fc
    sarg = torch.exp(-mj * torch.log(arg))

    def fs(c: Tensor) -> list[Tensor]:
        f2 = c * (1.0 - fc * (1.0 + mj)) * sarg / arg
        f3 = c * mj * sarg / arg / pb
        f4 = c * pb * (1.0 - arg * sarg) / (1.0 - mj) - f3 / 2 * (depcap * depcap) - depcap * f2
        return [f2, f3, f4]

    derived = [polarity * g["VTO"] - g["GAMMA"] * sqrtphi, sqrtphi, depcap, *fs(g["CBD"]), *fs(g["CBS"]),
               VT * torch.log(VT / (ROOT2 * g["IS"]))]
    return torch.stack([torch.tensor(float(polarity), dtype=DTYPE)] + raw + [d.reshape(()) for d in derived])


def _bulk_charge(b: Program, name: str, v: sympy.Expr, c0: sympy.Expr, P: Mapping[str, sympy.Symbol],  # noqa: N803
                 f2: sympy.Expr, f3: sympy.Expr, f4: sympy.Expr) -> sympy.Symbol:
    """mos1load.c's bulk depletion charge (coulombs): below DEPCAP ``PB C0 (1 - arg^(1-MJ))/(1-MJ)``,
    ``arg = 1 - v/PB``; above ``F4 + v (F2 + v F3/2)``."""
    below = P["PB"] * c0 * (1 - pow1m(1 - v / P["PB"], P["MJ"])) / (1 - P["MJ"])
    above = f4 + v * (f2 + v * (f3 / 2))
    return b.let(name, Piecewise((below, v < P["DEPCAP"]), (above, True)), zero_if=sympy.Eq(c0, 0))


def mosfet_program(features: frozenset[str]) -> Program:
    """mos1load.c as a program: outputs ``ibs``, ``ibd``, ``ids``, ``qbs``, ``qbd``, ``qgs``, ``qgd``, ``qgb``."""
    b = Program("mosfet")
    vgs, vbs, vbd = b.port("vgs"), b.port("vbs"), b.port("vbd")
    P = {k: b.param(k, MOSFET_LAYOUT.index(k))  # noqa: N806
         for k in ("KP", "GAMMA", "PHI", "LAMBDA", "IS", "GMIN", "CBD", "CBS", "PB", "MJ", "CGSO", "CGDO", "CGBO",
                   "VBI", "SQRTPHI", "DEPCAP", "F2D", "F3D", "F4D", "F2S", "F3S", "F4S")}
    vt = sympy.Float(VT)  # mos1load.c: vt = CONSTKoverQ * temp
    vds = b.let("vds", vbs - vbd)
    vgd = vgs - vds
    gmin, isat = P["GMIN"], P["IS"]
    # bulk diodes (mos1load.c): below -3 vt the current is gmin*v - IS (no cubic tail, unlike the diode)
    b.output("ibs", Piecewise((gmin * vbs - isat, vbs <= -3 * vt), (isat * (limexp(vbs / vt) - 1) + gmin * vbs, True)))
    b.output("ibd", Piecewise((gmin * vbd - isat, vbd <= -3 * vt), (isat * (limexp(vbd / vt) - 1) + gmin * vbd, True)))
    # body effect: sarg = sqrt(PHI - vbx), linearised for a forward-biased vbx, floored at 0 (vbx = vbs or vbd by mode)
    normal, inverse = vds >= 0, vds < 0
    sp = P["SQRTPHI"]
    lin_s, lin_d = sp - vbs / (sp + sp), sp - vbd / (sp + sp)
    sarg = b.let("sarg", Piecewise(
        (sympy.sqrt(P["PHI"] - vbs), normal & (vbs <= 0)),
        (sympy.sqrt(P["PHI"] - vbd), inverse & (vbd <= 0)),
        (lin_s, normal & (lin_s > 0)),
        (lin_d, inverse & (lin_d > 0)),
        (0, True),
    ))
    von = b.let("von", P["VBI"] + P["GAMMA"] * sarg)
    beta, lam = P["KP"], P["LAMBDA"]  # KP holds Beta = KP M W / Leff (instance_params)
    vgst_n, vgst_i = vgs - von, vgd - von
    half = sympy.Rational(1, 2)
    b.output("ids", Piecewise(  # mode * cdrain
        (0, normal & (vgst_n <= 0)),  # cut-off
        (beta * (1 + lam * vds) * vgst_n**2 * half, normal & (vgst_n <= vds)),  # saturation
        (beta * (1 + lam * vds) * vds * (vgst_n - half * vds), normal),  # linear
        (0, vgst_i <= 0),
        (-(beta * (1 - lam * vds) * vgst_i**2 * half), vgst_i <= -vds),
        (-(beta * (1 - lam * vds) * (-vds) * (vgst_i + half * vds)), True),
    ))
    qbs = _bulk_charge(b, "qbs", vbs, P["CBS"], P, P["F2S"], P["F3S"], P["F4S"]) if "CBS" in features \
        else sympy.S.Zero
    qbd = _bulk_charge(b, "qbd", vbd, P["CBD"], P, P["F2D"], P["F3D"], P["F4D"]) if "CBD" in features \
        else sympy.S.Zero
    b.output("qbs", qbs)
    b.output("qbd", qbd)
    # overlap capacitances (linear; mos1load.c adds them to the Meyer capacitances capgs, capgd, capgb)
    b.output("qgs", P["CGSO"] * vgs if "CGSO" in features else sympy.S.Zero)
    b.output("qgd", P["CGDO"] * vgd if "CGDO" in features else sympy.S.Zero)
    b.output("qgb", P["CGBO"] * (vgs - vbs) if "CGBO" in features else sympy.S.Zero)
    return b


class MOSFETFamily(DeviceFamily):
    """The level-1 MOSFET: terminals drain, gate, source, bulk; RD and RS in series."""

    name = "mosfet"
    letter = "M"
    model_types = ("NMOS", "PMOS")
    terminals = ("d", "g", "s", "b")
    series = {"d": "RD", "s": "RS"}
    ports = (("g", "s"), ("b", "s"), ("b", "d"))
    outputs = (Output("ibs", "b", "s"), Output("ibd", "b", "d"), Output("ids", "d", "s"),
               Output("qbs", "b", "s", charge=True), Output("qbd", "b", "d", charge=True),
               Output("qgs", "g", "s", charge=True), Output("qgd", "g", "d", charge=True),
               Output("qgb", "g", "b", charge=True))
    defaults, aliases, silent, unmodelled = MOSFET_DEFAULTS, MOSFET_ALIASES, MOSFET_SILENT, MOSFET_UNMODELLED
    instance, scaling, layout, polarity_slot = MOSFET_INSTANCE, ("W", "L", "M"), MOSFET_LAYOUT, "POLARITY"
    limits = (Limit(1, VT, "VCRIT"), Limit(2, VT, "VCRIT"))  # mos1load.c: DEVpnjlim on the bulk junctions
    charge_params = frozenset({"CBD", "CBS", "CGSO", "CGDO", "CGBO"})
    all_features = frozenset({"CBD", "CBS", "CGSO", "CGDO", "CGBO"})

    def program(self, features: frozenset[str]) -> Program:
        return mosfet_program(features)

    def instance_params(self, p: Mapping[str, Tensor], inst: Mapping[str, Tensor],
                        model_type: str) -> dict[str, Tensor]:
        # mos1load.c: Beta = KP m W/Leff, Leff = L - 2 LD; IS, CBD, CBS times m; CGSO, CGDO times m W;
        # CGBO times m Leff.  GMIN is not scaled (mos1load.c stamps ckt->CKTgmin as it is).
        w, length, m = (torch.as_tensor(inst.get(k, MOSFET_INSTANCE[k]), dtype=DTYPE) for k in ("W", "L", "M"))
        out = {k: _get(p, k) for k in MOSFET_DEFAULTS}
        leff = length - 2 * out["LD"]
        out["KP"] = out["KP"] * m * w / leff
        for k in ("IS", "CBD", "CBS"):
            out[k] = out[k] * m
        out["CGSO"] = out["CGSO"] * m * w
        out["CGDO"] = out["CGDO"] * m * w
        out["CGBO"] = out["CGBO"] * m * leff
        out["GMIN"] = _get(p, "GMIN")
        return out

    def theta(self, p: Mapping[str, Tensor], model_type: str) -> Tensor:
        return mosfet_params_torch(p, self.sign(model_type))

    def check(self, params: Mapping[str, float], series_present: Collection[str]) -> str | None:
        level = params.get("LEVEL", 1.0)
        if level != 1.0:
            return f"MOSFET level {level:g} is not modelled (level 1, Shichman-Hodges, only)"
        if params.get("PHI", 0.6) <= 0:
            return "PHI is not positive (ngspice: 'Phi is not positive')"
        if params.get("TOX", 0.0) != 0.0:
            # mos1temp.c: with TOX, KP defaults to UO*Cox and NSUB gives GAMMA, PHI, VTO; DEVqmeyer then adds the
            # Meyer gate capacitances
            if "KP" not in params or (params.get("NSUB", 0.0) != 0.0 and not {"VTO", "GAMMA", "PHI"} <= set(params)):
                return "KP, VTO, GAMMA or PHI derived from TOX/UO/NSUB are not modelled: give KP, VTO, GAMMA and PHI"
            warnings.warn("MOSFET card with TOX: the Meyer gate capacitances are not modelled (only the overlap "
                          "capacitances CGSO/CGDO/CGBO and the bulk junctions)", NetlistWarning, stacklevel=2)
        return None


FAMILY = MOSFETFamily()

__all__ = ["FAMILY", "MOSFET_DEFAULTS", "MOSFET_LAYOUT", "MOSFETFamily", "mosfet_params_torch", "mosfet_program"]
