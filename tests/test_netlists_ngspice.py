"""Every reference netlist in netlists/ runs in ngspice through the harness and behaves as its sources say.

Signals are the standard ones at 48 kHz x 8, 20 ms.  Beyond "finite and plausible", two
netlists are checked against independent results: the FMV tone stack against Yeh & Smith's
published transfer function (DAFx-06) and the diode clipper against an RK4 integration of its
ODE; the triode's DC point against a direct solution of the Koren equations (netlists/README.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal

from circuitsim.signals import sine, standard_signals
from circuitsim.spice import operating_point_ngspice, simulate_ngspice

pytestmark = pytest.mark.requires_ngspice

NETLISTS = Path(__file__).resolve().parent.parent / "netlists"
FS = 48000.0 * 8
DURATION = 0.02
VT = 1.38064852e-23 * 300.15 / 1.6021766208e-19  # ngspice const.h, 27 C

ALL = sorted(p.stem for p in NETLISTS.glob("*.cir"))
EXPECTED = {
    "fmv_tonestack", "diode_clipper", "ts808_clipping", "ts808_tone", "bjt_common_emitter",
    "triode_common_cathode",
}


@pytest.fixture(scope="module")
def signals():
    return standard_signals(FS, DURATION)


def path(name: str) -> Path:
    return NETLISTS / f"{name}.cir"


def amplitude(y: np.ndarray, f0: float, fs: float = FS, cycles: int = 4) -> float:
    """Amplitude of the f0 component over the last ``cycles`` periods (volts)."""
    n = int(round(cycles * fs / f0))
    t = np.arange(len(y))[-n:] / fs
    seg = y[-n:] - np.mean(y[-n:])
    w = 2 * np.pi * f0 * t
    return 2 * math.hypot(np.mean(seg * np.cos(w)), np.mean(seg * np.sin(w)))


def test_all_reference_netlists_present():
    assert EXPECTED <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_netlist_runs_and_starts_at_its_operating_point(name, signals):
    text = path(name).read_text()
    assert text.startswith("*"), "each netlist begins with a comment block citing its sources"
    op = operating_point_ngspice(path(name))
    assert "in" in op and "out" in op and op["in"] == 0.0
    x = signals["pluck_300mV"]
    y = simulate_ngspice(path(name), x, FS)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    assert y[0] == pytest.approx(op["out"], abs=1e-6)  # the transient starts from the DC point
    assert 1e-4 < np.max(np.abs(y - y[0])) < 200.0  # it responds, within any supply in these circuits


# ---------------------------------------------------------------- FMV tone stack vs Yeh & Smith


def fmv_transfer_function(t: float, l: float, m: float):
    """Yeh & Smith, DAFx-06, eq. (1)-(2): H(s) = (b1 s + b2 s^2 + b3 s^3)/(1 + a1 s + a2 s^2 + a3 s^3)."""
    C1, C2, C3, R1, R2, R3, R4 = 250e-12, 20e-9, 20e-9, 250e3, 1e6, 25e3, 56e3
    b1 = t * C1 * R1 + m * C3 * R3 + l * (C1 * R2 + C2 * R2) + (C1 * R3 + C2 * R3)
    b2 = (t * (C1 * C2 * R1 * R4 + C1 * C3 * R1 * R4) - m**2 * (C1 * C3 * R3**2 + C2 * C3 * R3**2)
          + m * (C1 * C3 * R1 * R3 + C1 * C3 * R3**2 + C2 * C3 * R3**2)
          + l * (C1 * C2 * R1 * R2 + C1 * C2 * R2 * R4 + C1 * C3 * R2 * R4)
          + l * m * (C1 * C3 * R2 * R3 + C2 * C3 * R2 * R3)
          + (C1 * C2 * R1 * R3 + C1 * C2 * R3 * R4 + C1 * C3 * R3 * R4))
    b3 = (l * m * (C1 * C2 * C3 * R1 * R2 * R3 + C1 * C2 * C3 * R2 * R3 * R4)
          - m**2 * (C1 * C2 * C3 * R1 * R3**2 + C1 * C2 * C3 * R3**2 * R4)
          + m * (C1 * C2 * C3 * R1 * R3**2 + C1 * C2 * C3 * R3**2 * R4)
          + t * C1 * C2 * C3 * R1 * R3 * R4 - t * m * C1 * C2 * C3 * R1 * R3 * R4
          + t * l * C1 * C2 * C3 * R1 * R2 * R4)
    a1 = (C1 * R1 + C1 * R3 + C2 * R3 + C2 * R4 + C3 * R4) + m * C3 * R3 + l * (C1 * R2 + C2 * R2)
    a2 = (m * (C1 * C3 * R1 * R3 - C2 * C3 * R3 * R4 + C1 * C3 * R3**2 + C2 * C3 * R3**2)
          + l * m * (C1 * C3 * R2 * R3 + C2 * C3 * R2 * R3) - m**2 * (C1 * C3 * R3**2 + C2 * C3 * R3**2)
          + l * (C1 * C2 * R2 * R4 + C1 * C2 * R1 * R2 + C1 * C3 * R2 * R4 + C2 * C3 * R2 * R4)
          + (C1 * C2 * R1 * R4 + C1 * C3 * R1 * R4 + C1 * C2 * R3 * R4 + C1 * C2 * R1 * R3
             + C1 * C3 * R3 * R4 + C2 * C3 * R3 * R4))
    a3 = (l * m * (C1 * C2 * C3 * R1 * R2 * R3 + C1 * C2 * C3 * R2 * R3 * R4)
          - m**2 * (C1 * C2 * C3 * R1 * R3**2 + C1 * C2 * C3 * R3**2 * R4)
          + m * (C1 * C2 * C3 * R3**2 * R4 + C1 * C2 * C3 * R1 * R3**2 - C1 * C2 * C3 * R1 * R3 * R4)
          + l * C1 * C2 * C3 * R1 * R2 * R4 + C1 * C2 * C3 * R1 * R3 * R4)
    return [b3, b2, b1, 0.0], [a3, a2, a1, 1.0]


@pytest.mark.parametrize(("treble", "bass", "mid"), [(0.5, 0.5, 0.5), (0.2, 0.9, 0.3)])
def test_fmv_tonestack_matches_yeh_smith(signals, treble, bass, mid):
    """lsim with linear interpolation between samples solves exactly the PWL-input ODE ngspice solves."""
    x = signals["sweep"]
    y = simulate_ngspice(path("fmv_tonestack"), x, FS, params={"treble": treble, "bass": bass, "mid": mid})
    b, a = fmv_transfer_function(treble, bass, mid)
    t = np.arange(len(x)) / FS
    _, ref, _ = scipy.signal.lsim((b, a), x, t)
    assert np.sum((y - ref) ** 2) / np.sum(ref**2) < 1e-8


# ---------------------------------------------------------------- diode clipper vs its ODE


def rk4_diode_clipper(x: np.ndarray, fs: float, sub: int = 32) -> np.ndarray:
    """C v' = (u - v)/R - 2 Is sinh(v/(N Vt)) - 2 GMIN v (two 1N914s anti-parallel), u linear per sample."""
    r, c, isat, nvt, gmin = 2.2e3, 10e-9, 2.52e-9, 1.752 * VT, 1e-12
    dt = 1.0 / fs / sub
    v, out = 0.0, [0.0]
    for k in range(len(x) - 1):
        u0, du = x[k], (x[k + 1] - x[k]) * fs

        def f(tt, vv, u0=u0, du=du):
            return ((u0 + du * tt - vv) / r - 2 * isat * math.sinh(vv / nvt) - 2 * gmin * vv) / c

        for j in range(sub):
            tt = j * dt
            k1 = f(tt, v)
            k2 = f(tt + dt / 2, v + dt / 2 * k1)
            k3 = f(tt + dt / 2, v + dt / 2 * k2)
            k4 = f(tt + dt, v + dt * k3)
            v += dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(v)
    return np.array(out)


