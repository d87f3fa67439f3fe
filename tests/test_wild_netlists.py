"""Netlists as users paste them: KiCad and LTspice exports, vendor model cards (docs/netlists.md).

First the constructs they use, each against the ngspice binary: the XSPICE potentiometer at
several positions and log settings, the current-controlled sources F and H, the multiplier m.
Then the public netlists in tests/data/wild/ (each names its source in its header), run
unchanged through ``circuitsim simulate`` and ``validate`` and compared with ngspice at
48 kHz x 8, where ngspice runs on a copy rewritten only where its own dialect needs it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from circuitsim.api import load
from circuitsim.errors import UsageError
from circuitsim.netlist import NetlistError, NetlistWarning
from circuitsim.spice import operating_point_ngspice

pytestmark = pytest.mark.requires_ngspice

WILD = Path(__file__).parent / "data" / "wild"

# (r, position, log, log_multiplier) as a KiCad export or a hand-written card gives them; None: not written
POTS = [
    ("100k", "0.3", None, None),
    ("10k", "1", None, None),  # at the end stop: cfunc.mod clamps to 0.999999999
    ("10k", "1.5", None, None),  # out of range: clamped, as ngspice does (no error)
    ("10k", "0.7", "true", "2"),
    ("47k", "0.25", "TRUE", None),
    ("1meg", "0.5", "1", "0.5"),
    ("5k", ".5", "false", "3"),
    (None, None, None, None),  # every default: r=100k, position=0.5
]


def _pot_network(pots: list[tuple[str | None, ...]]) -> str:
    lines = ["pot network (KiCad style: ground called GND)", "V1 in GND DC 10", "VIN x 0 DC 0", "Rx x 0 1k",
             "R1 in a 1k"]
    for i, (r, pos, log, mult) in enumerate(pots):
        card = " ".join(f"{k}={v}" for k, v in (("r", r), ("position", pos), ("log", log), ("log_multiplier", mult))
                        if v is not None)
        lines += [f"ARV{i} a w{i} GND __RV{i}", f".model __RV{i} potentiometer( {card} )", f"Rl{i} w{i} GND 4.7k"]
    lines += ["Rout w0 out 1k", "Cout out 0 1n", ".end", ""]
    return "\n".join(lines)


def _dc_matches(path: Path, params: dict[str, float] | None = None, ngspice_params=None, **names: str) -> int:
    """How many node voltages and source currents equal ngspice's (1e-9); ``names``: load's input/output names."""
    model = load(path, "mna", 48000.0, params=params, **names)
    ours = model.dc_voltages(0.0)
    ref = operating_point_ngspice(path, params=ngspice_params)
    compared = 0
    for key, val in ours.items():
        name = key[2:-1] if key.startswith("v(") else key
        if name in ref:
            assert val == pytest.approx(ref[name], rel=1e-9, abs=1e-12), (key, val, ref[name])
            compared += 1
    return compared


def test_potentiometer_dc_matches_ngspice(tmp_path: Path) -> None:
    """Node voltages of a network of XSPICE pots (linear, log, clamped, defaults) equal ngspice's to 1e-9."""
    path = tmp_path / "pots.cir"
    path.write_text(_pot_network(POTS))
    assert _dc_matches(path) >= len(POTS) + 3


@pytest.mark.parametrize("position", ["0", "-0.2"])
def test_potentiometer_at_the_zero_end_stop(tmp_path: Path, position: str) -> None:
    """At the end stop the answer itself is known only to cond(G)*eps; compare to that, after a converged DC."""
    import torch

    path = tmp_path / "pot0.cir"
    path.write_text(_pot_network([("10k", position, None, None)]))
    model = load(path, "mna", 48000.0)
    g = model.topology.assemble(model.topology.leaf_values()).G
    tol = 10 * float(torch.linalg.cond(g)) * 2.2e-16
    ours = model.dc_voltages(0.0)
    ref = operating_point_ngspice(path)
    for key, val in ours.items():
        if key.startswith("v(") and key[2:-1] in ref:
            assert val == pytest.approx(ref[key[2:-1]], rel=tol, abs=1e-12), key


@pytest.mark.parametrize("spelling", ["ARV0.position", "RV0"])
def test_potentiometer_position_is_a_control(tmp_path: Path, spelling: str) -> None:
    """--set ARV0.position=V (or RV0=V) moves the wiper as rewriting the card does in ngspice."""
    path = tmp_path / "pot.cir"
    path.write_text(_pot_network([("100k", "0.5", None, None)]))
    moved = tmp_path / "moved.cir"
    moved.write_text(_pot_network([("100k", "0.2", None, None)]))
    model = load(path, "mna", 48000.0, params={spelling: 0.2})
    leaf = model.circuit.params["ARV0.position"]
    assert leaf.kind.value == "control" and leaf.value == 0.2
    ours = model.dc_voltages(0.0)
    ref = operating_point_ngspice(moved)
    assert ours["v(w0)"] == pytest.approx(ref["w0"], rel=1e-12)
    model.set_value("ARV0.position", 0.5)  # no rebuild: back to the card's value
    assert model.dc_voltages(0.0)["v(w0)"] == pytest.approx(operating_point_ngspice(path)["w0"], rel=1e-12)


def test_potentiometer_position_gradient_matches_finite_difference(tmp_path: Path) -> None:
    """The position is differentiable: d v(out)/d position by autograd against a central difference."""
    import torch

    path = tmp_path / "pot.cir"
    path.write_text(_pot_network([("100k", "0.3", "true", "2")]))
    model = load(path, "mna", 48000.0)
    x = torch.full((1, 64), 0.0, dtype=torch.float64)
    p = model.parameter("ARV0.position")
    p.requires_grad_(True)
    model(x)[0, -1].backward()
    grad = float(p.grad)
    outs = []
    for h in (1e-6, -1e-6):
        with torch.no_grad():
            model.set_value("ARV0.position", 0.3 + h)
            outs.append(float(model(x)[0, -1]))
    fd = (outs[0] - outs[1]) / 2e-6
    assert abs(grad) > 1e-3 and grad == pytest.approx(fd, rel=1e-5)


CONTROLLED = """controlled sources, multipliers and a resistance of 0 (ngspice: 1 milliohm)
VIN in 0 DC 0
V1 s 0 DC 2
R1 s m 1k
VSENSE m 0 DC 0
F1 0 f VSENSE 3.3
Rf f 0 470
H1 h 0 VSENSE 1.5k
Rh h hh 1k
Fm hh 0 V1 0.5 m=2
R2 in out 10k m=2
C2 out 0 100n m=3
L1 hh 0 10m m=2
Rload out h 22k
Gm h 0 s 0 1m m=2
Rzero f fz 0
Rfz fz 0 2.2k
Gv f 0 VALUE={V(s)*V(s)*1e-4} m=3
.end
"""


