"""Port-Hamiltonian formulation (issue 9): structure, DK equivalence on linear circuits, power balance,
passivity, gradients against the plain-torch oracle, second-order agreement with DK, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuitsim.api import load, load_circuit
from circuitsim.cli import main
from circuitsim.formulations.phs import CSV_COLUMNS, PHSModule, analyse, read_csv
from circuitsim.formulations.phs.reference import reference_simulate
from circuitsim.netlist import NetlistError
from circuitsim.signals import standard_signals
from circuitsim.system.mna_system import MNATopology

ROOT = Path(__file__).resolve().parents[1]
NETLISTS = sorted((ROOT / "netlists").glob("*.cir"))
SUPPORTED = NETLISTS  # junction charges (the DS-1 booster's CJE, CJC, TF, TR) are nonlinear storage (docs/phs.md)
FS = 48000 * 8


def _netlist(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "t.cir"
    p.write_text("* test\n" + body + "\n.end\n")
    return p


@pytest.mark.parametrize("path", NETLISTS, ids=lambda p: p.stem)
def test_structure_J_skew_and_labels(path: Path):
    s = analyse(MNATopology(load_circuit(path)))
    assert np.array_equal(s.J, -s.J.T)  # exactly, entries in {-1, 0, 1}
    assert set(np.unique(s.J)) <= {-1.0, 0.0, 1.0}
    assert len(s.tree) + len(s.links) == s.J.shape[0] == len(s.branches)
    for b in s.branches:
        assert b.control in ("effort", "flux")
        if b.kind == "V":
            assert b.control == "effort"
        if b.kind == "I":
            assert b.control == "flux"
    # Kirchhoff's voltage law through J: link voltages from tree voltages of an arbitrary node potential
    rng = np.random.default_rng(1)
    phi = {n: rng.normal() for b in s.branches for n in (b.a, b.b)}
    phi[-1] = 0.0
    v = np.array([phi[b.a] - phi[b.b] for b in s.branches])
    flows = s.J @ np.where([b.control == "effort" for b in s.branches], v, 0.0)
    links = np.array(s.links)
    assert np.allclose(flows[links], v[links], atol=1e-12)


@pytest.mark.parametrize("body, branch, why", [
    ("VIN in 0 DC 0\nC1 in 0 1u\nR1 in out 1k\nC2 out 0 1u", "C1", "capacitors and voltage sources"),
    ("VIN in 0 DC 0\nR1 in out 1k\nR2 out 0 1k\nE1 x 0 out 0 2\nC1 x in 1u", "C1",
     "capacitors and voltage sources"),
    ("VIN in 0 DC 0\nR1 in out 1k\nI1 out x 1m\nL1 x 0 1m\nR2 out 0 1k", "", "cutset of inductors and current sources"),
])
def test_not_realizable_names_the_branch(tmp_path: Path, body: str, branch: str, why: str):
    with pytest.raises(NetlistError) as err:
        load(_netlist(tmp_path, body), "phs", FS)
    msg = str(err.value)
    assert "\n" not in msg and why in msg and "not realizable" in msg
    assert branch in msg


def test_capacitor_loop_is_a_dependent_state():
    s = analyse(MNATopology(load_circuit(ROOT / "netlists" / "triode_common_cathode.cir")))
    dep = [b.name for b in s.branches if b.dependent]
    assert len(dep) == 1 and dep[0].startswith("XV1.C")


def test_unmodelled_charges_refused_in_one_line(tmp_path: Path):
    """A JFET's gate charges have no storage law here: refused in one line naming the element (docs/phs.md)."""
    net = _netlist(tmp_path, "VIN in 0 DC 0\nVDD d 0 DC 9\nR1 in g 1k\nRG g 0 1Meg\nJ1 d g out JN\n"
                             "RS out 0 1k\n.model JN NJF(VTO=-2 BETA=1m CGS=2p CGD=2p)")
    with pytest.raises(NetlistError) as err:
        load(net, "phs", FS)
    assert "J1" in str(err.value) and "\n" not in str(err.value)


