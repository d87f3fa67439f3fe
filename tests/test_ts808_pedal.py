"""netlists/ts808.cir, the whole pedal: its stages are the two stage netlists joined as documented, the
knobs act as they should, and the output is AC-coupled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from circuitsim.analysis.distortion import thd_against_level
from circuitsim.api import load

ROOT = Path(__file__).resolve().parents[1] / "netlists"
PEDAL = ROOT / "ts808.cir"


@pytest.mark.requires_ngspice
@pytest.mark.parametrize("knobs", [{"drive": 0.5, "tone": 0.5, "level": 0.5},
                                   {"drive": 0.1, "tone": 0.9, "level": 0.8}])
def test_pedal_response_is_the_cascade_of_its_stages(knobs):
    """ngspice .ac of the pedal == input buffer x ts808_clipping.cir x ts808_tone.cir x output network.

    The buffers are ideal (VCVS), so nothing loads the stages: with C1 = 20n, R1 = 1k, R2 = 510k at
    the input, H_in = R2 / (R1 + R2 + 1/(j w C1)); with C10 = 10u, R14 = 100, RL = 10k at the
    output, H_out = RL / (R14 + RL + 1/(j w C10)).
    """
    from circuitsim.analysis.ngspice_ac import ac_ngspice

    pedal = ac_ngspice(PEDAL, params=knobs)
    clip = ac_ngspice(ROOT / "ts808_clipping.cir", params={"drive": knobs["drive"]})
    tone = ac_ngspice(ROOT / "ts808_tone.cir", params={"tone": knobs["tone"], "level": knobs["level"]})
    jw = 2j * np.pi * pedal.frequency_hz
    h_in = 510e3 / (1e3 + 510e3 + 1 / (jw * 20e-9))
    h_out = 10e3 / (100 + 10e3 + 1 / (jw * 10e-6))
    cascade = h_in * clip.response * tone.response * h_out
    ratio = pedal.response / cascade
    assert np.max(np.abs(20 * np.log10(np.abs(ratio)))) < 1e-6
    assert np.max(np.abs(np.degrees(np.angle(ratio)))) < 1e-5


def test_knobs_drive_and_level():
    """More drive: more gain and more distortion at the same input; level is a linear divider before the buffer."""
    soft = thd_against_level(PEDAL, [0.003], params={"drive": 0.05}, oversample=4, k_max=5)
    hard = thd_against_level(PEDAL, [0.003], params={"drive": 0.95}, oversample=4, k_max=5)
    assert hard.harmonics_v[0, 0] > 3 * soft.harmonics_v[0, 0]  # mid-band gain 17 -> 113
    assert hard.thd[0] > 3 * soft.thd[0]
    from circuitsim.analysis.smallsignal import ac_response

    f = np.array([100.0, 1000.0, 5000.0])
    levels = (0.25, 0.5, 1.0)
    h = {lv: ac_response(PEDAL, f, params={"level": lv}).response for lv in levels}

    def divider(lv: float) -> np.ndarray:  # C7 = 1u, R12 = 1k, then the pot's two halves (each >= 1 ohm)
        top, bottom = max((1 - lv) * 100e3, 1.0), max(lv * 100e3, 1.0)
        return bottom / (1 / (2j * np.pi * f * 1e-6) + 1e3 + top + bottom)

    for lv in levels[:2]:
        assert np.allclose(h[lv] / h[1.0], divider(lv) / divider(1.0), rtol=1e-9)


def test_output_is_ac_coupled_at_zero_volts():
    model = load(PEDAL, "dk", 48000 * 8)
    dc = model.dc_voltages()
    assert dc["v(out)"] == 0.0 and abs(dc["v(o1)"] - 4.5) < 1e-3 and abs(dc["v(o2)"] - 4.5) < 1e-3


@pytest.mark.requires_ngspice
def test_fit_example_recovers_known_values_from_an_ngspice_recording(tmp_path):
    """examples/fit_ts808.py (docs/fitting.md): four values changed by 16-59 % come back within 0.5 %."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fit_ts808", ROOT.parent / "examples" / "fit_ts808.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    got, out = ex.make_pair_and_fit(tmp_path, 0.3, use_ngspice=True)
    start = ex.fitted_values(PEDAL)
    for name, (_, _, true) in ex.TRUE.items():
        assert abs(start[name] / true - 1) > 0.15  # the netlist starts far from the truth
        assert got[name] == pytest.approx(true, rel=5e-3), name
    assert out.is_file()
