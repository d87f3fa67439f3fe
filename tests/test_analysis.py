"""``circuitsim analyze``: small-signal response against ngspice ``.ac``, aliasing against oversampling,
the exponential-sine-sweep harmonics against stepped sines, the DC transfer curve against its equation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from circuitsim.analysis.distortion import aliasing_report, ess_harmonics, thd_against_level, transfer_curve
from circuitsim.analysis.smallsignal import ac_response
from circuitsim.cli import main

ROOT = Path(__file__).resolve().parents[1] / "netlists"

AC_CASES = [
    ("fmv_tonestack", {"treble": 0.5, "bass": 0.5, "mid": 0.5}),
    ("fmv_tonestack", {"treble": 0.1, "bass": 0.9, "mid": 0.2}),
    ("fmv_tonestack", {"treble": 0.9, "bass": 0.1, "mid": 0.8}),
    ("ts808_tone", {"tone": 0.5, "level": 0.5}),
    ("ts808_tone", {"tone": 0.05, "level": 0.9}),
    ("ts808_tone", {"tone": 0.95, "level": 0.2}),
    ("bjt_common_emitter", {}),
    ("triode_common_cathode", {}),
    ("ts808", {"drive": 0.3, "tone": 0.7, "level": 0.5}),
]


@pytest.mark.requires_ngspice
@pytest.mark.parametrize(("name", "params"), AC_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(AC_CASES)])
def test_small_signal_response_matches_ngspice_ac(name, params):
    from circuitsim.analysis.ngspice_ac import ac_ngspice

    ref = ac_ngspice(ROOT / f"{name}.cir", params=params)
    assert len(ref.frequency_hz) >= 200 and ref.frequency_hz[0] == pytest.approx(20.0)
    assert ref.frequency_hz[-1] == pytest.approx(20000.0)
    assert np.ptp(ref.magnitude_db) > 1.0  # the response has shape to get right
    ours = ac_response(ROOT / f"{name}.cir", ref.frequency_hz, params=params)
    db, deg = ours.difference(ref)
    print(f"{name} {params}: largest difference {db:.2e} dB, {deg:.2e} degrees")
    assert db <= 0.01 and deg <= 0.1


@pytest.mark.requires_ngspice
def test_analyze_cli_writes_the_ac_csv_and_bode_plot(tmp_path, capsys):
    from circuitsim.analysis.ngspice_ac import ac_ngspice

    csv = tmp_path / "ac.csv"
    out = tmp_path / "an"
    net = ROOT / "ts808_tone.cir"
    assert main(["analyze", str(net), "--set", "tone=0.8", "--ac-csv", str(csv), "-o", str(out),
                 "--sweep", "level=0.2:1:3"]) == 0
    printed = capsys.readouterr().out
    assert "vs ngspice .ac" in printed and "linear circuit" in printed
    assert csv.read_text().splitlines()[0] == "frequency_hz,magnitude_db,phase_deg"
    data = np.loadtxt(csv, delimiter=",", skiprows=1)
    f = data[:, 0]
    assert len(f) >= 200 and f[0] == pytest.approx(20.0) and f[-1] == pytest.approx(20000.0)
    assert np.allclose(np.diff(np.log(f)), np.log(f[1] / f[0]), rtol=1e-6)  # log-spaced
    ref = ac_ngspice(net, params={"tone": 0.8})
    assert np.max(np.abs(data[:, 1] - ref.magnitude_db)) < 0.01
    assert np.max(np.abs((data[:, 2] - ref.phase_deg + 180) % 360 - 180)) < 0.1
    for name in ("bode.png", "sweep.png", "sweep.csv"):
        assert (out / name).stat().st_size > 1000


def test_aliased_energy_falls_as_oversampling_rises():
    rows = aliasing_report(ROOT / "ts808_clipping.cir", factors=(1, 2, 4, 8), settle=0.1, window=0.2)
    aliased = [r.aliased_db for r in rows]
    print("aliased energy (dB re harmonics) at 1, 2, 4, 8x:", [f"{a:.1f}" for a in aliased])
    assert aliased[0] > -40.0  # a 1 V 1245 Hz sine into the clipper aliases audibly at 1x
    assert all(b < a - 5.0 for a, b in zip(aliased, aliased[1:]))
    assert all(r.ns_per_sample > 0 for r in rows)


def test_ess_harmonics_match_stepped_sines():
    """Farina's sweep and a steady sine's DFT are independent measurements of the same harmonic levels."""
    net = ROOT / "diode_clipper.cir"
    amp = 0.2
    freqs = np.array([200.0, 1000.0])
    ess = ess_harmonics(net, amplitude=amp, frequencies=freqs, oversample=4)
    for j, f0 in enumerate(freqs):
        sine = thd_against_level(net, [amp], f0=f0, oversample=4, k_max=5).harmonics_v[0] / amp
        for k in (1, 3, 5):  # odd harmonics of the symmetric clipper (even ones are ~0)
            got, want = abs(ess.harmonics[k - 1, j]), sine[k - 1]
            assert 20 * math.log10(got / want) == pytest.approx(0.0, abs=0.5), (f0, k, got, want)


def test_dc_transfer_curve_solves_the_clipper_equation():
    """At DC the capacitor is open: x = y + R (I_D(y) - I_D(-y)) with I_D = Is (e^{y / (N Vt)} - 1)."""
    tc = transfer_curve(ROOT / "diode_clipper.cir", v_max=2.0, points=41)
    assert tc.kind == "dc"
    vt = 1.38064852e-23 * 300.15 / 1.6021766208e-19  # ngspice's thermal voltage at 27 C
    y = tc.output_v
    i_d = 2.52e-9 * (np.exp(y / (1.752 * vt)) - 1) - 2.52e-9 * (np.exp(-y / (1.752 * vt)) - 1)
    i_gmin = 2 * 1e-12 * y  # GMIN across each junction
    # the DC Newton's tolerance: 1e-7 V here is ~3e-9 V on y (the residual's slope is 1 + R g_d ~ 30)
    assert np.max(np.abs(tc.input_v - (y + 2.2e3 * (i_d + i_gmin)))) < 1e-7
    assert np.max(y) < 0.7 and np.min(y) > -0.7  # it limits


def test_analyze_cli_on_a_nonlinear_circuit_writes_every_file(tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", str(ROOT / "diode_clipper.cir"), "-o", str(out), "--ess", "--no-aliasing",
                 "--no-ngspice"]) == 0
    printed = capsys.readouterr().out
    assert "THD of a 1000 Hz sine" in printed
    for name in ("bode.png", "transfer.png", "transfer.csv", "thd.png", "thd.csv", "ess.png", "ess.csv"):
        assert (out / name).stat().st_size > 100, name
    header = (out / "ess.csv").read_text().splitlines()[0]
    assert header == "frequency_hz,h1_db,h2_db,h3_db,h4_db,h5_db"
    thd = np.loadtxt(out / "thd.csv", delimiter=",", skiprows=1)
    assert np.all(np.diff(thd[:, 1]) > 0)  # the clipper distorts more as the level rises


def test_bad_sweep_is_a_one_line_error(tmp_path, capsys):
    assert main(["analyze", str(ROOT / "fmv_tonestack.cir"), "-o", str(tmp_path), "--sweep", "treble=0:1",
                 "--no-ngspice"]) == 2
    assert capsys.readouterr().err.startswith("circuitsim: error: --sweep expects KNOB=a:b:n")


def test_analyze_sweep_on_a_nonlinear_circuit_gives_thd_per_knob(tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", str(ROOT / "ts808_clipping.cir"), "-o", str(out), "--sweep", "drive=0.1:0.9:2",
                 "--no-aliasing", "--no-ngspice", "-q"]) == 0
    data = np.loadtxt(out / "sweep_thd.csv", delimiter=",", skiprows=1)
    assert data.shape == (12, 3)
    assert data[0, 2] > 2 * data[0, 1]  # at 10 mV, drive 0.9 (gain 108) clips far more than drive 0.1 (gain 22)
    assert (out / "sweep_thd.png").stat().st_size > 1000