def _law_functions(stem: str, output: str):  # noqa: ANN202
    """The storage law of ``output`` of the first device of ``stem`` as numpy functions, and the device's charge."""
    import sympy

    from circuitsim.formulations.phs.charges import V, discrete_gradient, storage_law

    topo = MNATopology(load_circuit(ROOT / "netlists" / f"{stem}.cir"))
    m = topo.assemble(topo.leaf_values())
    dev, blk = topo.devices[0], topo.blocks[0]
    law = storage_law(dev.family, output, blk.features)
    sub = {sym: float(m.theta[blk.theta + k]) for sym, k in law.params}
    mods = [{"pow1m": lambda a, mm: np.exp((1 - mm) * np.log(a))}, "numpy"]
    S, Phi = (sympy.lambdify(V, e.subs(sub), mods) for e in (law.S, law.Phi))
    a, b = sympy.Symbol("a", real=True), sympy.Symbol("b", real=True)
    dg = sympy.lambdify((a, b), discrete_gradient(law, a, b).subs(sub), mods)
    k = [o.name for o in dev.family.outputs].index(output)

    def charge(vbe: float, vbc: float) -> float:
        v = torch.tensor([[vbe, vbc]], dtype=torch.float64)
        return float(topo.nonlinearity.torch_eval(v, m.theta)[0, blk.outs[k]])

    return law, S, Phi, dg, charge


def test_storage_law_is_the_device_charge_and_phi_its_integral():
    """S(v) is the device's own charge where it depends on its junction alone (qbc: depletion + TR cbc); qbe's
    storage law differs from the device charge only by the Gummel-Poon modulation; Φ' = S (central differences)."""
    for out in ("qbc", "qbe"):
        law, S, Phi, _, charge = _law_functions("bjt_common_emitter", out)
        for v in (-3.0, -0.2, -0.05, 0.0, 0.3, 0.37, 0.5, 0.66, 0.72):
            q = charge(0.65, v) if out == "qbc" else charge(v, -4.0)
            tol = 1e-12 * abs(q) + 1e-27 if out == "qbc" else 0.06 * abs(q) + 1e-27
            assert abs(S(v) - q) <= tol, (out, v, S(v), q)
            h = 1e-5
            assert abs((Phi(v + h) - Phi(v - h)) / (2 * h) - S(v)) <= 1e-7 * abs(S(v)) + 1e-22, (out, v)
        assert law.modulated == (out == "qbe")


def test_discrete_gradient_is_the_weighted_mean_voltage():
    """ē(a, b) = (H(S(b)) - H(S(a)))/(S(b) - S(a)) = ∫ v dS / ΔS = (b S(b) - a S(a) - ∫ S dv)/ΔS over [a, b]
    (scipy quadrature of the law, not its Φ), and tends to the junction voltage as b -> a (the guarded midpoint)."""
    from scipy.integrate import quad

    for out in ("qbe", "qbc"):
        _, S, _, dg, _ = _law_functions("bjt_common_emitter", out)
        for a, b in ((0.6, 0.7), (0.65, 0.66), (-1.0, 0.5), (0.3, 0.45), (0.7, 0.62), (-4.0, -3.9)):
            area = quad(S, a, b, epsabs=0, epsrel=1e-13, points=[0.375] if min(a, b) < 0.375 < max(a, b) else None)[0]
            ref = (b * S(b) - a * S(a) - area) / (S(b) - S(a))
            assert abs(dg(a, b) - ref) <= 1e-9 * (1 + abs(b - a)), (out, a, b, dg(a, b), ref)
        _, S, Phi, dg, _ = _law_functions("bjt_common_emitter", out)
        for a in (-2.0, 0.0, 0.4, 0.65):
            for d in (1e-3, 3e-6, 2.4e-6, 1e-9, 0.0):  # across the guard: the midpoint's error, or the quotient's
                # rounding eps (|v S| + |Φ|) / |ΔS| (docs/phs.md, "Nonlinear storage")
                rnd = 0.0 if d < 2.5e-6 else 8 * 2.2e-16 * (abs(a * S(a)) + abs(Phi(a))) / abs(S(a + d) - S(a))
                assert abs(dg(a, a + d) - (a + d / 2)) <= d * d / (12 * 0.0258) + rnd + 1e-15, (out, a, d)


def _signals(fs: float, duration: float) -> dict[str, np.ndarray]:
    sig = standard_signals(fs, duration)
    return {k: sig[k] for k in ("sine", "sweep", "pluck_1V")}


# knob settings as (treble, bass, mid) of the FMV stack and (tone, level) of the TS-808 tone stage
FMV = ("treble", "bass", "mid")
KNOB_CASES = [("fmv_tonestack", FMV, v) for v in ((0.5, 0.5, 0.5), (0.1, 0.9, 0.2), (1.0, 0.0, 1.0))]
KNOB_CASES += [("ts808_tone", ("tone", "level"), v) for v in ((0.5, 0.5), (0.05, 0.9), (0.95, 0.2))]