def test_current_controlled_sources_and_multipliers_match_ngspice(tmp_path: Path) -> None:
    path = tmp_path / "controlled.cir"
    path.write_text(CONTROLLED)
    assert _dc_matches(path) >= 8


def test_current_controlled_transient_matches_ngspice(tmp_path: Path) -> None:
    """An input through an F-source current mirror and an H-source transimpedance stage: ESR against ngspice."""
    from circuitsim.validate import validate

    path = tmp_path / "fh.cir"
    path.write_text("F/H chain\nVIN in 0 DC 0\nR1 in a 1k\nVS a 0 DC 0\nF1 0 b VS 2\nRb b 0 1k\nCb b 0 100n\n"
                    "VS2 b c DC 0\nRc c 0 1meg\nH1 out 0 VS 500\nRo out 0 10k\n.end\n")
    report = validate(path, method="dk", duration=0.005)
    assert max(r.esr for r in report.signals) < 1e-5, report.table()
    assert min(r.peak for r in report.signals) > 1e-3


def test_vendor_card_parameters_warn_like_ngspice(tmp_path: Path) -> None:
    """Iave, Vpk, mfg="..." on a diode card: ngspice 39 warns and ignores them, so do we, with the same result."""
    path = tmp_path / "card.cir"
    path.write_text('vendor card\nVIN in 0 DC 0\nV1 s 0 DC 5\nR1 s out 1k\nD1 out 0 1N4148\n'
                    '.model 1N4148 D(Is=2.52n Rs=.568 N=1.752 Cjo=4p M=.4 tt=20n Iave=200m Vpk=75 mfg="OnSemi")\n'
                    'R2 s c 4.7k\nR3 s b 470k\nQ1 c b 0 2N3904\n'
                    '.model 2N3904 NPN(IS=1E-14 VAF=100 BF=300 Vceo=40 Icrating=200m mfg="NXP")\n'
                    '.end\n')
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compared = _dc_matches(path)
    messages = [str(w.message) for w in seen if issubclass(w.category, NetlistWarning)]
    assert compared >= 3
    assert any("unrecognized parameter (iave) - ignored" in m for m in messages), messages
    assert any("unrecognized parameter (vpk) - ignored" in m for m in messages), messages
    assert any("unrecognized parameter (icrating) - ignored" in m for m in messages), messages
    assert any('mfg="OnSemi" is not a number - ignored' in m for m in messages), messages
    assert all("\n" not in m for m in messages)


def test_negative_capacitance_warns_naming_the_element(tmp_path: Path) -> None:
    path = tmp_path / "neg.cir"
    path.write_text("negative C\nVIN in 0 DC 0\nR1 in out 1k\nC1 out 0 -10n\nC2 out 0 100n\n.end\n")
    with pytest.warns(NetlistWarning, match=r"neg.cir:4: C1 has a negative capacitance \(-1e-08\)"):
        load(path, "mna", 48000.0)


# ---------------------------------------------------------------- public netlists, run unchanged

# (file in tests/data/wild, input source, output node, the standard signals whose ESR at 48 kHz x 8 may exceed 1e-5,
# ngspice's tolerances).  Every other signal must meet ESR <= 1e-5 at 48 kHz x 8.  The listed ones are the
# trapezoidal rule's own error (docs/validation.md, "Netlists from the wild"): the reference has converged (TMAX
# 1/(64 fs) or reltol 1e-7 move it by far less), and the ESR falls 10-25x per doubling of the rate (16x is second
# order), so they are held to the foundation issue's rule for that case (tests/test_ngspice_acceptance.py):
# ESR <= 1e-5 at 4x the rate and a >= 20x drop.  Most are high-gain stages driven to hard clipping by the
# 0.5-1 V standard signals, 20-400x the 0.25-10 mV they were drawn for; legacy_pspice's is its LC resonance.
HARD = ("sweep", "pluck_1V")
WILD_NETLISTS = [
    ("ece341_diode.sp", "vin", "node2", (), {}),
    ("ece341_bjt_amplifier.sp", "vac", "vd", (), {}),
    ("kicad_npn_ce_amp.cir", "V2", "/out", HARD, {}),
    ("ece341_bjt_tran.sp", "VIN", "out", HARD, {}),
    # level-1 MOSFETs with ngspice's default card (.model NMOS NMOS): common source, drain (bulk tied to the
    # source) and gate stages from one public repository
    ("mos_common_source.sp", "Vsig", "vo", (), {}),
    ("mos_common_drain.sp", "Vsig", "vo", (), {}),
    ("mos_common_gate.sp", "Vsig", "vo", (), {}),
    # KiCad's golden export of its legacy_pspice QA schematic: three NPNs and two 100 mH LC networks.  Its excess is
    # not clipping (at a tenth of the level the ESR is as large): the trapezoidal rule's frequency warping,
    # tan(wT/2)/(wT/2) - 1 = 5.6e-4 at the 5 kHz resonance, which the resonance's Q turns into ESR ~2.5e-5
    ("kicad_legacy_pspice.spice", "V2", "VOUT", ("sine", "sweep", "pluck_50mV"), {}),
    # nahorov/Hendrix-Systems-Lab's ngspice decks: a Vox-style inductor wah (0.5 H, treadle pot as two {expr}
    # resistors over a .param, VCVS buffer) and a Uni-Vibe phase network frozen at one lamp state (.param values)
    ("hendrix_vox_wah.cir", "Vsig", "OUT", (), {}),
    ("hendrix_univibe_frozen.cir", "Vin", "OUT", (), {}),
    # mainster/LTspiceWorkspace: LTspice IV exports of a course's lab stages (title '* Z:\\...\\x.asc', LTspice's
    # standard.bjt line, ';op' lines, 'µ', .backanno), each powered by the course's vdc_single subcircuit with an
    # undeclared V=10V over its own '.param v=0', included as 'EIT_sub\\vdc_single.sub' (Vdc_single.sub beside them)
    ("eit_ltspice/kollektorschaltung_skript.net", "V1", "out", (), {}),  # emitter follower
    ("eit_ltspice/q1e-stufe.net", "v1", "out", ("sweep",), {}),  # common emitter, gain ~60, drawn for a 1 mV sine
    # JamesDunne/mkiicp: the LTspice Mark IIC+ preamp, six Koren triodes, output wout.  ngspice needs ABSTOL 1e-9
    # here (at 1e-15 it stops with "timestep too small" at node N004), and at 4x the rate VNTOL 1e-6 (at 1e-9 the
    # sweep stops so at 14.6 us); references at those settings and at TMAX/2, TMAX/4 or reltol 1e-5 agree to 3e-8
    ("mkiicp_full.net", "V1", "wout", ("sweep", "pluck_50mV", "pluck_300mV", "pluck_1V"),
     {"abstol": 1e-9, "vntol": 1e-6}),
]


