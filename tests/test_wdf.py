"""Wave digital filters built from the netlist: the same discrete system as DK, tree shape, R-type
losslessness, knob re-adaptation, gradients against the plain-torch WDF, refusals.

WDF with the bilinear transform and DK with the trapezoidal rule are the same discrete system
(docs/wdf.md), so every netlist must agree with DK to 1e-9 of the output's peak; DK itself is
held to ngspice by tests/test_ngspice_acceptance.py at the same rate and signals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuitsim.api import load, load_circuit
from circuitsim.circuit.build import build_circuit
from circuitsim.cli import main
from circuitsim.formulations.dk import DKModule
from circuitsim.formulations.wdf import WDFModule
from circuitsim.formulations.wdf.oracle import simulate_oracle
from circuitsim.formulations.wdf.tree import Leaf
from circuitsim.kernels import autograd
from circuitsim.kernels.core import KernelOptions
from circuitsim.kernels.explicit_root import OMEGA_TOL
from circuitsim.netlist import NetlistError, parse_string
from circuitsim.signals import standard_signals

ROOT = Path(__file__).resolve().parents[1]
NETLISTS = sorted((ROOT / "netlists").glob("*.cir"))
FS = 48000 * 8


def _rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("path", NETLISTS, ids=lambda p: p.stem)
def test_wdf_is_the_dk_system(path: Path) -> None:
    """Every bundled netlist, the standard signals at 48 kHz x 8: WDF == DK within 1e-9 of the peak."""
    wdf, dk = load(path, "wdf", FS), load(path, "dk", FS)
    for name, x in standard_signals(FS, 0.004).items():
        with torch.no_grad():
            y_w = wdf(torch.as_tensor(x)).numpy()
            y_d = dk(torch.as_tensor(x)).numpy()
        assert _rel(y_w, y_d) < 1e-9, (path.stem, name, _rel(y_w, y_d))


@pytest.mark.parametrize("stem", ["diode_clipper", "fmv_tonestack", "bjt_common_emitter"])
def test_short_inputs_match_dk(stem: str) -> None:
    """One, two and three samples: the operating point's output, then the run's (a one-sample input runs
    no sample after the operating point: it used to read as a Newton failure at sample 1)."""
    wdf, dk = load(ROOT / "netlists" / f"{stem}.cir", "wdf", FS), load(ROOT / "netlists" / f"{stem}.cir", "dk", FS)
    for n in (1, 2, 3):
        x = torch.linspace(0.0, 0.2, n, dtype=torch.float64).unsqueeze(0)
        with torch.no_grad():
            y_w, y_d = wdf(x), dk(x)
        assert y_w.shape == y_d.shape == (1, n)
        assert torch.allclose(y_w, y_d, rtol=0, atol=1e-9 * max(1.0, float(y_d.abs().max()))), (stem, n)


def test_fmv_pot_settings_and_streaming() -> None:
    """FMV at several pot settings (the R-type re-adapts), and block streaming equals one call."""
    path = ROOT / "netlists" / "fmv_tonestack.cir"
    wdf, dk = load(path, "wdf", 96000.0), load(path, "dk", 96000.0)
    x = torch.as_tensor(standard_signals(96000.0, 0.01)["sweep"])
    for t, b, m in [(0.1, 0.9, 0.3), (0.9, 0.05, 0.95), (0.5, 0.5, 0.5)]:
        for model in (wdf, dk):
            model.set_value("treble", t)
            model.set_value("bass", b)
            model.set_value("mid", m)
        with torch.no_grad():
            assert _rel(wdf(x).numpy(), dk(x).numpy()) < 1e-9
    with torch.no_grad():
        y1, st = wdf.stream(x[:400])
        y2, _ = wdf.stream(x[400:], st)
        assert _rel(torch.cat([y1, y2]).numpy(), wdf(x).numpy()) < 1e-12


BRIDGE = """bridge with an inductor, a current source, a diode across the bridge and a charge
VIN in 0 DC 0
IB 0 n1 DC 1m
R1 in n1 1k
R2 in n2 2.2k
R3 n1 0 3.3k
R4 n2 0 1.5k
L1 n1 x 10m
RL x 0 470
C1 n2 out 100n
RO out 0 10k
D1 n1 n2 DX
.model DX D(Is=1n N=1.8 Rs=5 Cjo=4p Tt=2n)
.end
"""


def _from_text(text: str, fs: float, cls):  # noqa: ANN001, ANN202
    return cls(build_circuit(parse_string(text, "bridge.cir")), fs)


def test_bridge_with_inductor_current_source_and_charges() -> None:
    """A non-series-parallel circuit (diode across a bridge) with L, I, RS and junction charges == DK."""
    wdf = _from_text(BRIDGE, 96000.0, WDFModule)
    dk = _from_text(BRIDGE, 96000.0, DKModule)
    assert wdf.layout.charges, "the junction charge must be a state of the root"
    x = torch.as_tensor(standard_signals(96000.0, 0.01)["pluck_1V"]) * 3.0
    with torch.no_grad():
        assert _rel(wdf(x).numpy(), dk(x).numpy()) < 1e-9


def test_diode_clipper_tree_is_the_textbook_one(capsys: pytest.CaptureFixture[str]) -> None:
    """Resistive voltage source in parallel with the capacitor, the diode pair at the root."""
    assert main(["describe", str(ROOT / "netlists" / "diode_clipper.cir"), "--method", "wdf"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("root: nonlinear one-port (out, 0): D1, D2")
    assert lines[2].strip().startswith("parallel adaptor")
    children = sorted(line.strip().split(":")[0] for line in lines[3:5])
    assert children == ["C1", "VIN+R1"]
    assert "resistive voltage source" in lines[3] + lines[4]
    assert "capacitor" in lines[3] + lines[4]


def test_describe_dk_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", str(ROOT / "netlists" / "bjt_common_emitter.cir"), "--method", "dk"]) == 0
    out = capsys.readouterr().out
    assert "states: 5" in out  # CIN, CF, COUT and the two junction-charge histories
    assert "nonlinearity: 2 ports, 4 outputs (2 currents, 2 charges)" in out


def _fmv_rtype(model: WDFModule):  # noqa: ANN202
    (rt,) = [a for a in model.tree.adaptors if a.kind == "rtype"]
    return rt


@pytest.mark.parametrize("pots", [(0.5, 0.5, 0.5), (0.05, 0.95, 0.2), (0.99, 0.01, 0.7), (0.3, 0.6, 0.99)])
def test_fmv_rtype_is_lossless_and_adapted(pots: tuple[float, float, float]) -> None:
    """Sᵀ G S = G (G: port conductances) to 1e-12 and S_up,up = 0 (docs/wdf.md eq. (3)–(4))."""
    model = load(ROOT / "netlists" / "fmv_tonestack.cir", "wdf", 48000.0)
    for name, v in zip(("treble", "bass", "mid"), pots):
        model.set_value(name, v)
    rt = _fmv_rtype(model)
    with torch.no_grad():
        ad = model.adapted()
        d = ad.rtype[id(rt)]
        r = torch.stack([ad.R[id(c)] for c, _ in rt.children] + [d.R_up])
    g = torch.diag(1.0 / r)
    err = (d.S.T @ g @ d.S - g).abs().max() / g.abs().max()
    assert float(err) < 1e-12
    assert abs(float(d.S[-1, -1])) < 1e-12
    assert float((d.S - torch.eye(len(r), dtype=torch.float64)).abs().max()) > 0.1  # not trivially I


def test_knob_change_readapts_only_its_path() -> None:
    model = load(ROOT / "netlists" / "fmv_tonestack.cir", "wdf", 48000.0)
    x = torch.zeros(16, dtype=torch.float64)
    by_leaf = {}
    for a in model.tree.adaptors:
        for c, _ in a.children:
            if isinstance(c, Leaf):
                by_leaf[c.name] = a.index
    rt = _fmv_rtype(model).index
    with torch.no_grad():
        model(x)
        before = dict(model.adapter.recomputed)
        model.set_value("bass", 0.9)  # RB: the series adaptor (RB, RM1), then the R-type above it
        model(x)
        after = dict(model.adapter.recomputed)
        delta = {k: after[k] - before[k] for k in after}
        assert delta[by_leaf["RB"]] == 1 and delta[rt] == 1
        assert delta[by_leaf["RT1"]] == 0  # the treble pot's series adaptor is untouched
        assert sum(delta.values()) == 2 + delta[-1]
        model(x)  # nothing changed: nothing recomputed
        assert model.adapter.recomputed == after
        # treble moves RT1 and RT2 in one series adaptor: RT1 + RT2 is constant, so the R-type's
        # port resistances do not change and (to rounding of that sum) it is not re-adapted
        model.set_value("treble", 0.2)
        model(x)
        last = model.adapter.recomputed
        assert last[by_leaf["RT1"]] - after[by_leaf["RT1"]] == 1 and last[by_leaf["RB"]] == after[by_leaf["RB"]]
        assert last[rt] - after[rt] <= 1


def _gradients(model: WDFModule, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    params = [p for _, p in model.values() if p.requires_grad]
    weight = torch.linspace(0.5, 1.5, y.shape[-1], dtype=torch.float64)
    return list(torch.autograd.grad((y * weight).sum(), [*params, x]))


@pytest.mark.parametrize("stem,learn", [
    ("diode_clipper", ()),
    ("fmv_tonestack", ("treble", "bass", "mid")),
    ("ts808_clipping", ("drive",)),
    ("bjt_common_emitter", ()),
])
def test_gradients_match_the_plain_torch_wdf(stem: str, learn: tuple[str, ...]) -> None:
    """Compiled path (kernel adjoint through the torch wave maps) vs autograd through the plain-torch
    WDF: every R, C, L, pot, gain and device parameter and the input, within 1e-7 relative."""
    model = load(ROOT / "netlists" / f"{stem}.cir", "wdf", 96000.0)
    for name in learn:
        model.set_kind(name, "learnable")
    n = 150
    t = torch.arange(n, dtype=torch.float64) / 96000.0
    x = (0.8 * torch.sin(2 * torch.pi * 3000.0 * t)).requires_grad_(True)
    g_fast = _gradients(model, x, model(x))
    g_ref = _gradients(model, x, simulate_oracle(model, x))
    names = [nm for nm, p in model.values() if p.requires_grad] + ["input"]
    assert len(names) >= 4
    for nm, a, b in zip(names, g_fast, g_ref):
        scale = float(b.abs().max())
        if scale == 0.0:  # a parameter without effect here (e.g. NC with ISC = 0)
            assert float(a.abs().max()) == 0.0, nm
            continue
        assert float((a - b).abs().max()) <= 1e-7 * scale, (nm, float((a - b).abs().max()) / scale)


def test_refuses_what_it_cannot_represent() -> None:
    text = """inductor current read by a behavioural source