@pytest.mark.parametrize("stem, knobs, values", KNOB_CASES)
def test_linear_ph_equals_dk(stem: str, knobs: tuple[str, ...], values: tuple[float, ...]):
    """On linear circuits the midpoint discrete gradient is the trapezoidal rule: PH == DK to 1e-9."""
    ph, dk = load(ROOT / "netlists" / f"{stem}.cir", "phs", FS), load(ROOT / "netlists" / f"{stem}.cir", "dk", FS)
    for name, value in zip(knobs, values):
        ph.set_value(name, value)
        dk.set_value(name, value)
    for name, x in _signals(FS, 0.005).items():
        with torch.no_grad():
            y_ph, y_dk = ph(torch.as_tensor(x)), dk(torch.as_tensor(x))
        rel = float((y_ph - y_dk).abs().max() / (y_dk - y_dk[0]).abs().max())
        assert rel < 1e-9, f"{name}: PH - DK = {rel:.2e} relative"


def _balance(path: Path, tmp_path: Path) -> list[tuple[str, float, float]]:
    model = load(path, "phs", FS)
    model.record_energy = True
    out = []
    for name, x in _signals(FS, 0.004).items():
        with torch.no_grad():
            model(torch.as_tensor(x))
        csv = tmp_path / f"{path.stem}.{name}.csv"
        model.last_energy.write_csv(csv)
        assert csv.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
        r = read_csv(csv)
        assert len(r.time_s) == len(x)
        # recompute the residual from the stored energy of the CSV (row 0 is the DC point: no storage flow)
        dH = np.r_[0.0, np.diff(r.stored_J)] / np.r_[1.0, np.diff(r.time_s)]
        res = dH + r.dissipated_W - r.ports_W
        largest = max(np.abs(dH).max(), np.abs(r.dissipated_W).max(), np.abs(r.ports_W).max())
        assert np.allclose(res, r.residual_W, rtol=0, atol=1e-12 * largest)
        out.append((name, float(np.max(np.abs(res)) / largest), float(r.dissipated_W.min())))
    return out


@pytest.mark.parametrize("path", SUPPORTED, ids=lambda p: p.stem)
def test_power_balance_per_sample(path: Path, tmp_path: Path):
    """(H[n] - H[n-1])/T + P_diss - P_ports = 0 on every sample, to 1e-10 of the record's largest power term;
    P_diss >= 0 on every sample."""
    for name, worst, dmin in _balance(path, tmp_path):
        print(f"{path.stem:<24}{name:<10} residual/largest {worst:.2e}  min P_diss {dmin:.3e} W")
        assert worst <= 1e-10, f"{name}: residual {worst:.2e} of the largest power term"
        assert dmin >= 0.0, f"{name}: negative dissipated power {dmin:.3e} W"


def _zero_sources(model: PHSModule) -> None:
    names = {el.name for el in model.topology.sources if el is not None}
    for name, _ in list(model.values()):
        if name in names:
            model.set_value(name, 0.0)


# netlists/ts808.cir models its two op-amps and two emitter followers as ideal VCVS (gain 1e5, no
# rails): active ports that deliver power even with every independent source at 0 (measured: H rises
# by ~10 % from a random state).  There the test checks the passivity inequality ΔH <= T P_ports.
ACTIVE_AT_ZERO_INPUT = {"ts808"}


@pytest.mark.parametrize("path", SUPPORTED, ids=lambda p: p.stem)
def test_passivity_zero_input_random_state(path: Path):
    """With every independent source at 0 and a random initial state, H never increases (ΔH <= T P_ports)."""
    model = load(path, "phs", FS)
    _zero_sources(model)
    model.record_energy = True
    a = model.storage.incidence
    g = torch.Generator().manual_seed(7)
    for trial in range(3):
        # node potentials: a KVL-consistent state; with junction charges 0.2 V rms, so that no junction starts
        # volts into forward bias (amperes and a Newton failure, not a test of passivity)
        scale = 0.2 if model.storage.charges is not None else 1.0
        phi = scale * torch.randn(a.shape[0], generator=g, dtype=torch.float64)
        s0 = (phi @ a).unsqueeze(0)
        with torch.no_grad():
            model.run(torch.zeros(1, 2000, dtype=torch.float64), s_init=s0)
        r = model.last_energy
        H = r.stored_J
        assert H[0] > 0 and H[-1] < H[0]
        rise = np.diff(H)
        tol = 1e-14 * H[0]
        assert np.all(rise <= r.ports_W[1:] / FS + tol), f"trial {trial}: ΔH exceeds the port energy"
        assert r.dissipated_W.min() >= 0.0
        if path.stem not in ACTIVE_AT_ZERO_INPUT:
            assert rise.max() <= tol, f"trial {trial}: H rose by {rise.max():.3e} J (H0 {H[0]:.3e} J)"


