"""The ngspice 39 JFET, level 1 (Shichman-Hodges with the Sydney University doping-tail ``B``), at TEMP = TNOM.

One module and one registration line (``circuitsim/devices/registry.py``) -- the worked example
of docs/architecture.md, "Adding a device family".  Transcribed from ngspice-39
``src/spicelib/devices/jfet/jfetload.c`` (currents, charges), ``jfettemp.c`` (derived quantities)
and ``jfet.c`` (the parameter tables); checked against the ngspice binary's DC sweep in
``tests/test_device_generation.py``.

Conventions (N-channel frame; P-channel is ``-f(-v)`` through the POLARITY slot): ports
``vgs = V(g) - V(s')``, ``vgd = V(g) - V(d')``; current branches ``igs`` g -> s', ``igd`` g -> d'
(the gate junctions, GMIN included, as jfetload.c) and ``ids`` d' -> s' (the channel); charges
``qgs``, ``qgd`` on the gate branches (depletion, grading 1/2).  ngspice's drain current is
``ids - igd`` and its gate current ``igs + igd``.  RD and RS are the system layer's series
resistors.  Not modelled: DEVfetlim step limiting (only DEVpnjlim on the gate junctions).
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy
import torch
from sympy import Piecewise
from torch import Tensor

from circuitsim.devices.constants import GMIN, ROOT2, VT
from circuitsim.devices.family import DeviceFamily, Limit, Output, param_value
from circuitsim.devices.junction import depletion, pn
from circuitsim.devices.program import Program

DTYPE = torch.float64

# Model parameters with ngspice's defaults (jfetset.c; `showmod` of ngspice 39).
JFET_DEFAULTS: dict[str, float] = {
    "VTO": -2.0,  # threshold voltage, V
    "BETA": 1e-4,  # transconductance parameter, A/V^2
    "LAMBDA": 0.0,  # channel-length modulation, 1/V
    "RD": 0.0,  # drain resistance, ohms (the system layer's resistor)
    "RS": 0.0,  # source resistance, ohms
    "CGS": 0.0,  # zero-bias G-S junction capacitance, F
    "CGD": 0.0,  # zero-bias G-D junction capacitance, F
    "PB": 1.0,  # gate junction potential, V
    "IS": 1e-14,  # gate junction saturation current, A
    "FC": 0.5,  # forward-bias depletion coefficient (limited to 0.95)
    "B": 1.0,  # doping tail parameter (Sydney University)
}
JFET_ALIASES: dict[str, str] = {"VT0": "VTO"}
# temperature coefficients (no effect at TEMP = TNOM) and noise
JFET_SILENT: frozenset[str] = frozenset({"TNOM", "TCV", "VTOTC", "BEX", "BETATCE", "XTI", "EG", "KF", "AF", "NLEV",
                                         "GDSNOI"})
JFET_INSTANCE: dict[str, float] = {"AREA": 1.0, "M": 1.0, "TEMP": 27.0, "DTEMP": 0.0, "OFF": 0.0}
JFET_OPTIONS: dict[str, float] = {"GMIN": GMIN}

JFET_PARAM_ORDER: tuple[str, ...] = ("POLARITY",) + tuple(JFET_DEFAULTS) + tuple(JFET_OPTIONS)
JFET_DERIVED_ORDER: tuple[str, ...] = ("BFAC", "FCPB", "F1", "F2", "F3", "VCRIT")
JFET_LAYOUT: tuple[str, ...] = JFET_PARAM_ORDER + JFET_DERIVED_ORDER


def _get(p: Mapping[str, Tensor | float], key: str) -> Tensor:
    return param_value(p, key, JFET_DEFAULTS, JFET_OPTIONS)


def jfet_params_torch(p: Mapping[str, Tensor | float], polarity: float) -> Tensor:
    """The parameter vector (``JFET_LAYOUT``) with the derived quantities of jfettemp.c at T = TNOM.

    ``BFAC = (1 - B)/(PB - VTO)``; FC limited to 0.95; ``FCPB = FC PB``, ``F1 = PB (1 - (1-FC)^0.5)/0.5``,
    ``F2 = (1-FC)^1.5``, ``F3 = 1 - 1.5 FC``; ``VCRIT = Vt ln(Vt/(sqrt2 IS))`` with the model's IS
    (``ISNOM`` when an instance scaled it).
    """
    raw = [_get(p, k).to(DTYPE).reshape(()) for k in JFET_PARAM_ORDER[1:]]
    g = dict(zip(JFET_PARAM_ORDER[1:], raw))
    fc = torch.clamp(g["FC"], max=0.95)  # jfettemp.c: "Depletion cap. coefficient too large"
    xfc = torch.log(1.0 - fc)
    isnom = _get(p, "ISNOM") if "ISNOM" in p else g["IS"]
    derived = [
        (1.0 - g["B"]) / (g["PB"] - g["VTO"]),
        fc * g["PB"],
        g["PB"] * (1.0 - torch.exp(0.5 * xfc)) / 0.5,
        torch.exp(1.5 * xfc),
        1.0 - fc * 1.5,
        VT * torch.log(VT / (ROOT2 * isnom)),
    ]
    return torch.stack([torch.tensor(float(polarity), dtype=DTYPE)] + raw + [d.reshape(()) for d in derived])


def jfet_program(features: frozenset[str]) -> Program:
    """jfetload.c as a program: outputs ``igs``, ``igd``, ``ids``, ``qgs``, ``qgd`` (N-channel frame)."""
    b = Program("jfet")
    vgs, vgd = b.port("vgs"), b.port("vgd")
    P = {k: b.param(k, JFET_LAYOUT.index(k))  # noqa: N806
         for k in ("VTO", "BETA", "LAMBDA", "IS", "B", "GMIN", "CGS", "CGD", "PB", "BFAC", "FCPB", "F1", "F2", "F3")}
    vt = sympy.Float(VT)  # jfetload.c: vt_temp = T k/q (no emission coefficient)
    vds = b.let("vds", vgs - vgd)
    b.output("igs", pn(b, "cgs", vgs, P["IS"], vt) + P["GMIN"] * vgs)
    b.output("igd", pn(b, "cgd", vgd, P["IS"], vt) + P["GMIN"] * vgd)
    beta, lam, bb, bfac = P["BETA"], P["LAMBDA"], P["B"], P["BFAC"]
    vgst = vgs - P["VTO"]  # normal mode (vds >= 0)
    vgdt = vgd - P["VTO"]  # inverse mode
    normal = vds >= 0
    b.output("ids", Piecewise(
        (0, normal & (vgst <= 0)),  # cut-off
        (beta * (1 + lam * vds) * vds * (vds * (bfac * vds - bb) + vgst * (2 * bb + 3 * bfac * (vgst - vds))),
         normal & (vgst >= vds)),  # linear
        (beta * (1 + lam * vds) * vgst**2 * (bb + bfac * vgst), normal),  # saturation
        (0, vgdt <= 0),
        (beta * (1 - lam * vds) * vds * (-vds * (-bfac * vds - bb) + vgdt * (2 * bb + 3 * bfac * (vgdt + vds))),
         vgdt + vds >= 0),
        (-beta * (1 - lam * vds) * vgdt**2 * (bb + bfac * vgdt), True),
    ))
    half = sympy.Rational(1, 2)  # the gate junctions' grading coefficient
    qgs = depletion(b, "qgs", vgs, P["CGS"], P["PB"], half, P["FCPB"], P["F1"], P["F2"], P["F3"]) \
        if "CGS" in features else sympy.S.Zero
    qgd = depletion(b, "qgd", vgd, P["CGD"], P["PB"], half, P["FCPB"], P["F1"], P["F2"], P["F3"]) \
        if "CGD" in features else sympy.S.Zero
    b.output("qgs", qgs)
    b.output("qgd", qgd)
    return b


class JFETFamily(DeviceFamily):
    """The level-1 JFET: terminals drain, gate, source; RD and RS in series."""

    name = "jfet"
    letter = "J"
    model_types = ("NJF", "PJF")
    terminals = ("d", "g", "s")
    series = {"d": "RD", "s": "RS"}
    ports = (("g", "s"), ("g", "d"))
    outputs = (Output("igs", "g", "s"), Output("igd", "g", "d"), Output("ids", "d", "s"),
               Output("qgs", "g", "s", charge=True), Output("qgd", "g", "d", charge=True))
    defaults = JFET_DEFAULTS
    aliases = JFET_ALIASES
    silent = JFET_SILENT
    instance = JFET_INSTANCE
    scaling = ("AREA", "M")
    layout = JFET_LAYOUT
    polarity_slot = "POLARITY"
    limits = (Limit(0, VT, "VCRIT"), Limit(1, VT, "VCRIT"))  # jfetload.c: DEVpnjlim, vt = T k/q
    charge_params = frozenset({"CGS", "CGD"})
    all_features = frozenset({"CGS", "CGD"})

    def program(self, features: frozenset[str]) -> Program:
        return jfet_program(features)

    def instance_params(self, p: Mapping[str, Tensor], inst: Mapping[str, Tensor],
                        model_type: str) -> dict[str, Tensor]:
        # jfetload.c: BETA, IS, CGS, CGD times AREA; the multiplier M scales every stamp (GMIN too)
        a, m = (torch.as_tensor(inst.get(k, 1.0), dtype=DTYPE) for k in ("AREA", "M"))
        out = {k: _get(p, k) for k in JFET_DEFAULTS}
        out["ISNOM"] = out["IS"]
        for k in ("BETA", "IS", "CGS", "CGD"):
            out[k] = out[k] * a * m
        out["GMIN"] = _get(p, "GMIN") * m
        return out

    def theta(self, p: Mapping[str, Tensor], model_type: str) -> Tensor:
        return jfet_params_torch(p, self.sign(model_type))


FAMILY = JFETFamily()

__all__ = ["FAMILY", "JFET_DEFAULTS", "JFET_LAYOUT", "JFETFamily", "jfet_params_torch", "jfet_program"]