VIN in 0 DC 0
R1 in x 1k
L1 x 0 1m
B1 out 0 I={I(L1)*2}
R2 out 0 1k
.end
"""
    with pytest.raises(NetlistError, match="L1") as info:
        _from_text(text, 48000.0, WDFModule)
    assert "\n" not in str(info.value)


def test_load_and_cli_accept_method_wdf(tmp_path: Path) -> None:
    model = load(ROOT / "netlists" / "diode_clipper.cir", "wdf", 48000.0)
    assert isinstance(model, WDFModule)
    circuit = load_circuit(ROOT / "netlists" / "diode_clipper.cir")
    assert WDFModule(circuit, 48000.0).tree.root.kind == "nonlinear"


def test_wright_omega_against_scipy() -> None:
    from scipy.special import wrightomega

    from circuitsim.kernels.explicit_root import wright_omega

    xs = np.concatenate([np.linspace(-740, -2, 2001), np.linspace(-2, 1, 2001), np.logspace(0, 12, 2001),
                         np.linspace(-40, 80, 4001)])
    got = np.array([wright_omega(float(x)) for x in xs])
    ref = wrightomega(xs).real
    assert float(np.max(np.abs(got - ref) / ref)) < 1e-14


def test_omega_guess_needs_one_refinement_step() -> None:
    """The starting values of omega on [-8, 64) (the Lambert series below -3, the cubic fits above,
    kernels/explicit_root.py) are within 2e-4 relative, where one Fritsch-Shafer-Crowley step reaches
    machine precision and ``_omega_refine`` stops."""
    from scipy.special import wrightomega

    from circuitsim.kernels.explicit_root import omega_guess

    xs = np.linspace(-8.0, 64.0, 72001)[:-1]
    ref = wrightomega(xs).real
    got = np.array([omega_guess(float(x)) for x in xs])
    assert float(np.max(np.abs(got - ref) / ref)) < 1e-4


def test_omega_table_within_its_bound() -> None:
    """The piecewise polynomials of omega and v = 1/(omega (1 + omega)) on [-20, 64)
    (kernels/omega_table.py), evaluated in float64 as the explicit root does, against mpmath at 30
    digits: within the bounds of docs/wdf.md eq. (13), which the root's error budget uses; and the table
    is what its generator gives."""
    import mpmath as mp

    from circuitsim.kernels import omega_table as ot
    from circuitsim.kernels.explicit_root import omega_table_eval, wright_omega

    frac = np.linspace(0.0, 1.0, 9)[:-1]
    xs = (ot.XLO + ot.H * (np.arange(ot.N_INTERVALS)[:, None] + frac[None, :])).ravel()
    xs = np.concatenate([xs, np.nextafter(xs[1:], -np.inf), [ot.XHI - 1e-12]])
    err_w = err_v = 0.0
    with mp.workdps(30):
        for x in xs:
            w, v = omega_table_eval(float(x))
            ref = mp.lambertw(mp.exp(mp.mpf(float(x))))
            ref_v = 1 / (ref * (1 + ref))
            err_w = max(err_w, abs(float(w - ref)))
            err_v = max(err_v, abs(float((v - ref_v) / ref_v)))
    assert err_w <= ot.ERR_W and err_v <= ot.ERR_V, (err_w, err_v)
    assert ot.ERR_W < 1e-11 and ot.ERR_V < 1e-8
    for x in (-25.0, 70.0, 1e4):  # outside the table: wright_omega and one division
        w, v = omega_table_eval(x)
        assert w == wright_omega(x)
        assert v == pytest.approx(1.0 / (w * (1.0 + w)), rel=1e-15)
    for j in (0, 37, ot.N_INTERVALS - 1):
        assert ot.fit(j) == list(ot.COEFFS[j])


def _newton_only(monkeypatch: pytest.MonkeyPatch, model, x: torch.Tensor) -> np.ndarray:  # noqa: ANN001
    """``model(x)`` with the core's explicit root switched off (Newton on every sample)."""
    with monkeypatch.context() as mp:
        mp.setattr(autograd, "DEFAULT_OPTIONS", KernelOptions(explicit=False))
        with torch.no_grad():
            y = model(x).numpy()
        assert model.diagnostics.newton_iterations > 0
    return y