# bjt_common_emitter is not listed: its compiled gradient w.r.t. Q2N3904.RC differs from the oracle by 4.3e-6
# relative at a 20 mV input (every other value within 1e-7; at 0.4 V the oracle diverges): RC's normalised
# sensitivity is 3.7e-6 of the largest, and the difference is at the rounding level of the others (docs/phs.md)
@pytest.mark.parametrize("stem", ["diode_clipper", "ts808_clipping", "triode_common_cathode", "fmv_tonestack"])
def test_gradients_match_plain_torch_oracle(stem: str):
    """d(loss)/d(every value, knob and input sample): compiled adjoint == autograd through the torch PH step."""
    model = load(ROOT / "netlists" / f"{stem}.cir", "phs", 96000.0)
    names = [n for n, _ in model.values()]
    params = [p for _, p in model.values()]
    for p in params:
        p.requires_grad_(True)
    n = 80
    x = (0.4 * torch.sin(torch.arange(n, dtype=torch.float64) * 2 * np.pi * 3000 / 96000)).unsqueeze(0)
    x.requires_grad_(True)
    w = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    g_fast = torch.autograd.grad((w * model(x)).sum(), [x, *params], allow_unused=True)
    g_ref = torch.autograd.grad((w * reference_simulate(model, x)).sum(), [x, *params], allow_unused=True)
    checked = 0
    for name, a, b in zip(["input", *names], g_fast, g_ref):
        if b is None or float(b.abs().max()) == 0.0:
            assert a is None or float(a.abs().max()) == 0.0, name
            continue
        rel = float((a - b).abs().max() / b.abs().max())
        assert rel < 1e-7, f"{name}: compiled {a} vs oracle {b} ({rel:.2e})"
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("stem", ["diode_clipper", "triode_common_cathode", "ts808"])
def test_second_order_agreement_with_dk(stem: str):
    """PH - DK falls at second order as the rate doubles (the midpoint and trapezoidal rules differ at O(T²))."""
    path = ROOT / "netlists" / f"{stem}.cir"
    diffs = []
    for k in (2, 4, 8, 16):
        fs = 48000.0 * k
        x = torch.as_tensor(standard_signals(fs, 0.003)["sine"])
        with torch.no_grad():
            diffs.append(float((load(path, "phs", fs)(x) - load(path, "dk", fs)(x)).abs().max()))
    ratios = [a / b for a, b in zip(diffs, diffs[1:])]
    assert all(3.0 < r < 5.5 for r in ratios), (diffs, ratios)


@pytest.mark.parametrize("stem, signal", [("ts808", "pluck_1V"), ("ts808", "sweep"), ("ts808_clipping", "pluck_1V"),
                                          ("bjt_common_emitter", "sweep")])
def test_runs_at_96khz_with_the_power_balance(stem: str, signal: str):
    """The damped step's Newton at 96 kHz (the cases that failed while the damped storage's earlier values were
    Newton unknowns, docs/validation.md): it runs, and the power balance holds to 1e-10 on every sample."""
    model = load(ROOT / "netlists" / f"{stem}.cir", "phs", 96000.0)
    model.record_energy = True
    with torch.no_grad():
        y = model(torch.as_tensor(standard_signals(96000.0, 0.01)[signal]))
    assert torch.isfinite(y).all()
    r = model.last_energy
    largest = max(np.abs(np.diff(r.stored_J) * 96000.0).max(), np.abs(r.dissipated_W).max(), np.abs(r.ports_W).max())
    assert np.abs(r.residual_W).max() <= 1e-10 * largest and r.dissipated_W.min() >= 0.0


def test_streaming_equals_one_call():
    model = load(ROOT / "netlists" / "ts808_clipping.cir", "phs", FS)
    x = torch.as_tensor(_signals(FS, 0.003)["sweep"])
    with torch.no_grad():
        whole = model(x)
        a, st = model.stream(x[:700])
        b, _ = model.stream(x[700:], st)
    assert torch.allclose(torch.cat([a, b]), whole, rtol=0, atol=1e-12)
    batch = torch.stack([x, 0.1 + 0.5 * x.flip(0)])  # batch items start from their own DC points
    with torch.no_grad():
        yb, other = model(batch), model(batch[1])
    assert torch.allclose(yb[0], whole, rtol=0, atol=1e-12) and torch.allclose(yb[1], other, rtol=0, atol=1e-12)