def _assert_dc_matches(dc: list, at_least: int) -> None:
    """Every node voltage and source current of ``validate``'s DC table within ngspice's own Newton tolerance."""
    assert len(dc) >= at_least
    for d in dc:
        assert d.ours == pytest.approx(d.ngspice, rel=1e-6, abs=1e-9), (d.name, d.ours, d.ngspice)


@pytest.mark.parametrize("name, source, output, limited, tols", WILD_NETLISTS, ids=[w[0] for w in WILD_NETLISTS])
def test_wild_netlist_validates_against_ngspice(name: str, source: str, output: str, limited: tuple[str, ...],
                                                tols: dict[str, float]) -> None:
    """``validate`` at 48 kHz x 8 on the file as published: the DC point, and ESR <= 1e-5 on every standard signal
    but the listed ones, which must meet it at 4x the rate after a >= 20x drop (the trapezoidal error's signature)
    and at 48 kHz x 8 with max_local_error on (``LOCAL_ERROR``)."""
    from circuitsim.validate import validate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)
        report = validate(WILD / name, method="dk", duration=0.01, input_source=source, output_node=output,
                          reference_abstol=tols.get("abstol", 1e-15))
    print(report.table())
    _assert_dc_matches(report.dc, 4)
    assert all(r.peak > 1e-3 for r in report.signals), report.table()
    errors = {r.name: r.esr for r in report.signals}
    _hold_to_the_rule(name, source, output, errors, limited, report.sim_rate, tols)
    _hold_to_local_error(name, source, output, errors, {r.name: r.reference for r in report.signals}, report.sim_rate,
                         LOCAL_ERROR.get(name, 3e-3))


def _hold_to_the_rule(name: str, source: str, output: str, errors: dict[str, float], limited: tuple[str, ...],
                      fs: float, tols: dict[str, float], tmax_div: int = 16) -> None:
    """ESR <= 1e-5 at ``fs`` for every signal but ``limited``; those <= 1e-5 at 4 fs after a >= 20x drop."""
    from circuitsim.signals import standard_signals

    model = None
    for sig, e in errors.items():
        if e <= 1e-5:
            continue
        assert sig in limited, f"{sig}: ESR {e:.3e} > 1e-5 at {fs:g} Hz ({errors})"
        model = model or _wild_model(name, 4 * fs, source, output)
        x = standard_signals(4 * fs, 0.01)[sig]
        fine = _esr_against_ngspice(model, name, x, 4 * fs, source, output, tmax_div=tmax_div, **tols)
        print(f"{sig}: ESR {e:.3e} at {fs:g} Hz, {fine:.3e} at 4x the rate")
        assert fine <= 1e-5 and fine <= e / 20, f"{sig}: ESR {e:.3e} at {fs:g} Hz, {fine:.3e} at 4x the rate"


# The acceptance figure itself: with DK's opt-in local-error-driven substeps (load(..., max_local_error=E),
# docs/validation.md "Local-error-driven substeps") every signal listed above meets ESR <= 1e-5 at 48 kHz x 8,
# against the same ngspice references as the fixed step.  E = 3e-3 but where listed: legacy_pspice's excess is the
# rule's linear frequency warping, whose third differences are small beside the signal's range (its sine splits
# nothing down to E = 3e-5, and 0.3 % of its samples at 1e-5), so it needs E = 3e-6, where 94 % of the sine's
# samples run in two substeps (in effect the fixed step at x 16, which gives 1.6e-6).
LOCAL_ERROR = {"kicad_legacy_pspice.spice": 3e-6}


def _hold_to_local_error(name: str, source: str, output: str, errors: dict[str, float], refs: dict, fs: float,
                         tol: float) -> None:
    """ESR <= 1e-5 at ``fs`` with ``max_local_error=tol`` on every signal whose fixed-step ESR (``errors``)
    exceeds it, against ``refs[signal]`` (ngspice's output, volts, as the fixed step was compared with)."""
    import torch

    from circuitsim.signals import standard_signals
    from circuitsim.validate import esr

    model = None
    for sig, e in errors.items():
        if e <= 1e-5:
            continue
        model = model or _wild_model(name, fs, source, output, max_local_error=tol)
        x = standard_signals(fs, 0.01)[sig]
        with torch.no_grad():
            refined = esr(model(torch.as_tensor(x)).numpy(), refs[sig])
        share = model.diagnostics.refined / len(x)
        print(f"{sig}: ESR {e:.3e} fixed, {refined:.3e} at max_local_error {tol:g} ({share:.1%} of the samples "
              f"split, up to {model.diagnostics.max_substeps})")
        assert share > 0, f"{sig}: max_local_error {tol:g} split no sample"
        assert refined <= 1e-5, f"{sig}: ESR {e:.3e} fixed, {refined:.3e} at max_local_error {tol:g} at {fs:g} Hz"


# A deck that ngspice 39 itself finishes only at looser tolerances than validate()'s: at reltol 1e-6 (and 1e-5) with
# abstol 1e-15, vntol 1e-9 its transient stops at t ~ 2e-16 s ("Timestep too small") on the germanium AC128 card
# (RC = 1.7 micro-ohm); at these it runs.  At reltol 1e-4 ngspice's own step is bound by TMAX: on the clipping sweep
# its output moves by ESR 2.9e-4 from TMAX = 1/(16 fs) to 1/(64 fs) and by 1.5e-5 more to 1/(256 fs), so the
# reference runs at 1/(64 fs) (docs/validation.md).  Against it the clipping sweep and 1 V pluck exceed 1e-5 at
# 48 kHz x 8 (3.6e-5, 1.3e-5) and meet it at 4x the rate (8.1e-7, 7.6e-8).  (file, input, output, those signals)
LOOSE_NGSPICE = {"reltol": 1e-4, "abstol": 1e-12, "vntol": 1e-6}
WILD_LOOSE = [
    # grwhitehead/us3213181: the Maestro FZ-1 Fuzz-Tone, three germanium PNPs, a .subckt with bare parameters
    ("maestro_fuzztone.cir", "Vin", "out", HARD),
]


def _esr_against_ngspice(model, name: str, x, fs: float, source: str, output: str, tmax_div: int = 16,
                         **tols: float) -> float:
    """ESR of ``model``'s output for input ``x`` (volts at ``fs``) against ngspice's on the same file, whose
    largest step is TMAX = 1/(tmax_div fs)."""
    import torch

    from circuitsim.spice import simulate_ngspice
    from circuitsim.validate import esr

    with torch.no_grad():
        y = model(torch.as_tensor(x)).numpy()
    return esr(y, simulate_ngspice(WILD / name, x, fs, source, output, tmax=1 / (tmax_div * fs), **tols))


