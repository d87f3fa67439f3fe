"""Port-Hamiltonian formulation against ngspice on every supported reference netlist, 48 kHz x 8.

Thresholds as tests/test_ngspice_acceptance.py: ESR <= 1e-8 (linear) / 1e-5 (nonlinear).  The
hard-driven cases that the DK tests let exceed 1e-5 at 384 kHz (the TS-808 clipping stage's 0.5 V
sweep and 300 mV / 1 V plucks, the DS-1 booster's sweep and 1 V pluck) get the DK tests' hatch
and no other: ESR <= 1e-3 at 384 kHz, a >= 20x drop at 4x the rate and the unchanged threshold met
there (docs/validation.md, "Port-Hamiltonian").  The threshold itself is never raised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuitsim.api import load
from circuitsim.signals import standard_signals
from circuitsim.spice import simulate_ngspice
from circuitsim.validate import esr

pytestmark = pytest.mark.requires_ngspice

ROOT = Path(__file__).resolve().parents[1]
NETLISTS = sorted((ROOT / "netlists").glob("*.cir"))
LINEAR = {"fmv_tonestack", "ts808_tone"}
FS = 48000 * 8
DURATION = 0.005
# the (circuit, signal) cases whose 384 kHz error is the discretisation's own: those of
# tests/test_ngspice_acceptance.py
DISCRETISATION_LIMITED = {("ts808_clipping", "sweep"), ("ts808_clipping", "pluck_300mV"),
                          ("ts808_clipping", "pluck_1V"), ("bjt_common_emitter", "sweep"),
                          ("bjt_common_emitter", "pluck_1V")}


def _esr(path: Path, signal: str, fs: float) -> float:
    x = standard_signals(fs, DURATION)[signal]
    with torch.no_grad():
        y = load(path, "phs", fs)(torch.as_tensor(x)).numpy()
    return esr(y, simulate_ngspice(path, x, fs, tmax=1 / (16 * fs)))


@pytest.mark.parametrize("path", NETLISTS, ids=lambda p: p.stem)
def test_phs_against_ngspice(path: Path):
    limit = 1e-8 if path.stem in LINEAR else 1e-5
    for name in standard_signals(FS, DURATION):
        e = _esr(path, name, FS)
        print(f"{path.stem:<24}{name:<14} ESR phs {e:.3e}")
        if e > limit:
            assert (path.stem, name) in DISCRETISATION_LIMITED, f"{name}: ESR {e:.3e} > {limit}"
            assert e <= 1e-3, f"{name}: ESR {e:.3e} at 384 kHz"
            fine = _esr(path, name, 4 * FS)
            print(f"{'':<38} phs at 4x the rate: {fine:.3e}")
            assert fine <= e / 20 and fine <= limit, f"{name}: ESR {e:.3e} at 384 kHz, {fine:.3e} at 4x"
        assert np.isfinite(e)


def test_cli_validate_with_phs(capsys):
    from circuitsim.cli import main

    net = str(ROOT / "netlists" / "diode_clipper.cir")
    assert main(["validate", net, "--method", "phs", "--duration", "0.002"]) == 0
    out = capsys.readouterr().out
    assert "(phs," in out and "DC operating point" in out