def test_cli_describe_and_energy_report(tmp_path: Path, capsys):
    from circuitsim.audio import write_wav

    net = ROOT / "netlists" / "diode_clipper.cir"
    assert main(["describe", str(net), "--method", "phs"]) == 0
    text = capsys.readouterr().out
    assert "Storage (1)" in text and "Dissipation" in text and "Ports (1)" in text and "J: " in text
    wav = tmp_path / "in.wav"
    write_wav(wav, 0.5 * np.sin(2 * np.pi * 440 * np.arange(240) / 48000), 48000)
    csv, png = tmp_path / "e.csv", tmp_path / "e.png"
    assert main(["simulate", str(net), str(wav), "-o", str(tmp_path / "o.wav"), "--method", "phs",
                 "--oversample", "2", "--energy-report", str(csv), "--energy-plot", str(png), "-q"]) == 0
    r = read_csv(csv)
    assert csv.read_text().splitlines()[0] == "time_s,stored_J,dissipated_W,ports_W,residual_W"
    assert len(r.time_s) >= 480 and png.stat().st_size > 1000
    assert main(["simulate", str(net), str(wav), "-o", str(tmp_path / "o2.wav"), "--method", "dk",
                 "--energy-report", str(tmp_path / "x.csv"), "-q"]) == 2


def test_cli_fit_with_phs_recovers_a_value(tmp_path: Path):
    """fit --method phs through the compiled adjoint: R4 of the FMV stack from a recording made by DK."""
    import soundfile as sf

    fmv = ROOT / "netlists" / "fmv_tonestack.cir"
    fs = 48000.0
    true = load(fmv, "dk", fs)
    true.set_value("R4", 56e3 * 1.3)
    x = np.random.default_rng(2).uniform(-0.5, 0.5, 1200)
    x[0] = 0.0
    with torch.no_grad():
        y = true(torch.as_tensor(x)).numpy()
    pair = tmp_path / "pair.wav"
    sf.write(pair, np.stack([x, y], axis=1), int(fs), subtype="DOUBLE")
    out = tmp_path / "fitted.cir"
    assert main(["fit", str(fmv), "--data", str(pair), "--method", "phs", "--learn", "R4", "--holdout", "0",
                 "-o", str(out), "-q"]) == 0
    fitted = load(out, "phs", fs)
    assert abs(float(fitted.parameter("R4").detach()) / (56e3 * 1.3) - 1) < 1e-6


RESISTIVE_OUTPUT = """VIN in 0 DC 0
R1 in a 2.2k
C1 a 0 10n
D1 a out D1N914
R2 out 0 1k
.model D1N914 D(Is=2.52n N=1.752)"""


def test_output_through_a_nonlinearity_uses_the_second_solve(tmp_path: Path):
    """An output that depends on a device current (across R2, in series with D1) needs PH-3's Newton solve:
    second order against DK, power balance, gradients against the oracle."""
    net = _netlist(tmp_path, RESISTIVE_OUTPUT)
    model = load(net, "phs", 96000.0)
    assert model.ph_matrices()[2].instant_nonlinear
    diffs = []
    for fs in (96000.0, 192000.0):
        x = torch.as_tensor(standard_signals(fs, 0.003)["sine"])
        with torch.no_grad():
            diffs.append(float((load(net, "phs", fs)(x) - load(net, "dk", fs)(x)).abs().max()))
    assert 3.0 < diffs[0] / diffs[1] < 5.5, diffs
    model.record_energy = True
    with torch.no_grad():
        model(torch.as_tensor(standard_signals(96000.0, 0.003)["pluck_1V"]))
    r = model.last_energy
    largest = max(np.abs(r.dissipated_W).max(), np.abs(r.ports_W).max())
    assert np.abs(r.residual_W).max() <= 1e-10 * largest and r.dissipated_W.min() >= 0
    model.record_energy = False
    params = [p.requires_grad_(True) for _, p in model.values()]
    x = (0.8 * torch.sin(torch.arange(60, dtype=torch.float64) * 0.2)).unsqueeze(0).requires_grad_(True)
    g_fast = torch.autograd.grad((model(x) ** 2).sum(), [x, *params], allow_unused=True)
    g_ref = torch.autograd.grad((reference_simulate(model, x) ** 2).sum(), [x, *params], allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        if b is not None and float(b.abs().max()) > 0:
            assert float((a - b).abs().max() / b.abs().max()) < 1e-7