def test_diode_clipper_matches_ode(signals):
    x = signals["pluck_1V"][: int(0.01 * FS)]
    y = simulate_ngspice(path("diode_clipper"), x, FS)
    ref = rk4_diode_clipper(x, FS)
    assert np.sum((y - ref) ** 2) / np.sum(ref**2) < 1e-8
    assert np.max(np.abs(y - ref)) < 1e-4
    assert 0.45 < np.max(np.abs(y)) < 0.7  # clipped by the diodes, not by the 1 V input


def test_diode_clipper_is_bounded(signals):
    for name in ("sine", "sweep", "pluck_1V"):
        assert np.max(np.abs(simulate_ngspice(path("diode_clipper"), signals[name], FS))) < 1.0


# ---------------------------------------------------------------- pedal stages


def test_ts808_clipping_gain_and_clipping(signals):
    op = operating_point_ngspice(path("ts808_clipping"))
    assert op["out"] == pytest.approx(4.5, abs=1e-3) and op["p"] == pytest.approx(4.5, abs=1e-9)
    small = sine(1000.0, 0.01, FS, 0.002)  # 2 mV: below the diodes' knee at every drive setting
    g0 = amplitude(simulate_ngspice(path("ts808_clipping"), small, FS, params={"drive": 0.0}), 1000.0) / 0.002
    g1 = amplitude(simulate_ngspice(path("ts808_clipping"), small, FS, params={"drive": 1.0}), 1000.0) / 0.002
    # non-inverting gain 1 + Z_f/(R4 + 1/sC3): about 1 + 51k/4.7k at drive 0, far more at drive 1
    assert 5.0 < g0 < 12.0
    assert g1 > 3 * g0
    y = simulate_ngspice(path("ts808_clipping"), signals["pluck_1V"], FS, params={"drive": 1.0})
    assert np.max(np.abs(y - 4.5)) < 1.0 + 1.0  # input swing plus the diode drop: clipped


