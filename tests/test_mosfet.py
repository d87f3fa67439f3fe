"""The level-1 MOSFET (circuitsim/devices/mosfet.py) against the ngspice 39 binary.

* DC sweeps (``.dc VD ... VG ...`` at several bulk biases): ngspice's drain and bulk currents and
  its conductances ``gm``, ``gds``, ``gmb``, ``gbd``, ``gbs`` at the device's own state voltages,
  against the generated torch code and its generated Jacobian, to 1e-9 relative;
* the bulk depletion charges and capacitances (``qbd``, ``qbs``, ``cbd``, ``cbs``) and the
  overlap charges at operating points (ngspice evaluates the charges at ``.op``, not in a sweep);
* a netlist with ``M`` elements through the whole simulator (parse, build, DC operating point).

Cards: public ``.model`` lines for the 2N7000 and BS170 (and a BS250 PMOS), sources in CARDS.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_devices import NGSPICE, assert_close, card_params, ngspice_vectors, tensors

from circuitsim.devices import registry
from circuitsim.devices.mosfet import MOSFET_ALIASES
from circuitsim.devices.program import torch_call
from circuitsim.netlist.errors import NetlistWarning

F64 = torch.float64
needs_ngspice = pytest.mark.requires_ngspice

CARDS = {
    # github.com search hits (public component libraries), quoted as published:
    # a 2N7000 level-1 card with body effect, bulk and overlap capacitances (RG is not a level-1 parameter)
    "2n7000": ("NMOS", "LEVEL=1 VTO=1.77 KP=0.15 GAMMA=1.58 PHI=0.65 LAMBDA=0.0067 CBD=35E-12 CBS=40E-12 PB=0.8 "
                       "IS=1E-14 RD=5.0 RS=1.5 RG=4.7 CGSO=6.24E-10 CGDO=1.07E-10"),
    # a BS170 card with overlap capacitances (another published one, with CGS=/CGD=, is refused by ngspice 39:
    # "cgd: no such parameter on this device")
    "bs170": ("NMOS", "VTO=2.0 KP=0.2 LAMBDA=0.02 RD=2 RS=1 CGSO=15p CGDO=5p"),
    # its P-channel complement, with a body effect, MJ, FC and LD added to reach those terms
    "bs250": ("PMOS", "LEVEL=1 VTO=-2.1 KP=0.320 CBD=1.0E-10 CBS=1.0E-10 GAMMA=0.4 MJ=0.4 FC=0.6 LAMBDA=0.01 LD=0.1u"),
}
INSTANCE = {"2n7000": "", "bs170": "W=2u L=1u m=2", "bs250": "W=50u L=2u m=3"}


def _inst(name: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, val in re.findall(r"(\w+)=(\S+)", INSTANCE[name]):
        from circuitsim.netlist.units import parse_number

        out[key.upper()] = torch.tensor(parse_number(val), dtype=F64)
    return out


def _theta(name: str):
    kind, card = CARDS[name]
    fam = registry.family_for_model_type(kind)
    assert fam is registry.family("mosfet")
    p = {k: v for k, v in card_params(card, MOSFET_ALIASES).items() if k in fam.defaults}
    scaled = fam.instance_params(tensors(p), _inst(name), kind)
    return fam, kind, fam.theta(scaled, kind).numpy()


def _eval(fam, vec, vgs, vbs, vbd, jacobian=True):
    prog, gen, _ = fam.code(None)
    slots = [torch.tensor(vec[slot], dtype=F64) for _, slot, _ in prog.params]
    volts = [torch.as_tensor(np.asarray(v, float)) for v in (vgs, vbs, vbd)]
    return torch_call(gen, prog, volts, slots, jacobian)


@needs_ngspice
@pytest.mark.parametrize("name", list(CARDS))
@pytest.mark.parametrize("vb", [-1.5, 0.0, 0.45])
def test_mosfet_dc_matches_ngspice(name: str, vb: float) -> None:
    """Drain and bulk currents and the five conductances against ngspice's DC sweep, to 1e-9."""
    fam, kind, vec = _theta(name)
    s = 1 if kind == "NMOS" else -1
    body = (f"VD d 0 0\nVG g 0 0\nVB b 0 {s * vb}\nM1 d g 0 b mm {INSTANCE[name]}\n.model mm {kind}({CARDS[name][1]})\n"
            f".dc VD {-3 * s} {5 * s} {0.05 * s} VG {-1 * s} {6 * s} {0.5 * s}")
    vecs = ["@m1[vgs]", "@m1[vds]", "@m1[vbs]", "@m1[id]", "@m1[ibd]", "@m1[ibs]", "@m1[gm]", "@m1[gds]",
            "@m1[gmb]", "@m1[gbd]", "@m1[gbs]"]
    d = dict(zip(vecs, ngspice_vectors(body, vecs).T))
    assert d["@m1[vgs]"].size == 161 * 15
    # ngspice's states are in the N-channel frame (vgs = type * (V(g) - V(s'))), as the program
    vgs, vds, vbs = d["@m1[vgs]"], d["@m1[vds]"], d["@m1[vbs]"]
    (ibs, ibd, ids, *_), jac = _eval(fam, vec, vgs, vbs, vbs - vds)
    ibs, ibd, ids = ibs.numpy(), ibd.numpy(), ids.numpy()
    assert_close(ids - ibd, d["@m1[id]"], 1e-9, 1e-15, f"{name} id")
    assert_close(ibd, d["@m1[ibd]"], 1e-9, 1e-18, f"{name} ibd")
    assert_close(ibs, d["@m1[ibs]"], 1e-9, 1e-18, f"{name} ibs")
    j = [[c.numpy() for c in row] for row in jac]
    assert_close(j[0][1], d["@m1[gbs]"], 1e-9, 1e-20, f"{name} gbs")
    assert_close(j[1][2], d["@m1[gbd]"], 1e-9, 1e-20, f"{name} gbd")
    # channel derivatives w.r.t. (vgs, vds, vbs) at fixed others; ports are (vgs, vbs, vbd = vbs - vds)
    di_dvgs, di_dvbs, di_dvbd = j[2]
    di_dvds = -di_dvbd
    di_dvbs_vds = di_dvbs + di_dvbd
    normal = vds >= 0
    # normal mode: gm = dI/dvgs, gds = dI/dvds, gmbs = dI/dvbs; inverse mode (mos1load.c's frame vgd, -vds, vbd):
    # gm = -dI/dvgs, gmbs = -dI/dvbs, gds = dI/dvds + dI/dvgs + dI/dvbs
    gm = np.where(normal, di_dvgs, -di_dvgs)
    gmb = np.where(normal, di_dvbs_vds, -di_dvbs_vds)
    gds = np.where(normal, di_dvds, di_dvds + di_dvgs + di_dvbs_vds)
    # (composed from two port derivatives of up to gm's size: rounding of 1e-13 of the column's scale)
    assert_close(gm, d["@m1[gm]"], 1e-9, 1e-13 * np.abs(d["@m1[gm]"]).max(), f"{name} gm")
    assert_close(gds, d["@m1[gds]"], 1e-9, 1e-13 * np.abs(d["@m1[gm]"]).max(), f"{name} gds")
    # ngspice's gmbs is gm * GAMMA/(2 sarg) also where the body junction is forward-biased and sarg is
    # linearised (sqrt(PHI) - vbx/(2 sqrt(PHI))); there it is not the derivative of its own current,
    # so gmb is compared where vbx <= 0 (docs/devices.md)
    vbx = np.where(normal, vbs, vbs - vds)
    rev = vbx <= 0
    assert rev.any() or vb > 0  # at vb > 0 both bulk junctions are forward-biased everywhere
    assert_close(gmb[rev], d["@m1[gmb]"][rev], 1e-9, 1e-13 * np.abs(d["@m1[gm]"]).max(), f"{name} gmb")
    assert np.abs(d["@m1[id]"]).max() > 1e-3  # the channel conducts in the sweep
    assert (~normal).any() and normal.any()


