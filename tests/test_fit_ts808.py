"""Acceptance: recover the perturbed values of the TS-808 clipping stage from ngspice data at 3 drive settings.

A copy of ``netlists/ts808_clipping.cir`` with C2, R4, C3, R6, C4 and the 1N914's IS and N
changed by 20-40 % is simulated by ngspice (the independent reference) at drive 0.2, 0.5
and 0.8; one model per setting, sharing its component values, is fitted from the bundled
(nominal) values.  The fitted values must reproduce ngspice on the held-out tails and at a
fourth drive setting (0.65) on a signal the fit never saw.  The drive pot is a fixed
``{expression}``, so it pins the impedance level: no value has to be frozen (R5, the bias
resistor, is simply not perturbed and not learned).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import circuitsim
from circuitsim.fit import FitData, fit
from circuitsim.fit.report import identifiability, report_text
from circuitsim.netlist.writer import rewrite_values
from circuitsim.spice import simulate_ngspice
from circuitsim.validate import esr

pytestmark = pytest.mark.requires_ngspice

TS808 = Path(__file__).resolve().parents[1] / "netlists" / "ts808_clipping.cir"
FS = 48000 * 8  # simulate directly at the oversampled rate, 384 kHz
NOMINAL = {"C2": 1e-6, "R4": 4.7e3, "C3": 47e-9, "R6": 51e3, "C4": 51e-12, "D1N914.IS": 2.52e-9, "D1N914.N": 1.752}
CHANGE = {"C2": -0.30, "R4": +0.30, "C3": +0.40, "R6": -0.25, "C4": +0.35, "D1N914.IS": -0.40, "D1N914.N": +0.25}
TRUE = {n: v * (1 + CHANGE[n]) for n, v in NOMINAL.items()}
TRAIN_DRIVES = (0.2, 0.5, 0.8)
TEST_DRIVE = 0.65


def _ramp(duration: float, freq: float, peak: float, fs: float) -> np.ndarray:
    """Sine (volts) whose amplitude grows as t^2 to ``peak``: the diodes go from off (linear filtering) to clipping."""
    t = np.arange(int(round(duration * fs))) / fs
    return peak * (t / duration) ** 2 * np.sin(2 * np.pi * freq * t)


def _plucks(duration: float, fs: float) -> np.ndarray:
    """Three decaying two-tone plucks at 0.05, 0.3 and 1 V: a signal the fit never saw."""
    t = np.arange(int(round(duration * fs))) / fs
    x = np.zeros_like(t)
    for start, level in zip((0.0, duration / 3, 2 * duration / 3), (0.05, 0.3, 1.0)):
        tau = np.clip(t - start, 0, None)
        x += (t >= start) * level * np.exp(-tau / 0.004) * (np.sin(2 * np.pi * 196 * tau) + 0.5 * np.sin(
            2 * np.pi * 1500 * tau))
    return x


@pytest.fixture(scope="module")
def true_netlist(tmp_path_factory) -> Path:
    model = circuitsim.load(TS808, method="dk", sample_rate=FS, params={"drive": 0.5})
    spans = {model.circuit.params[n].span: v for n, v in TRUE.items()}
    out = tmp_path_factory.mktemp("ts808") / "ts808_true.cir"
    out.write_text(rewrite_values(model.circuit.netlist, spans)[model.circuit.netlist.path])
    return out


def test_ts808_joint_fit_over_three_drive_settings_generalises_to_a_fourth(true_netlist):
    x = _ramp(0.02, 700.0, 1.0, FS)
    data = [FitData(x, simulate_ngspice(true_netlist, x, FS, tmax=1 / (4 * FS), params={"drive": d}), FS,
                    params={"drive": d}, name=f"drive={d}", holdout=0.2) for d in TRAIN_DRIVES]
    models = [circuitsim.load(TS808, method="dk", sample_rate=FS, params={"drive": d}) for d in TRAIN_DRIVES]
    t0 = time.perf_counter()
    res = fit(models, data, learn=list(TRUE), progress=False)
    seconds = time.perf_counter() - t0
    print(report_text(res))
    print(f"fit: {seconds:.1f} s")
    assert identifiability(res) == []  # the fixed drive pot pins the impedance level: nothing to freeze
    for name, true in TRUE.items():
        assert abs(res.fitted[name] / true - 1) < 1e-2, (name, res.fitted[name], true)
        for m in models:  # every model shares the fitted values
            assert float(m.parameter(name).detach()) == pytest.approx(res.fitted[name], rel=1e-15)
    for g in res.groups:
        assert g.esr_holdout_before > 1e-2  # the perturbation is clearly audible ...
        assert g.esr_holdout_after <= 1e-3, g  # ... and gone on the held-out tails
    assert seconds < 90

    # a fourth drive setting and a different signal: fresh ngspice data against the fitted values
    xt = _plucks(0.03, FS)
    ref = simulate_ngspice(true_netlist, xt, FS, tmax=1 / (4 * FS), params={"drive": TEST_DRIVE})
    fitted = circuitsim.load(TS808, method="dk", sample_rate=FS, params={"drive": TEST_DRIVE})
    nominal_out = fitted(xt).detach().numpy()
    for name, value in res.fitted.items():
        fitted.set_value(name, value)
    out = fitted(xt).detach().numpy()
    e_before, e_after = esr(nominal_out, ref), esr(out, ref)
    print(f"drive={TEST_DRIVE}: ESR nominal {e_before:.3e}, fitted {e_after:.3e}")
    assert e_before > 1e-2
    assert e_after <= 1e-3