def _wild_model(name: str, fs: float, source: str, output: str, max_local_error: float | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)
        return load(WILD / name, "dk", fs, input_source=source, output_node=output, max_local_error=max_local_error)


@pytest.mark.parametrize("name, source, output, limited", WILD_LOOSE, ids=[w[0] for w in WILD_LOOSE])
def test_wild_netlist_at_ngspice_loose_tolerances(name: str, source: str, output: str,
                                                  limited: tuple[str, ...]) -> None:
    """The DC point as validate() checks it (ngspice's .op runs at the tight tolerances), and the standard signals
    at 48 kHz x 8 against ngspice at its loose tolerances and TMAX = 1/(64 fs), held to the rule above; and with
    max_local_error 3e-3 against ngspice at TMAX = 1/(256 fs) (the fixed-step ESR it prints is against 1/(64 fs))."""
    from circuitsim.signals import standard_signals
    from circuitsim.spice import simulate_ngspice
    from circuitsim.validate import compare_dc

    fs = 384000.0
    model = _wild_model(name, fs, source, output)
    _assert_dc_matches(compare_dc(model, WILD / name), 10)
    errors = {sig: _esr_against_ngspice(model, name, x, fs, source, output, tmax_div=64, **LOOSE_NGSPICE)
              for sig, x in standard_signals(fs, 0.01).items()}
    _hold_to_the_rule(name, source, output, errors, limited, fs, LOOSE_NGSPICE, tmax_div=64)
    # With max_local_error the ESR against the 1/(64 fs) reference stops at that reference's own error (the sweep:
    # 2.3e-5 at every E from 3e-3 to 1e-4, where the reference is 1.5e-5 from 1/(256 fs)), so the acceptance figure
    # is checked against ngspice at 1/(256 fs), which moves by 3.3e-7 (sweep) at 1/(512 fs)
    refs = {sig: simulate_ngspice(WILD / name, x, fs, source, output, tmax=1 / (256 * fs), **LOOSE_NGSPICE)
            for sig, x in standard_signals(fs, 0.01).items() if errors[sig] > 1e-5}
    _hold_to_local_error(name, source, output, {sig: errors[sig] for sig in refs}, refs, fs, 3e-3)


# A vendor op-amp macromodel in a published netlist: KiCad's golden export of its legacy_sallen_key QA schematic, a
# unity-gain Sallen-Key low-pass (1k, 1k, 100n, 100n: 1.6 kHz) on Analog Devices' AD8051 macromodel (PNP input pair,
# diodes, linear POLY(1)/POLY(2) E sources, F and H noise sources, G gain stages, a PNP/NPN output stage) on +-10 V.
# Its input pair's emitters and bias node (xu1.5, xu1.7, xu1.8) are held only by junctions and a current source, so
# DK's M = G + 2/T Cm is singular and the automatic choice, as a user gets it, is MNA (system/checks.py); and plain
# DC Newton from zero runs off to a 1e80 A state, which solvers/dc.py rejects for gmin stepping.
# And KiCad's golden export of its multiunit_pinmap_split QA schematic: a Fliege notch on the two units of KiCad's
# universal op-amp (uopamp_lvl2_2x: G sources, rail and current-limit diodes, zeners of BV = Vmax = 50 V) on +-5 V.
# Its nodes x1.n005, x1.n006 are joined only through a G source and diodes (auto: MNA).  In its transient, G6 drives
# xu1.x1.n005 towards its zener's 45 V knee within ten samples of a sine; there plain Newton from the extrapolated
# guess ran off to a branch current of 7e50 A (residual 1e82) whose step looked small beside it, and newton()
# accepted it until it required the equations to hold at an answer to rounding (solvers/newton.py).
# (file, input source, output node)
WILD_VENDOR_OPAMP = [("kicad_sallen_key/legacy_sallen_key.spice", "V1", "/lowpass"),
                     ("kicad_fliege_notch/multiunit_pinmap_split.cir", "V1", "/out")]


@pytest.mark.parametrize("name, source, output", WILD_VENDOR_OPAMP, ids=[w[0] for w in WILD_VENDOR_OPAMP])
def test_wild_vendor_opamp_netlist_validates_against_ngspice(name: str, source: str, output: str) -> None:
    """``validate`` with the default method at 48 kHz x 8: the DC point, and ESR <= 1e-5 on every standard signal."""
    from circuitsim.validate import validate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)
        assert load(WILD / name, "auto", 48000.0, input_source=source, output_node=output).method == "mna"
        with pytest.raises(UsageError, match="dk and sparse, not 'mna'"):  # MNA has no local-error substeps
            load(WILD / name, "auto", 48000.0, input_source=source, output_node=output, max_local_error=3e-3)
        report = validate(WILD / name, method="auto", duration=0.01, input_source=source, output_node=output)
    print(report.table())
    _assert_dc_matches(report.dc, 20)
    assert all(r.peak > 1e-2 for r in report.signals), report.table()
    _hold_to_the_rule(name, source, output, {r.name: r.esr for r in report.signals}, (), report.sim_rate, {})


WILD_ALL = [w[:3] for w in WILD_NETLISTS + WILD_LOOSE] + WILD_VENDOR_OPAMP


@pytest.mark.parametrize("name, source, output", WILD_ALL, ids=[w[0] for w in WILD_ALL])
def test_wild_netlist_simulates_from_the_command_line(tmp_path: Path, name: str, source: str, output: str) -> None:
    _simulates_from_the_command_line(tmp_path, WILD / name, source, output)


def _simulates_from_the_command_line(tmp_path: Path, path: Path, source: str, output: str) -> None:
    """``circuitsim simulate`` on 50 ms of a 440 Hz sine at 48 kHz x 2: a finite, moving output WAV."""
    import numpy as np

    from circuitsim.audio import read_wav, write_wav
    from circuitsim.cli import main

    wav = tmp_path / "in.wav"
    write_wav(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(2400) / 48000.0), 48000)
    out = tmp_path / "out.wav"
    rc = main(["simulate", str(path), str(wav), "-o", str(out), "--input-source", source,
               "--output-node", output, "--oversample", "2", "-q"])
    assert rc == 0
    y, fs = read_wav(out)
    assert fs == 48000 and len(y) == 2400 and np.all(np.isfinite(y)) and np.ptp(y) > 1e-3