def _ngspice_ops(body: str, points: list[tuple[float, float, float]], vecs: list[str],
                 analysis: str = "op") -> np.ndarray:
    """ngspice ``analysis`` (``.op``) at each (VD, VG, VB) (``alter`` in a control loop); rows of ``vecs``."""
    lines = ["* circuitsim mosfet op test", body, ".control", "set numdgt=17", "option bypass=0"]
    for vd, vg, vb in points:
        lines += [f"alter VD dc = {vd!r}", f"alter VG dc = {vg!r}", f"alter VB dc = {vb!r}", analysis,
                  "echo ROW", *(f"print {v}" for v in vecs)]
    lines += [".endc", ".end", ""]
    with tempfile.TemporaryDirectory() as td:
        (Path(td) / "t.cir").write_text("\n".join(lines))
        res = subprocess.run([NGSPICE, "-b", "t.cir"], cwd=td, capture_output=True, text=True, timeout=120)
    rows: list[list[float]] = []
    for ln in res.stdout.splitlines():
        if ln.strip() == "ROW":
            rows.append([])
        elif rows and (m := re.match(r"^\s*\S+\s*=\s*(\S+)\s*$", ln)):
            rows[-1].append(float(m.group(1)))
    assert all(len(r) == len(vecs) for r in rows), res.stdout
    assert len(rows) == len(points), res.stdout + res.stderr
    return np.array(rows)


