"""`circuitsim fit`: recover perturbed component values from ngspice-made recordings.

The recordings are made by ngspice (the independent reference) from a copy of a bundled
netlist whose values were changed by 20-50 %; the fit starts from the bundled values.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import circuitsim
from circuitsim.cli import main
from circuitsim.fit import FitData, fit
from circuitsim.fit.report import identifiability, report_text
from circuitsim.netlist.writer import rewrite_values
from circuitsim.spice import simulate_ngspice
from circuitsim.validate import esr

pytestmark = pytest.mark.requires_ngspice

ROOT = Path(__file__).resolve().parents[1]
CLIPPER = ROOT / "netlists" / "diode_clipper.cir"
FS = 48000 * 8  # 48 kHz x 8: the simulation rate of the fits below
TRUE = {"C1": 1.3e-8, "D1N914.IS": 1.5e-9, "D1N914.N": 2.2}  # +30 %, -40 %, +26 % from the netlist


def _ramped_sine(duration: float, fs: float) -> np.ndarray:
    """300 Hz sine whose amplitude grows as t^2 to 4 V: sweeps the diodes from off to hard clipping."""
    t = np.arange(int(duration * fs)) / fs
    return 4.0 * (t / duration) ** 2 * np.sin(2 * np.pi * 300 * t)


def _perturbed(path: Path, values: dict[str, float], out: Path) -> Path:
    model = circuitsim.load(path, method="dk", sample_rate=FS)
    spans = {model.circuit.params[n].span: v for n, v in values.items()}
    out.write_text(rewrite_values(model.circuit.netlist, spans)[model.circuit.netlist.path])
    return out


@pytest.fixture(scope="module")
def clipper_data(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    tmp = tmp_path_factory.mktemp("fit")
    net = _perturbed(CLIPPER, TRUE, tmp / "clipper_true.cir")
    x = _ramped_sine(0.1, FS)
    y = simulate_ngspice(net, x, FS, tmax=1 / (4 * FS))
    return tmp, x, y


def test_lm_recovers_perturbed_clipper_values_from_ngspice(clipper_data):
    _, x, y = clipper_data
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    t0 = time.perf_counter()
    res = fit(model, FitData(x, y, FS, holdout=0.2), learn=["C1", "D1N914.IS", "D1N914.N"], progress=False)
    seconds = time.perf_counter() - t0
    for name, true in TRUE.items():
        assert abs(res.fitted[name] / true - 1) < 1e-3, (name, res.fitted[name], true)
        assert float(model.parameter(name).detach()) == pytest.approx(res.fitted[name], rel=1e-15)
    g = res.groups[0]
    assert g.esr_holdout_before > 1e-3  # the perturbation is visible ...
    assert g.esr_holdout_after <= 1e-6  # ... and gone on audio the fit never saw
    assert seconds <= 60
    assert float(model.parameter("R1").detach()) == 2200.0  # not learned, not touched
    assert identifiability(res) == []  # C, IS and N are all determined by this signal


def test_adam_reduces_loss_through_the_compiled_adjoint(clipper_data):
    tmp, _, _ = clipper_data
    x = _ramped_sine(0.025, FS)
    y = simulate_ngspice(tmp / "clipper_true.cir", x, FS, tmax=1 / (4 * FS))
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    res = fit(model, FitData(x, y, FS, holdout=0.0), learn=list(TRUE), optimizer="adam", steps=40, lr=0.05,
              progress=False)
    g = res.groups[0]
    assert g.esr_train_after < 1e-3 * g.esr_train_before
    assert abs(res.fitted["C1"] / TRUE["C1"] - 1) < 0.05  # C1 started 23 % low


def test_impedance_scaling_is_named_when_r_c_and_is_are_free(clipper_data):
    tmp, _, _ = clipper_data
    x = _ramped_sine(0.04, FS)
    y = simulate_ngspice(CLIPPER, x, FS, tmax=1 / (4 * FS))  # nominal values; start C1 off by 20 %
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    model.set_value("C1", 1.2e-8)
    res = fit(model, FitData(x, y, FS), learn=["R1", "C1", "D1N914.IS"], progress=False)
    dirs = identifiability(res)
    assert len(dirs) == 1
    w = dirs[0].weights
    assert set(w) == {"R1", "C1", "D1N914.IS"}
    # R*k, C/k, IS/k: R's log moves against C's and IS's, all by the same amount
    assert np.sign(w["R1"]) == -np.sign(w["C1"]) == -np.sign(w["D1N914.IS"])
    assert all(abs(abs(c) - 1) < 0.05 for c in w.values())
    assert "impedance scaling" in report_text(res)
    # whatever the drift along that direction, the products R*C and R*IS are what the data fix
    assert res.fitted["R1"] * res.fitted["C1"] == pytest.approx(2200 * 1e-8, rel=1e-3)
    assert res.fitted["R1"] * res.fitted["D1N914.IS"] == pytest.approx(2200 * 2.52e-9, rel=1e-3)


def test_cli_fit_writes_netlist_and_report_and_simulate_reproduces_esr(clipper_data, capsys):
    tmp, x, y = clipper_data
    pair = tmp / "pair.wav"
    sf.write(pair, np.stack([x, y], axis=1), FS, subtype="DOUBLE")
    sf.write(tmp / "in.wav", x, FS, subtype="DOUBLE")
    out = tmp / "fitted.cir"
    rc = main(["fit", str(CLIPPER), "--data", str(pair), "--freeze", "R1", "--learn", "C1,D1N914.IS,D1N914.N",
               "-o", str(out), "--report-dir", str(tmp / "rep"), "-q"])
    assert rc == 0
    assert (tmp / "rep" / "comparison.png").stat().st_size > 1000
    fitted = circuitsim.load(out, method="dk", sample_rate=FS)
    for name, true in TRUE.items():
        assert abs(float(fitted.parameter(name).detach()) / true - 1) < 1e-3
    # only the three numbers changed: every other line of the netlist is as it was
    old, new = CLIPPER.read_text().splitlines(), out.read_text().splitlines()
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 2  # C1 line and .model line
    report = (tmp / "rep" / "report.txt").read_text()
    held = float(re.search(r"pair\.wav\s+-\s+\S+\s+\S+\s+\S+\s+(\S+)", report).group(1))
    # round trip: the fitted netlist through `circuitsim simulate` gives the reported held-out ESR
    # at the recording's rate, as the fit simulated it (simulate oversamples nonlinear circuits x8 by default)
    assert main(["simulate", str(out), str(tmp / "in.wav"), "-o", str(tmp / "out.wav"), "--oversample", "1",
                 "-q"]) == 0
    z, _ = sf.read(tmp / "out.wav", dtype="float64")
    split = len(x) - int(round(0.2 * len(x)))
    assert esr(z[split:], y[split:]) == pytest.approx(held, rel=0.01)
    assert held <= 1e-6
    # refuses to overwrite, and names a bad value in one line
    assert main(["fit", str(CLIPPER), "--data", str(pair), "-o", str(out), "-q"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["fit", str(CLIPPER), "--data", str(pair), "--learn", "R9", "-o", str(tmp / "x.cir"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "R9" in err and len(err.strip().splitlines()) == 1


def test_cli_fits_fmv_tone_stack_from_three_treble_settings(tmp_path):
    """R4, C2, C3 shared by three recordings at different treble settings; C1 frozen (docs/fitting.md)."""
    fmv = ROOT / "netlists" / "fmv_tonestack.cir"
    true = {"R4": 56e3 * 1.3, "C2": 20e-9 * 0.7, "C3": 20e-9 * 1.45}
    net = _perturbed(fmv, true, tmp_path / "fmv_true.cir")
    x = np.random.default_rng(1).uniform(-1, 1, int(0.03 * FS))
    x[0] = 0.0
    args = ["fit", str(fmv), "--freeze", "C1", "-o", str(tmp_path / "fmv.fitted.cir"), "-q"]
    for treble in (0.2, 0.5, 0.8):
        y = simulate_ngspice(net, x, FS, tmax=1 / (4 * FS), params={"treble": treble})
        sf.write(tmp_path / f"t{treble}.wav", np.stack([x, y], axis=1), FS, subtype="DOUBLE")
        args += ["--data", str(tmp_path / f"t{treble}.wav"), "--set", f"treble={treble}"]
    t0 = time.perf_counter()
    assert main(args) == 0
    assert time.perf_counter() - t0 < 60
    fitted = circuitsim.load(tmp_path / "fmv.fitted.cir", method="dk", sample_rate=FS)
    for name, value in true.items():
        assert abs(float(fitted.parameter(name).detach()) / value - 1) < 1e-3, name
    assert float(fitted.parameter("C1").detach()) == 250e-12
    report = (tmp_path / "fmv.fitted.report" / "report.txt").read_text()
    assert "treble=0.2" in report and "treble=0.8" in report


def test_finite_difference_jacobian_agrees_with_compiled_adjoint_and_segments_fit(clipper_data):
    """LM's Jacobian (central differences) against the adjoint gradient: d(r.r)/dtheta = 2 J^T r."""
    from circuitsim.fit.trainer import _Problem

    _, x, y = clipper_data
    n = len(x) // 5
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    data = [FitData(x[-n:], y[-n:], FS, holdout=0.0)]
    prob = _Problem([model], data, list(TRUE), 1, None, 0, 0.85, 0.0, 0.0)
    theta = prob.to_theta(prob.initial)
    r = prob.residuals(theta)
    _, grad = prob.loss_and_grad(theta)
    np.testing.assert_allclose(2 * prob.jacobian(theta).T @ r, grad, rtol=1e-5)
    # segments of 10 ms with 5 ms burn-in (a batch through the compiled core) still identify the values
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    res = fit(model, FitData(x, y, FS), learn=list(TRUE), segment=int(0.01 * FS), burn_in=int(0.005 * FS),
              progress=False)
    for name, true in TRUE.items():
        assert abs(res.fitted[name] / true - 1) < 1e-3, name