# An LTspice export as LTspice writes one (written here, not a public file): the input is a wavefile=
# source, the Koren triode is PSpice/LTspice VALUE= syntax with PWR/PWRS in a .lib given by a Windows
# path, the subcircuit takes parameters it does not declare, 'µ', the standard library line, .backanno,
# and LTspice's standard.dio card for the 1N4148 with its words (mfg=OnSemi, which ngspice 39 stops on).
LTSPICE_KOREN = """\
* Koren triode, LTspice style: 0.5*(PWR+PWRS) is max(V(7), 0)^EX there
.SUBCKT TriodeK A G K
E1 7 0 VALUE={V(A,K)/KP*LOG(1+EXP(KP*(1/MU+V(G,K)/SQRT(KVB+V(A,K)*V(A,K)))))}
R1 7 0 1G
G1 A K VALUE={0.5*(PWR(V(7),EX)+PWRS(V(7),EX))/KG1}
C1 G K {CGK}
C2 G A {CGP}
C3 A K {CPK}
.ENDS
"""
LTSPICE_PREAMP = """\
* C:\\\\Users\\\\someone\\\\Documents\\\\preamp.asc
V1 in 0 wavefile=di-cut.wav chan=0
R1 in g 68k
R2 g 0 1Meg
XU1 p g k TriodeK MU=100 EX=1.4 KG1=1060 KP=600 KVB=300 CGK=1.6p CGP=1.7p CPK=0.46p
R3 B p 100k
R4 k 0 1.5k
C4 k 0 22µ
V2 B 0 250
C5 p out 22n
R5 out 0 1Meg
D1 0 B 1N4148
.model 1N4148 D(Is=2.52n Rs=.568 N=1.752 Cjo=4p M=.4 tt=20n Iave=200m Vpk=75 mfg=OnSemi type=silicon)
.model NPN NPN
.model PNP PNP
.lib C:\\\\Users\\\\someone\\\\Documents\\\\LTspiceXVII\\\\lib\\\\cmp\\\\standard.bjt
.tran 0 1 0 1u
.lib C:\\\\Users\\\\someone\\\\Documents\\\\LTspiceXVII\\\\lib\\\\sub\\\\koren.inc
.backanno
.end
"""


def test_ltspice_export_validates_through_a_rewritten_ngspice_copy(tmp_path: Path) -> None:
    """Detected as LTspice; ngspice runs a copy with pow/pwr, declared params, no .backanno/wavefile."""
    from circuitsim.netlist.errors import DialectNote
    from circuitsim.validate import validate

    (tmp_path / "koren.inc").write_text(LTSPICE_KOREN)
    path = tmp_path / "preamp.net"
    path.write_text(LTSPICE_PREAMP)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = validate(path, method="dk", duration=0.005)
    notes = [str(w.message) for w in seen if issubclass(w.category, DialectNote)]
    assert notes and "reading as ltspice (detected from 'wavefile='" in notes[0]
    assert max(r.esr for r in report.signals) <= 1e-5, report.table()
    assert min(r.peak for r in report.signals) > 0.5  # the triode really amplifies
    for d in report.dc:
        assert d.ours == pytest.approx(d.ngspice, rel=1e-6, abs=1e-9), (d.name, d.ours, d.ngspice)
    assert path.read_text() == LTSPICE_PREAMP  # the source file is never changed


def test_ltspice_wavefile_source_is_the_input_of_simulate(tmp_path: Path) -> None:
    """``circuitsim simulate preamp.net in.wav`` needs no --input-source: the wavefile= source is the input."""
    import numpy as np

    from circuitsim.audio import read_wav, write_wav
    from circuitsim.cli import main

    (tmp_path / "koren.inc").write_text(LTSPICE_KOREN)
    (tmp_path / "preamp.net").write_text(LTSPICE_PREAMP)
    wav = tmp_path / "in.wav"
    write_wav(wav, 0.2 * np.sin(2 * np.pi * 220 * np.arange(4800) / 48000.0), 48000)
    out = tmp_path / "out.wav"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["simulate", str(tmp_path / "preamp.net"), str(wav), "-o", str(out), "--oversample", "2", "-q"])
    assert rc == 0
    y, _ = read_wav(out)
    assert np.all(np.isfinite(y)) and np.ptp(y[2400:]) > 1.0  # the stage's gain is about 60


@pytest.mark.parametrize("name, source, limited", [("kollektorschaltung_skript.net", "V1", ()),
                                                   ("q1e-stufe.net", "v1", ("sweep",))])
def test_ltspice_lab_exports_validate_from_the_command_line(capsys: pytest.CaptureFixture, name: str, source: str,
                                                            limited: tuple[str, ...]) -> None:
    """``circuitsim validate`` on the LTspice IV exports as published: five signals, ESR <= 1e-5 but where listed."""
    import re

    from circuitsim.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)
        rc = main(["validate", str(WILD / "eit_ltspice" / name), "--method", "dk", "--input-source", source,
                   "--output-node", "out", "--duration", "0.01"])
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(sine|sweep|pluck_\w+)\s+(\S+)", out, re.M))
    assert rc == 0 and len(rows) == 5 and "DC operating point: " in out, out
    assert all(float(e) <= 1e-5 for sig, e in rows.items() if sig not in limited), out