@needs_ngspice
@pytest.mark.parametrize("name", list(CARDS))
def test_mosfet_charges_match_ngspice(name: str) -> None:
    """Bulk depletion charges and capacitances (both FC regions) and the overlap charges at .op points."""
    fam, kind, vec = _theta(name)
    s = 1 if kind == "NMOS" else -1
    body = (f"VD d 0 0\nVG g 0 0\nVB b 0 0\nM1 d g 0 b mm {INSTANCE[name]}\n.model mm {kind}({CARDS[name][1]})")
    pts = [(2.0, 3.0, -1.0), (-1.0, 2.5, -0.3), (0.3, 4.0, 0.45), (-0.2, 1.0, 0.6), (4.0, 0.5, -4.0), (0.1, 5.0, 0.2)]
    vecs = ["@m1[vgs]", "@m1[vds]", "@m1[vbs]", "@m1[qbd]", "@m1[qbs]", "@m1[cbd]", "@m1[cbs]", "@m1[qgs]",
            "@m1[qgd]", "@m1[qgb]"]
    d = dict(zip(vecs, _ngspice_ops(body, [(s * a, s * b, s * c) for a, b, c in pts], vecs).T))
    vgs, vds, vbs = d["@m1[vgs]"], d["@m1[vds]"], d["@m1[vbs]"]
    (_, _, _, qbs, qbd, qgs, qgd, qgb), jac = _eval(fam, vec, vgs, vbs, vbs - vds)
    assert_close(qbd.numpy(), d["@m1[qbd]"], 1e-9, 1e-25, f"{name} qbd")
    assert_close(qbs.numpy(), d["@m1[qbs]"], 1e-9, 1e-25, f"{name} qbs")
    assert_close(jac[4][2].numpy(), d["@m1[cbd]"], 1e-9, 1e-25, f"{name} cbd")
    assert_close(jac[3][1].numpy(), d["@m1[cbs]"], 1e-9, 1e-25, f"{name} cbs")
    # ngspice 39's qgs/qgd/qgb at .op are (Meyer + overlap) * v; without TOX the Meyer part is 0
    assert_close(qgs.numpy(), d["@m1[qgs]"], 1e-9, 1e-25, f"{name} qgs")
    assert_close(qgd.numpy(), d["@m1[qgd]"], 1e-9, 1e-25, f"{name} qgd")
    assert_close(qgb.numpy(), d["@m1[qgb]"], 1e-9, 1e-25, f"{name} qgb")
    if fam.features(card_params(CARDS[name][1], MOSFET_ALIASES)) & {"CBD"}:
        assert np.abs(d["@m1[qbd]"]).max() > 0