def test_ts808_tone_control_direction(signals):
    hf = {}
    for tone in (0.0, 1.0):
        knobs = {"tone": tone, "level": 1.0}
        y = simulate_ngspice(path("ts808_tone"), sine(5000.0, 0.01, FS, 0.1), FS, params=knobs)
        hf[tone] = amplitude(y, 5000.0) / 0.1
    assert hf[1.0] > 3 * hf[0.0]  # tone = 1 is full treble
    y = simulate_ngspice(path("ts808_tone"), sine(100.0, 0.04, FS, 0.1), FS, params={"level": 1.0})
    lf = amplitude(y, 100.0)
    assert 0.5 < lf / 0.1 < 1.2  # roughly unity gain at low frequency


def test_ds1_booster_amplifies():
    op = operating_point_ngspice(path("bjt_common_emitter"))
    assert 0.5 < op["b"] < 0.8 and 2.0 < op["c"] < 7.0  # forward-active bias
    x = sine(1000.0, 0.01, FS, 0.005)
    y = simulate_ngspice(path("bjt_common_emitter"), x, FS)
    gain = amplitude(y, 1000.0) / 0.005
    assert gain > 10.0


# ---------------------------------------------------------------- 12AX7 stage


def test_triode_operating_point_matches_design():
    op = operating_point_ngspice(path("triode_common_cathode"))
    ip = -op["i(vbp)"]
    assert ip == pytest.approx(0.799e-3, rel=0.02)
    assert op["k"] == pytest.approx(1.199, rel=0.02)
    assert op["out"] == pytest.approx(170.07, rel=0.02)
    assert op["grid"] == pytest.approx(0.0, abs=1e-9)  # no grid current at a negative grid
    # Koren: Ip = 2 E1^ex / kg1 at the operating point, E1 being the subcircuit's internal node
    assert ip == pytest.approx(2 * op["xv1.e1"] ** 1.4 / 1060, rel=1e-6)


def test_triode_small_signal_gain():
    x = sine(1000.0, 0.01, FS, 0.01)
    y = simulate_ngspice(path("triode_common_cathode"), x, FS)
    gain = amplitude(y, 1000.0) / 0.01
    # mu * Ra / (Ra + rp) with rp ~ 60k for a 12AX7 near 0.8 mA: about 60
    assert 40.0 < gain < 80.0
    assert np.corrcoef(y[-400:] - y[-400:].mean(), x[-400:])[0, 1] < -0.9  # inverting