def test_instance_parameter_overrides_the_subcircuits_own_param(tmp_path: Path) -> None:
    """LTspice: 'XU1 a vdc_single V=10V' into '.subckt vdc_single 1 / .param v=0' gives 10 V; without V= the
    subcircuit's own .param holds (0 V).  ngspice, on the copy that declares 'params: v=1', does the same."""
    (tmp_path / "Vdc_single.sub").write_text((WILD / "eit_ltspice" / "Vdc_single.sub").read_text())
    path = tmp_path / "two.net"
    path.write_text("* Z:\\\\x\\\\two.asc\nXU1 a vdc_single V=10V\nXU2 b vdc_single\nXU3 c vdc_single V={2*k}\n"
                    "R1 a b 1k\nR2 b 0 2k\nR3 a c 3k\nR4 c 0 1k\nVIN in 0 0\nR5 in out 1k\nR6 out 0 1k\n.param k=3\n"
                    ".lib EIT_sub\\\\vdc_single.sub\n.backanno\n.end\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)
        assert _dc_matches(path) >= 4
        v = load(path, "mna", 48000.0).dc_voltages(0.0)
    assert v["v(a)"] == pytest.approx(10.0) and v["v(b)"] == 0.0 and v["v(c)"] == pytest.approx(6.0)


# TI's TL072 Boyle macromodel as published (tests/data/wild/TL072.lib: PJF input pair, diodes, E/F POLY,
# G, H, current source), .included unchanged by an inverting amplifier written here; x20 on +-9 V clips
# at the output stage's limits (VC/VE, 2.2 V from each rail)
TL072_STAGES = {
    "x10_15V": ("TL072 inverting x10 on +-15 V\n", 15.0, "100k"),
    "x20_9V_clipping": ("TL072 inverting x20 on +-9 V, clipping\n", 9.0, "200k"),
}


@pytest.mark.parametrize("stage", list(TL072_STAGES))
def test_tl072_macromodel_as_published_matches_ngspice(tmp_path: Path, stage: str) -> None:
    from circuitsim.validate import validate

    title, rail, rf = TL072_STAGES[stage]
    path = tmp_path / "tl072_stage.cir"
    path.write_text(f"{title}.include {WILD / 'TL072.lib'}\nVCC vcc 0 {rail}\nVEE vee 0 {-rail}\nVIN in 0 0\n"
                    f"R1 in n 10k\nR2 n out {rf}\nX1 0 n vcc vee out TL072\nRL out 0 10k\n.end\n")
    report = validate(path, method="dk", duration=0.01)
    assert len(report.dc) >= 20
    for d in report.dc:
        assert d.ours == pytest.approx(d.ngspice, rel=1e-6, abs=1e-9), (d.name, d.ours, d.ngspice)
    assert max(r.esr for r in report.signals) <= 1e-5, report.table()
    if stage.endswith("clipping"):  # the 1 V pluck asks for 20 V; the output stops near 9 V - 2.2 V
        assert 6.0 < max(r.peak for r in report.signals) < rail - 1.0


LM308_STAGE = ("LM308 inverting x10 on +-15 V, 30 pF compensation as its file asks\n.include {lib}\nVCC vcc 0 15\n"
               "VEE vee 0 -15\nVIN in 0 0\nR1 in n 10k\nR2 n out 100k\nX1 0 n vcc vee out ca cb LM308\nCC ca cb 30p\n"
               "RL out 0 10k\n.end\n")


def test_lm308_macromodel_as_published_matches_ngspice(tmp_path: Path) -> None:
    """A published LM308 macromodel (BJT pair, diodes, G sources; tests/data/wild/LM308.lib) unchanged.

    The 5 V sweep to 20 kHz is slew-limited (the 30 pF compensation), where the ESR at 384 kHz is the
    trapezoidal rule's own (1.2e-5): that signal is held to second-order convergence, the others to 1e-5.
    """
    import torch

    from circuitsim.signals import log_sweep
    from circuitsim.spice import simulate_ngspice
    from circuitsim.validate import esr, validate

    path = tmp_path / "lm308_stage.cir"
    path.write_text(LM308_STAGE.format(lib=WILD / "LM308.lib"))
    report = validate(path, method="dk", duration=0.01)
    for d in report.dc:
        assert d.ours == pytest.approx(d.ngspice, rel=1e-6, abs=1e-9), (d.name, d.ours, d.ngspice)
    assert max(r.esr for r in report.signals if r.name != "sweep") <= 1e-5, report.table()
    errors = []
    for fs in (384000.0, 768000.0):
        x = log_sweep(20.0, 20000.0, 0.004, fs, 0.5)
        model = load(path, "dk", fs)
        with torch.no_grad():
            y = model(torch.as_tensor(x)).numpy()
        errors.append(esr(y, simulate_ngspice(path, x, fs, "VIN", "out", tmax=1 / (16 * fs))))
    assert errors[1] <= errors[0] / 6, errors


# KiCad exports that their author wrapped in a port-less .subckt, stimulus and supply inside, and instanced from
# another deck (the repository's contrast.cir: 'xgrovie Grovie').  The test writes only that instance line.
# ngspice runs the published SIN source itself (its harness drives top-level sources only, so it is handed an
# unconnected one); circuitsim drives the same source, INSTANCE.SOURCE, with that sine sampled at 48 kHz x 8.
# (file, subcircuit, instance, the source in it, the output node in it)
KICAD_SUBCKT_EXPORTS = [
    ("kicad_grovie.cir", "Grovie", "xgrovie", "V2", "Output1"),  # three NPNs, an XSPICE volume pot
]


@pytest.fixture(params=KICAD_SUBCKT_EXPORTS, ids=[k[0] for k in KICAD_SUBCKT_EXPORTS])
def kicad_export(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, str, str]:
    """(the published file, the deck instancing it as its repository does, INSTANCE.SOURCE, INSTANCE.NODE)."""
    name, subckt, instance, source, output = request.param
    deck = _instanced(tmp_path, WILD / name, subckt, instance)
    return WILD / name, deck, f"{instance}.{source}", f"{instance}.{output}"


def _instanced(tmp_path: Path, published: Path, subckt: str, instance: str) -> Path:
    """A deck with the one instance line of the repository's contrast.cir (and an unconnected VIN for the harness)."""
    deck = tmp_path / f"{instance}.cir"
    deck.write_text(f"{subckt} instanced as its repository's contrast.cir does\n.include {published}\n"
                    f"{instance} {subckt}\nVIN csim_unconnected 0 0\nRunconnected csim_unconnected 0 1k\n.end\n")
    return deck


def _published_sine(path: Path, source: str) -> tuple[float, float]:
    """Amplitude (V) and frequency (Hz) of ``source``'s ``SIN( 0 A F ...)`` as the file writes it."""
    import re

    from circuitsim.netlist.units import parse_number

    for line in path.read_text().splitlines():
        m = re.match(rf"\s*{source}\s.*SIN\(\s*0\s+(\S+)\s+(\S+)", line, re.IGNORECASE)
        if m:
            return float(parse_number(m.group(1))), float(parse_number(m.group(2)))
    raise AssertionError(f"{path}: no SIN source {source}")


def test_kicad_subcircuit_export_matches_ngspice_on_its_own_stimulus(kicad_export: tuple[Path, Path, str, str]) -> None:
    """The DC point to 1e-9 and 10 ms of the published sine at 48 kHz x 8 to ESR 1e-5, against ngspice."""
    import numpy as np
    import torch

    from circuitsim.spice import simulate_ngspice
    from circuitsim.validate import esr

    published, deck, source, node = kicad_export
    assert _dc_matches(deck, input_source=source, output_node=node) >= 10
    amplitude, freq = _published_sine(published, source.split(".")[-1])
    fs = 384000.0
    x = amplitude * np.sin(2 * np.pi * freq * np.arange(int(0.01 * fs)) / fs)
    model = load(deck, "dk", fs, input_source=source, output_node=node)
    with torch.no_grad():
        y = model(torch.as_tensor(x)).numpy()
    ref = simulate_ngspice(deck, np.zeros_like(x), fs, "VIN", node, tmax=1 / (16 * fs))
    assert np.ptp(ref) > 1e-2
    assert esr(y, ref) <= 1e-5, esr(y, ref)


def test_kicad_subcircuit_export_simulates_from_the_command_line(
    tmp_path: Path, kicad_export: tuple[Path, Path, str, str]
) -> None:
    """``circuitsim simulate`` drives a source inside the subcircuit: --input-source INSTANCE.SOURCE."""
    _, deck, source, node = kicad_export
    _simulates_from_the_command_line(tmp_path, deck, source, node)


def test_twelve_transistor_big_muff_dc_point_matches_ngspice(tmp_path: Path) -> None:
    """Two Big Muff channels from the same repository: 12 NPNs, 12 diodes, 9 pots (KiCad export, port-less .subckt).

    Only its DC point is tested: its DK compile takes minutes (benchmarks/bench_big.py times it against ngspice).
    Its R41 and R67 are written '1-3k', which ngspice 39 reads as -3k; so does circuitsim, with a warning.  The
    1N914.LIB it includes is a stand-in (its repository has none; see that file).
    """
    from circuitsim.validate import compare_dc

    deck = _instanced(tmp_path, WILD / "bigmuff" / "BigMuff-Rams-Head.cir", "BigMuff-Rams-Head", "xbmf")
    with pytest.warns(NetlistWarning, match="R41: ngspice 39 reads the resistance '1-3k' as two numbers"):
        model = load(deck, "mna", 48000.0, input_source="xbmf.V2", output_node="xbmf.rams_head_out")
    assert float(model.circuit.params["XBMF.R41"].value) == -3000.0
    _assert_dc_matches(compare_dc(model, deck), 80)


def test_twelve_transistor_big_muff_simulates_from_the_command_line(tmp_path: Path) -> None:
    """``circuitsim simulate`` on the Big Muff export (default method: sparse, 36 ports), driving its own source."""
    deck = _instanced(tmp_path, WILD / "bigmuff" / "BigMuff-Rams-Head.cir", "BigMuff-Rams-Head", "xbmf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)
        _simulates_from_the_command_line(tmp_path, deck, "xbmf.V2", "xbmf.rams_head_out")


# ROHM's BA4558R macromodel as KiCad's Q17 demo ships it (tests/data/wild/BA4558R_Rev002.lib: 14 BJTs with area
# factors per half, a G source, a current source written '1uAdc', models inside the .SUBCKT, nodes '+IN'/'-IN',
# PSpice's 'TC=a,b', which makes it read as the pspice dialect, as ngspice reads it in its PSpice mode), .included
# unchanged by stages written here: one half inverting x10 on +-15 V; the dual with its second half a grounded
# follower (as a datasheet ties off an unused half), x20 on +-9 V and clipping; a Tube-Screamer-style
# non-inverting stage (R4 4.7k + 47n to the 4.5 V reference, 51k + 100k of the drive pot, 51p and two 1N914 in the
# feedback) on a 9 V single supply.  (title, body, the signals held to the 4x-rate rule)
BA4558_STAGES = {
    "x10_15V": ("BA4558 inverting x10 on +-15 V\n", "VCC vcc 0 15\nVEE vee 0 -15\nVIN in 0 0\nR1 in n 10k\n"
                "R2 n out 100k\nX1 0 n vcc vee out ba4558r_sub\nRL out 0 10k\n", ()),
    "dual_x20_9V_clipping": ("BA4558R dual, inverting x20 on +-9 V, clipping; the other half a grounded follower\n",
                             "VCC vcc 0 9\nVEE vee 0 -9\nVIN in 0 0\nR1 in n 10k\nR2 n out 200k\n"
                             "X1 out n 0 vee 0 o2 o2 vcc BA4558R\nRL out 0 10k\n", ("sweep", "pluck_1V")),
    "tube_screamer_clipper": ("BA4558 Tube-Screamer-style clipping stage, 1N914 pair in the feedback, 9 V single\n",
                              "VCC vcc 0 9\nVREF ref 0 4.5\nVIN in ref 0\nR1 in p 1k\nR4 n m 4.7k\nC3 m ref 47n\n"
                              "R6 n f 51k\nR7 f out 100k\nC4 n out 51p\nD1 n out D1N914\nD2 out n D1N914\n"
                              "X1 p n vcc 0 out ba4558r_sub\nRL out ref 10k\n"
                              ".model D1N914 D(IS=2.52n RS=0.568 N=1.752 CJO=4p M=0.4 TT=20n)\n",
                              ("sweep", "pluck_300mV", "pluck_1V")),
}


def _ba4558_stage(tmp_path: Path, stage: str) -> Path:
    title, body, _ = BA4558_STAGES[stage]
    path = tmp_path / f"ba4558_{stage}.cir"
    path.write_text(f"{title}.include {WILD / 'BA4558R_Rev002.lib'}\n{body}.end\n")
    return path


def _ngspice_pspice_mode_op(path: Path, tmp_path: Path) -> dict[str, float]:
    """ngspice 39's own operating point of ``path`` unchanged, in its PSpice mode for included files
    (``set ngbehavior=ps`` in .spiceinit, as KiCad runs it), at validate()'s tolerances: name -> value."""
    import re
    import subprocess

    run = tmp_path / "pspice_mode"
    run.mkdir()
    (run / ".spiceinit").write_text("set ngbehavior=ps\n")
    deck = run / "deck.cir"
    deck.write_text(path.read_text().replace(".end\n", ".options reltol=1e-6 abstol=1e-15 vntol=1e-9\n.control\n"
                                             "set numdgt=15\nop\nprint all\n.endc\n.end\n"))
    out = subprocess.run(["ngspice", "-b", str(deck)], capture_output=True, text=True, timeout=120, cwd=run).stdout
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) = (\S+)$", out, re.M)}


@pytest.mark.parametrize("stage", list(BA4558_STAGES))
def test_ba4558_validation_copy_reads_as_ngspice_pspice_mode(tmp_path: Path, stage: str) -> None:
    """ngspice's copy of the stage (includes inlined, 'TC=a,b' written tc1= tc2=) has the operating point that
    ngspice 39 gives the unchanged files in its PSpice mode: the reference circuitsim is compared with is that."""
    path = _ba4558_stage(tmp_path, stage)
    ours = operating_point_ngspice(path)
    theirs = _ngspice_pspice_mode_op(path, tmp_path)
    compared = 0
    for key, value in theirs.items():
        name = key.replace("#branch", "").lower()
        name = f"i({name})" if key.endswith("#branch") else name
        if name in ours:
            assert ours[name] == pytest.approx(value, rel=1e-12, abs=1e-15), (key, ours[name], value)
            compared += 1
    assert compared >= 20, (sorted(ours), sorted(theirs))


# The macromodel has nodes joined only through BJT junctions (the input pair's emitters x1.n164947, the mirror
# x1.n165977, the bias line x1.n168651, the output stage's x1.n227264), which ngspice holds through the GMIN across
# every junction.  MNA's Newton matrix has the device Jacobians, GMIN included, and solves them; DK, which
# eliminates with M = G + 2/T Cm alone, refuses them in one line (system/checks.py), and load(method="auto")
# falls back to MNA.  The dual clipping stage's Newton fails at sample 606 of the 1 V pluck (1.58 ms) and at others
# of the sweep; MNA splits those samples into substeps (solvers/substep.py), so every signal runs to its end.
# Its sweep is held to the foundation rule in its own test below, which does not pass yet (a strict xfail); its
# 1 V pluck (ESR 2.3e-5 at 384 kHz, 7.5e-6 at 4x the rate: a 3x drop) does not either, so the dual stage's
# parametrisation is a strict xfail on that assertion.  MNA splits a sample only where Newton fails, as DK does
# (formulations/mna.py, SPLIT_ITER): splitting after 10 iterations gave 3.2e-6 here but moved MNA off DK's system.
BA4558_SWEEP_SHORT = "dual_x20_9V_clipping"
_DUAL_1V_SHORT = pytest.mark.xfail(raises=AssertionError, strict=True,
                                   reason="the BA4558 dual stage's 1 V pluck drops 3x at 4x the rate (rule: 20x)")


@pytest.mark.parametrize("stage", [pytest.param(s, marks=_DUAL_1V_SHORT) if s == BA4558_SWEEP_SHORT else s
                                   for s in BA4558_STAGES])
def test_ba4558_macromodel_as_published_matches_ngspice(tmp_path: Path, stage: str) -> None:
    """``validate`` (MNA) at 48 kHz x 8: the DC point to ngspice's Newton tolerance, and ESR <= 1e-5 on every
    standard signal but the listed ones, which must meet it at 4x the rate after a >= 20x drop (the dual stage's
    sweep: ``test_ba4558_dual_stage_sweep_at_4x_the_rate``)."""
    from circuitsim.validate import validate

    path = _ba4558_stage(tmp_path, stage)
    report = validate(path, method="mna", duration=0.01)
    print(report.table())
    _assert_dc_matches(report.dc, 20)
    assert all(r.peak > 1e-3 for r in report.signals), report.table()
    errors = {r.name: r.esr for r in report.signals}
    limited = BA4558_STAGES[stage][2]
    assert all(e <= 1e-5 for sig, e in errors.items() if sig not in limited), report.table()
    for sig in limited:
        if errors[sig] > 1e-5 and not (stage == BA4558_SWEEP_SHORT and sig == "sweep"):
            fine = _ba4558_esr_at(path, 4 * report.sim_rate, sig)
            print(f"{sig}: ESR {errors[sig]:.3e} at {report.sim_rate:g} Hz, {fine:.3e} at 4x the rate")
            assert fine <= 1e-5 and fine <= errors[sig] / 20, (sig, errors[sig], fine)
    if stage == "dual_x20_9V_clipping":  # the 1 V pluck asks for 20 V: the output stops short of the 9 V rails
        assert 6.0 < max(r.peak for r in report.signals) < 9.0
    if stage == "tube_screamer_clipper":  # gain 33 in band; out = in + the feedback, which the diodes hold under 1 V
        assert 0.5 < max(r.peak for r in report.signals) < 2.0


# The dual stage's sweep at 48 kHz x 8 differs from ngspice by ESR 1.1e-3, all of it at the instants where the
# output leaves clipping and slews (0.9 V/us): there the fixed-step trapezoidal rule starts the slew early, against a
# reference that moves by 3e-10 at TMAX/4 or reltol 1e-7, so the error is the integration's, as the rule's drop asks
# (109x at 4x the rate); but at 4x the rate it is 1.01e-5, 1 % over 1e-5 (ngspice shortens its steps there by its
# truncation-error control; circuitsim splits a sample only where Newton fails).  A strict xfail on exactly that
# assertion: the marker goes when it passes.
@pytest.mark.xfail(raises=AssertionError, strict=True,
                   reason="the BA4558 dual stage's sweep is 1.01e-5 at 4x the rate, where the rule asks <= 1e-5")
def test_ba4558_dual_stage_sweep_at_4x_the_rate(tmp_path: Path) -> None:
    """The sweep held to the foundation rule: ESR <= 1e-5 at 4x the rate after a >= 20x drop."""
    path = _ba4558_stage(tmp_path, BA4558_SWEEP_SHORT)
    fs = 384000.0
    coarse, fine = (_ba4558_esr_at(path, rate, "sweep") for rate in (fs, 4 * fs))
    print(f"sweep: ESR {coarse:.3e} at {fs:g} Hz, {fine:.3e} at 4x the rate")
    assert coarse > 1e-5  # else the sweep meets the plain threshold
    assert fine <= 1e-5 and fine <= coarse / 20, (coarse, fine)


def _ba4558_esr_at(path: Path, fs: float, sig: str) -> float:
    """MNA's ESR against ngspice (TMAX = 1/(16 fs)) on the standard signal ``sig`` at ``fs``."""
    from circuitsim.signals import standard_signals

    model = load(path, "mna", fs)
    return _esr_against_ngspice(model, str(path), standard_signals(fs, 0.01)[sig], fs, "VIN", "out")


def test_ba4558_stage_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``circuitsim simulate`` and ``circuitsim validate`` on the x10 stage as a user would run them, without
    ``--method``: the automatic choice falls back from DK to MNA (DK's M is singular)."""
    import re

    import numpy as np

    from circuitsim.audio import read_wav, write_wav
    from circuitsim.cli import main

    path = _ba4558_stage(tmp_path, "x10_15V")
    wav, out_wav = tmp_path / "in.wav", tmp_path / "out.wav"
    write_wav(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(2400) / 48000.0), 48000)
    rc = main(["simulate", str(path), str(wav), "-o", str(out_wav), "--oversample", "2", "-q"])
    y, fs = read_wav(out_wav)
    assert rc == 0 and fs == 48000 and len(y) == 2400 and np.all(np.isfinite(y))
    assert np.ptp(y[1200:]) == pytest.approx(6.0, rel=0.02)  # x10 inverting, 0.3 V in: 6 V peak to peak
    capsys.readouterr()
    rc = main(["validate", str(path), "--duration", "0.01"])
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(sine|sweep|pluck_\w+)\s+(\S+)", out, re.M))
    assert rc == 0 and len(rows) == 5 and "DC operating point: " in out, out
    assert all(float(e) <= 1e-5 for e in rows.values()), out


def test_ba4558_dk_refuses_in_one_line_and_auto_falls_back_to_mna(tmp_path: Path) -> None:
    """DK refuses the junction-only node in one line naming it and its three transistors (not a traceback from
    inside a formulation); the automatic choice is MNA, whose DC point is ngspice's within its Newton tolerance."""
    from circuitsim.validate import compare_dc

    path = _ba4558_stage(tmp_path, "x10_15V")
    for method in ("dk", "sparse"):
        with pytest.raises(NetlistError) as err:
            load(path, method, 48000.0)
        msg = str(err.value)
        assert "\n" not in msg and "M = G + 2/T Cm is singular" in msg, msg
        assert "v(x1.n164947)" in msg and all(q in msg for q in ("X1.Q_Q1", "X1.Q_Q2", "X1.Q_Q15")), msg
    model = load(path, "auto", 48000.0)
    assert model.method == "mna" and model.choice.startswith("mna: M = G + 2/T Cm is singular")
    _assert_dc_matches(compare_dc(model, path), 20)