def test_mosfet_cards_warn_and_refuse() -> None:
    """Unmodelled parameters warn (as the catalog does for other families); other levels are refused."""
    from circuitsim.devices.catalog import model_parameter_status

    assert model_parameter_status("PMOS", "CJSW") == "unmodelled"
    assert model_parameter_status("NMOS", "UO") == "unmodelled"
    assert model_parameter_status("NMOS", "VT0") == "modelled"
    assert model_parameter_status("NMOS", "KF") == "silent"
    fam = registry.family("mosfet")
    assert fam.check({"LEVEL": 3.0}, []) is not None
    assert fam.check({"TOX": 1e-7}, []) is not None  # KP from UO and TOX: refused
    with pytest.warns(NetlistWarning, match="Meyer"):
        assert fam.check({"TOX": 1e-7, "KP": 1e-3}, []) is None


@pytest.mark.parametrize("card, message", [("LEVEL=3 VTO=1 KP=1m", "MOSFET level 3 is not modelled"),
                                           ("VTO=1 TOX=1e-7", "derived from TOX/UO/NSUB are not modelled")])
def test_refused_mosfet_cards_are_one_line_errors(tmp_path: Path, card: str, message: str) -> None:
    from circuitsim.api import load
    from circuitsim.netlist import NetlistError

    path = tmp_path / "m.cir"
    path.write_text(f"m\nVIN in 0 0\nR1 in g 1k\nRD vcc out 1k\nVCC vcc 0 5\nM1 out g 0 0 nm\n"
                    f".model nm NMOS({card})\n.end\n")
    with pytest.raises(NetlistError, match=message) as err:
        load(path, "dk", 48000.0)
    assert "\n" not in str(err.value) and "m.cir:7" in str(err.value)


# Booster stages written here (not public files) around the cards above: the J and M element lines, the
# series resistances' internal nodes, bulk tied to the source, through validate at 48 kHz x 8
BOOSTERS = {
    "mosfet": """2N7000 common-source booster (source unbypassed: gain about RD/RS)
VCC vcc 0 9
VIN in 0 0
C1 in g 100n
R1 vcc g 2.2Meg
R2 g 0 1Meg
RD vcc d 4.7k
RS s 0 1k
M1 d g s s 2N7000
C2 d out 100n
RL out 0 100k
.MODEL 2N7000 NMOS(CARD)
.end
""".replace("CARD", CARDS["2n7000"][1]),
    "jfet": """J201 booster
VCC vcc 0 9
VIN in 0 0
C1 in g 100n
R1 g 0 1Meg
RD vcc d 6.8k
RS s 0 1.5k
J1 d g s J201
C2 d out 100n
RL out 0 100k
.model J201 NJF(VTO=-0.8 BETA=1.3m LAMBDA=0.03 IS=1e-13 B=0.6 PB=0.7 CGS=4p CGD=3p RD=1 RS=1)
.end
""",
}


@needs_ngspice
@pytest.mark.parametrize("kind", list(BOOSTERS))
def test_fet_booster_validates_against_ngspice(tmp_path: Path, kind: str) -> None:
    """The whole simulator on a JFET and a MOSFET stage: DC point and ESR <= 1e-5 against ngspice."""
    import warnings

    from circuitsim.netlist.errors import NetlistWarning
    from circuitsim.validate import validate

    path = tmp_path / f"{kind}.cir"
    path.write_text(BOOSTERS[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)  # RG: "unrecognized parameter (rg) - ignored"
        report = validate(path, method="dk", duration=0.005)
    for d in report.dc:
        assert d.ours == pytest.approx(d.ngspice, rel=1e-6, abs=1e-9), (d.name, d.ours, d.ngspice)
    assert max(r.esr for r in report.signals) <= 1e-5, report.table()
    assert min(r.peak for r in report.signals) > 1e-2