def test_bad_inputs_give_clear_errors(tmp_path, clipper_data, capsys):
    _, x, _ = clipper_data
    sf.write(tmp_path / "mono.wav", x[:1000], FS, subtype="DOUBLE")
    assert main(["fit", str(CLIPPER), "--data", str(tmp_path / "mono.wav"), "-o", str(tmp_path / "f.cir")]) == 2
    assert "2 channels" in capsys.readouterr().err
    assert main(["fit", str(CLIPPER), "-o", str(tmp_path / "f.cir")]) == 2
    assert "no recordings" in capsys.readouterr().err
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    with pytest.raises(ValueError, match="expected 48000 Hz x 1"):
        fit(model, FitData(x[:100], x[:100], 48000), learn=["C1"], progress=False)
    with pytest.raises(KeyError, match="no value named 'C9'"):
        fit(model, FitData(x[:100], x[:100], FS), learn=["C9"], progress=False)
    assert not (tmp_path / "f.cir").exists()


def test_cli_refuses_values_in_include_files_before_fitting(tmp_path, clipper_data, capsys, monkeypatch):
    """A learned value defined in an .include file cannot be written back: one line, before any simulation."""
    _, x, y = clipper_data
    (tmp_path / "models.lib").write_text(".model D1N914 D(Is=2.52n N=1.752)\n")
    main_net = tmp_path / "main.cir"
    main_net.write_text(
        "* clipper with its diode model in an include file\nVIN in 0 DC 0\nR1 in out 2.2k\nC1 out 0 10n\n"
        "D1 out 0 D1N914\nD2 0 out D1N914\n.include models.lib\n.end\n")
    pair = tmp_path / "pair.wav"
    sf.write(pair, np.stack([x[:4000], y[:4000]], axis=1), FS, subtype="DOUBLE")

    def no_fit(*args, **kwargs):  # the refusal must come before fitting starts
        raise AssertionError("fit() was called")

    monkeypatch.setattr("circuitsim.fit.fit", no_fit)
    out = tmp_path / "f.cir"
    for learn in (["--learn", "C1,D1N914.IS"], []):  # explicit, and the default (every R, C, IS, N)
        assert main(["fit", str(main_net), "--data", str(pair), *learn, "-o", str(out), "-q"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert "D1N914.IS" in err or "D1N914.N" in err
        assert "models.lib" in err
        assert not out.exists()
    # freezing the include's values lets the fit run (and write the main file only)
    monkeypatch.undo()
    assert main(["fit", str(main_net), "--data", str(pair), "--learn", "C1", "--freeze", "D1N914.IS,D1N914.N",
                 "-o", str(out), "-q"]) == 0
    assert out.exists() and (tmp_path / "models.lib").read_text() == ".model D1N914 D(Is=2.52n N=1.752)\n"


def _iec_a_weighting_db(f: np.ndarray) -> np.ndarray:
    """A(f) of IEC 61672-1:2013 eq. (E.6)/(E.7), written out independently of circuitsim.fit.losses."""
    f1, f2, f3, f4 = 20.598997, 107.65265, 737.86223, 12194.217
    ra = f4**2 * f**4 / ((f**2 + f1**2) * np.sqrt((f**2 + f2**2) * (f**2 + f3**2)) * (f**2 + f4**2))
    return 20 * np.log10(ra) + 2.00  # A1000 = -2.00 dB normalises the curve to 0 dB at 1 kHz


def test_a_weighting_pre_emphasis_matches_the_iec_curve():
    """Measured response of the filter (a swept sinusoid through it) against IEC 61672-1's curve and table."""
    import torch

    from circuitsim.fit.losses import a_weighting, check_emphasis

    # IEC 61672-1 Table 3, nominal A-weighting (dB), rounded to 0.1 dB there
    table = {31.5: -39.4, 50: -30.2, 100: -19.1, 250: -8.6, 1000: 0.0, 2000: 1.2, 4000: 1.0, 10000: -2.5}
    for fs, f_max, tol in ((48000, 4000, 0.1), (384000, 10000, 0.05)):  # bilinear warping grows near fs/2
        for f, nominal in table.items():
            n = int(fs * 1.0)  # 1 s of a steady sine: measure the gain of the last 0.25 s
            t = np.arange(n) / fs
            y = a_weighting(torch.tensor(np.sin(2 * np.pi * f * t)), fs).numpy()
            basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)[-n // 4:]
            coef = np.linalg.lstsq(basis, y[-n // 4:], rcond=None)[0]  # steady-state amplitude
            gain_db = 20 * np.log10(np.hypot(*coef))
            if f <= f_max:
                assert gain_db == pytest.approx(_iec_a_weighting_db(np.array(f)), abs=tol), (fs, f)
                # the table is at nominal frequencies (31.5 for 10**1.5 Hz) and rounded to 0.1 dB
                assert gain_db == pytest.approx(nominal, abs=0.2), (fs, f)
    assert check_emphasis("aw") == "aw" and check_emphasis("0.85") == 0.85
    with pytest.raises(ValueError, match="'xyz'"):
        check_emphasis("xyz")


def test_a_weighting_adjoint_and_fit_with_it(clipper_data):
    """The filter's backward pass against autograd's numerical gradient; LM and Adam fits with emphasis="aw"."""
    import torch

    from circuitsim.fit.losses import a_weighting

    x = torch.tensor(np.random.default_rng(3).normal(size=(2, 64)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: a_weighting(v, 8000.0), (x,))
    _, x, y = clipper_data
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    res = fit(model, FitData(x, y, FS), learn=list(TRUE), emphasis="aw", progress=False)
    for name, true in TRUE.items():
        assert abs(res.fitted[name] / true - 1) < 1e-3, name
    assert res.groups[0].esr_holdout_after <= 1e-6
    n = int(0.025 * FS)
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    res = fit(model, FitData(x[:n], y[:n], FS, holdout=0.0), learn=list(TRUE), optimizer="adam", steps=30, lr=0.05,
              emphasis="aw", progress=False)
    assert res.groups[0].esr_train_after < 1e-2 * res.groups[0].esr_train_before


def test_cli_pre_emphasis_aw_and_bad_value(clipper_data, tmp_path, capsys):
    _, x, y = clipper_data
    pair = tmp_path / "pair.wav"
    sf.write(pair, np.stack([x, y], axis=1), FS, subtype="DOUBLE")
    out = tmp_path / "aw.cir"
    assert main(["fit", str(CLIPPER), "--data", str(pair), "--learn", "C1,D1N914.IS,D1N914.N",
                 "--pre-emphasis", "aw", "-o", str(out), "-q"]) == 0
    fitted = circuitsim.load(out, method="dk", sample_rate=FS)
    for name, true in TRUE.items():
        assert abs(float(fitted.parameter(name).detach()) / true - 1) < 1e-3, name
    assert main(["fit", str(CLIPPER), "--data", str(pair), "--pre-emphasis", "loud", "-o", str(tmp_path / "b.cir"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert "loud" in err and len(err.strip().splitlines()) == 1


LEVEL = 0.37  # the unknown level of the "recording": ngspice's output times this


def test_learned_output_gain_recovers_an_unknown_recording_level(clipper_data):
    """ngspice's clipper output scaled by 0.37: with learn_gain the level and the values are recovered."""
    from circuitsim.fit.trainer import _Problem

    _, x, y = clipper_data
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    res = fit(model, FitData(x, LEVEL * y, FS, holdout=0.2), learn=list(TRUE), learn_gain=True, progress=False)
    assert res.gain == pytest.approx(LEVEL, rel=1e-3)
    for name, true in TRUE.items():
        assert abs(res.fitted[name] / true - 1) < 1e-3, (name, res.fitted[name], true)
    held = res.groups[0].esr_holdout_after
    assert held <= 1e-6
    assert identifiability(res) == []  # the gain is determined too (Jacobian has a 4th column)
    assert res.jacobian.shape[1] == 4 and res.columns[-1] == "output gain"
    text = report_text(res)
    assert float(re.search(r"output gain\s+\S+\s+(\S+)", text).group(1)) == pytest.approx(LEVEL, rel=1e-3)
    # the gain is not written into the model: it simulates the unscaled circuit
    import torch

    with torch.no_grad():
        z = model(torch.tensor(x[None, :]))[0].numpy()
    assert esr(z, y) <= 1e-6
    # without the gain no set of values reaches the held-out ESR (a clipper's small-signal gain is 1)
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    res0 = fit(model, FitData(x, LEVEL * y, FS, holdout=0.2), learn=list(TRUE), progress=False)
    assert res0.gain is None and "output gain" not in report_text(res0)
    assert res0.groups[0].esr_holdout_after > 1e3 * held
    # the adjoint gradient of the gain's log (Adam) against LM's finite-difference Jacobian column
    n = len(x) // 5
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    prob = _Problem([model], [FitData(x[-n:], LEVEL * y[-n:], FS, holdout=0.0)], list(TRUE), 1, None, 0, 0.85,
                    0.5, 0.0, learn_gain=True)
    theta = prob.initial_theta()
    theta[-1] += 0.1  # away from the least-squares gain, where d/dlog g of the ESR part is zero
    r = prob.residuals(theta)
    _, grad = prob.loss_and_grad(theta)
    np.testing.assert_allclose(2 * prob.jacobian(theta).T @ r, grad, rtol=1e-5)


def test_adam_learns_the_output_gain(clipper_data):
    tmp, _, _ = clipper_data
    x = _ramped_sine(0.025, FS)
    y = LEVEL * simulate_ngspice(tmp / "clipper_true.cir", x, FS, tmax=1 / (4 * FS))
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
    res = fit(model, FitData(x, y, FS, holdout=0.0), learn=list(TRUE), optimizer="adam", steps=40, lr=0.05,
              learn_gain=True, progress=False)
    g = res.groups[0]
    assert g.esr_train_after < 1e-2 * g.esr_train_before
    assert res.gain == pytest.approx(LEVEL, rel=5e-3)


def test_cli_learn_gain_and_loss_weights_reach_the_trainer(clipper_data, tmp_path, capsys, monkeypatch):
    import circuitsim.fit as fit_pkg
    from circuitsim.fit.losses import dc_loss, stft_loss

    tmp, x, y = clipper_data
    seen = []

    def spy(*args, **kwargs):
        res = fit(*args, **kwargs)
        seen.append((kwargs, res))
        return res

    monkeypatch.setattr(fit_pkg, "fit", spy)
    pair = tmp_path / "pair.wav"
    sf.write(pair, np.stack([x, LEVEL * y], axis=1), FS, subtype="DOUBLE")
    out = tmp_path / "gain.cir"
    assert main(["fit", str(CLIPPER), "--data", str(pair), "--learn", "C1,D1N914.IS,D1N914.N", "--learn-gain",
                 "--dc-weight", "1", "-o", str(out), "-q"]) == 0
    kwargs, res = seen[-1]
    assert kwargs["learn_gain"] is True and kwargs["dc_weight"] == 1.0 and kwargs["stft_weight"] == 0.0
    fitted = circuitsim.load(out, method="dk", sample_rate=FS)
    for name, true in TRUE.items():
        assert abs(float(fitted.parameter(name).detach()) / true - 1) < 1e-3, name
    report = (tmp_path / "gain.report" / "report.txt").read_text()
    assert float(re.search(r"output gain\s+\S+\s+(\S+)", report).group(1)) == pytest.approx(LEVEL, rel=1e-3)
    old, new = CLIPPER.read_text().splitlines(), out.read_text().splitlines()
    assert sum(a != b for a, b in zip(old, new)) == 2  # C1 and the .model line: no gain in the netlist
    # Adam with the STFT and DC terms: the first loss is ESR + w_stft * STFT + w_dc * DC at the start
    n = int(0.02 * FS)
    sf.write(pair, np.stack([x[:n], y[:n]], axis=1), FS, subtype="DOUBLE")
    assert main(["fit", str(CLIPPER), "--data", str(pair), "--learn", "C1,D1N914.IS,D1N914.N", "--optimizer",
                 "adam", "--steps", "25", "--lr", "0.05", "--stft-weight", "0.1", "--dc-weight", "0.5",
                 "--holdout", "0", "-o", str(tmp_path / "stft.cir"), "-q"]) == 0
    kwargs, res = seen[-1]
    g = res.groups[0]
    import torch

    yb, ref = torch.tensor(g.output_before[None, :]), torch.tensor(y[None, :n])
    expected = g.esr_train_before + 0.1 * float(stft_loss(yb, ref)) + 0.5 * float(dc_loss(yb, ref))
    assert float(stft_loss(yb, ref)) > 0.1 * g.esr_train_before  # the STFT term is a visible part of the loss
    assert res.history[0] == pytest.approx(expected, rel=1e-6)
    assert min(res.history) < 0.1 * res.history[0]
    # STFT with LM: one line telling the user to pick Adam, before any file is read
    assert main(["fit", str(CLIPPER), "--data", str(pair), "--stft-weight", "0.1", "-o",
                 str(tmp_path / "lm.cir"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--optimizer adam" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lm.cir").exists()


# ---------------------------------------------------------------- oversampled fits (issue 12)

CLIPPER2 = Path(__file__).parent / "data" / "netlists" / "clipper2.cir"
TRUE2 = {"C1": 470e-9 * 1.30, "C2": 10e-9 * 0.75, "D1N914.IS": 2.52e-9 * 0.60, "D1N914.N": 1.752 * 1.26}


def test_decimator_is_audio_decimate_and_its_backward_is_the_transpose():
    """The fit scores with the same libsoxr filter as `simulate --oversample`; Adam's gradient is its transpose."""
    import torch

    from circuitsim.audio import decimate
    from circuitsim.fit.data import START_UP_OUTPUTS, Decimator

    rng = np.random.default_rng(5)
    y = torch.tensor(rng.standard_normal((2, 8 * 3000 + 3)), requires_grad=True)
    z = Decimator(8)(y)
    assert np.array_equal(z.detach().numpy(), decimate(y.detach().numpy(), 8, axis=-1))
    g = rng.standard_normal(z.shape)
    g[:, :START_UP_OUTPUTS] = 0.0  # libsoxr's start-up outputs are not the steady filter (documented)
    (z * torch.tensor(g)).sum().backward()
    # <D y, g> = <y, D^T g> for a second, independent y
    y2 = rng.standard_normal(y.shape)
    lhs = float(np.sum(decimate(y2, 8, axis=-1) * g))
    assert float(np.sum(y2 * y.grad.numpy())) == pytest.approx(lhs, rel=1e-8)


def test_oversampled_training_rows_score_what_the_whole_recording_shows():
    """Training rows are cut from the oversampled whole recording and run past the split by the decimator's reach:
    their decimated output equals the whole file's on the training part (no resampler edge at the split)."""
    import torch

    from circuitsim.audio import decimate, oversample
    from circuitsim.fit.trainer import _Problem

    fs, up = 48000, 8
    x = _ramped_sine(0.02, fs)
    model = circuitsim.load(CLIPPER, method="dk", sample_rate=fs * up)
    data = FitData(x, np.zeros_like(x), fs, holdout=0.3)
    prob = _Problem([model], [data], ["C1"], up, None, 0, 0.0, 0.0, 0.0)
    with torch.no_grad():
        rows = prob.outputs(0)[0].numpy()
        whole = decimate(model(torch.tensor(oversample(x, up)[None, :]))[0].numpy(), up)
    assert len(rows) == data.split
    assert np.max(np.abs(rows - whole[: data.split])) <= 1e-12 * np.max(np.abs(whole))
    # the old way, upsampling and decimating the training part on its own, is visibly off at its end
    with torch.no_grad():
        alone = decimate(model(torch.tensor(oversample(x[: data.split], up)[None, :]))[0].numpy(), up)
    assert np.max(np.abs(alone - whole[: data.split])) > 1e-4 * np.max(np.abs(whole))


def test_second_order_clipper_fit_at_x8_from_ngspice_recovers_four_values(tmp_path):
    """Series C, shunt C, IS, N from a 48 kHz recording made by ngspice at 384 kHz, fitted at x8; the held-out tail
    continues the state of the training part (the coupling capacitor discharges through off diodes for seconds)."""
    from circuitsim.audio import decimate, oversample

    fs, up = 48000, 8
    nominal = tmp_path / "clipper2.cir"
    nominal.write_text(CLIPPER2.read_text())
    model = circuitsim.load(nominal, method="dk", sample_rate=fs * up)
    spans = {model.circuit.params[n].span: v for n, v in TRUE2.items()}
    true_net = tmp_path / "clipper2_true.cir"
    true_net.write_text(rewrite_values(model.circuit.netlist, spans)[model.circuit.netlist.path])
    x = _ramped_sine(0.1, fs)
    y = decimate(simulate_ngspice(true_net, oversample(x, up), fs * up, tmax=1 / (4 * fs * up)), up)
    res = fit(model, FitData(x, y, fs, holdout=0.2), learn=list(TRUE2), oversample=up, progress=False)
    for name, true in TRUE2.items():
        assert abs(res.fitted[name] / true - 1) < 1e-3, (name, res.fitted[name], true)
    g = res.groups[0]
    assert g.esr_holdout_before > 1e-2
    assert g.esr_holdout_after <= 10 * max(g.esr_train_after, 1e-12), g
    assert g.esr_holdout_after <= 1e-8


def test_burn_in_of_a_whole_recording_that_does_not_start_at_rest(clipper_data):
    """A recording cut out of a longer one starts with the capacitor charged: scoring it only after a burn-in
    (the state settles from the DC point within it) recovers the values; scoring from the first sample cannot."""
    _, x, y = clipper_data
    cut = int(0.055 * FS)  # mid-note: the input and the capacitor are far from their DC point
    xs, ys = x[cut:], y[cut:]
    errors = {}
    for burn in (0, int(0.002 * FS)):
        model = circuitsim.load(CLIPPER, method="dk", sample_rate=FS)
        res = fit(model, FitData(xs, ys, FS, holdout=0.0), learn=list(TRUE), burn_in=burn, progress=False)
        errors[burn] = max(abs(res.fitted[n] / v - 1) for n, v in TRUE.items())
    assert errors[int(0.002 * FS)] < 1e-4
    assert errors[0] > 3 * errors[int(0.002 * FS)]  # measured: 3.3e-4 without, 5.7e-5 with the 2 ms burn-in