@pytest.mark.parametrize("stem", ["diode_clipper", "ts808_clipping"])
def test_explicit_root_is_used_and_exact(stem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The diode pairs take the explicit Wright-omega root (no Newton iteration) and equal Newton on
    the same core within the root's error bound, and DK at 1e-9, from a whisper to a 10 V overdrive."""
    path = ROOT / "netlists" / f"{stem}.cir"
    wdf, dk = load(path, "wdf", FS), load(path, "dk", FS)
    kind, steps = wdf.root_path()
    assert kind == "omega" and 1 <= steps[0] <= 6
    t = torch.arange(4000, dtype=torch.float64) / FS
    for amp in (1e-3, 0.3, 10.0):
        x = amp * torch.sin(2 * torch.pi * 1500.0 * t) * torch.linspace(0, 1, 4000, dtype=torch.float64)
        with torch.no_grad():
            y = wdf(x).numpy()
            assert wdf.diagnostics.newton_iterations == 0
            assert _rel(y, dk(x).numpy()) < 1e-9, amp
        assert float(np.abs(y - _newton_only(monkeypatch, wdf, x)).max()) <= 10 * OMEGA_TOL, amp
    with torch.no_grad():  # streaming in blocks gives the one long call
        y1, st = wdf.stream(x[:1500])
        y2, _ = wdf.stream(x[1500:], st)
        assert _rel(torch.cat([y1, y2]).numpy(), wdf(x).numpy()) < 1e-13


def test_single_diode_takes_the_explicit_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """One diode (a half-wave clipper): forward-biased on the omega branch, reverse-biased through
    the chord steps of eq. (11); equal to Newton within the error bound on both half-waves."""
    text = """half-wave clipper
VIN in 0 DC 0
R1 in out 2.2k
C1 out 0 10n
D1 out 0 DX
.model DX D(Is=2.52n N=1.752)
.end
"""
    wdf = _from_text(text, FS, WDFModule)
    kind, steps = wdf.root_path()
    assert kind == "omega" and steps[0] >= 2  # the reverse current needs a correction
    x = 4.0 * torch.sin(torch.linspace(0, 30, 3000, dtype=torch.float64))
    with torch.no_grad():
        y = wdf(x).numpy()
        assert wdf.diagnostics.newton_iterations == 0
    assert y.min() < -3.0 and y.max() < 0.8  # blocks one half-wave, clips the other
    assert float(np.abs(y - _newton_only(monkeypatch, wdf, x)).max()) <= 10 * OMEGA_TOL


def test_breakdown_diode_falls_back_to_newton() -> None:
    text = """zener clipper
VIN in 0 DC 0
R1 in out 1k
C1 out 0 10n
D1 0 out DZ
.model DZ D(Is=1n N=1.5 BV=2.7 IBV=1m)
.end
"""
    wdf = _from_text(text, 96000.0, WDFModule)
    dk = _from_text(text, 96000.0, DKModule)
    assert wdf.root_path()[0] == "newton"
    x = 6.0 * torch.sin(torch.linspace(0, 40, 3000, dtype=torch.float64))
    with torch.no_grad():
        assert _rel(wdf(x).numpy(), dk(x).numpy()) < 1e-9


@pytest.mark.requires_ngspice
@pytest.mark.parametrize("stem,threshold", [("diode_clipper", 1e-5), ("fmv_tonestack", 1e-8)])
def test_wdf_against_ngspice(stem: str, threshold: float) -> None:
    """The foundation thresholds at 48 kHz x 8 (ESR 1e-5 nonlinear, 1e-8 linear), WDF directly."""
    from circuitsim.spice import simulate_ngspice
    from circuitsim.validate import esr

    path = ROOT / "netlists" / f"{stem}.cir"
    model = load(path, "wdf", FS)
    for name, x in standard_signals(FS, 0.01).items():
        with torch.no_grad():
            y = model(torch.as_tensor(x)).numpy()
        ref = simulate_ngspice(path, x, FS, tmax=1 / (16 * FS))
        assert esr(y, ref) < threshold, (name, esr(y, ref))


@pytest.mark.parametrize("rel,src,out", [
    ("third_party/fuzz_face_si.cir", "VIN", "out"),
    ("wild/ece341_diode.sp", "VIN", "node2"),
])
def test_wdf_builds_third_party_netlists(rel: str, src: str, out: str) -> None:
    """Netlists written elsewhere (a Fuzz Face, a course example with a current-sensing source): == DK."""
    path = ROOT / "tests" / "data" / rel
    wdf = load(path, "wdf", 96000.0, input_source=src, output_node=out)
    dk = load(path, "dk", 96000.0, input_source=src, output_node=out)
    x = 0.1 * torch.sin(torch.linspace(0, 60, 2000, dtype=torch.float64))
    with torch.no_grad():
        assert _rel(wdf(x).numpy(), dk(x).numpy()) < 1e-9
