"""Knobs: changing a control recomputes the DK matrices in place, and the result is ngspice's at that setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuitsim.api import load
from circuitsim.signals import karplus_strong
from circuitsim.spice import simulate_ngspice
from circuitsim.validate import esr

pytestmark = pytest.mark.requires_ngspice

NETLIST = Path(__file__).resolve().parents[1] / "netlists" / "ts808_clipping.cir"
FS = 384000.0


def test_turning_the_drive_knob_without_rebuilding():
    x = 0.1 * karplus_strong(196.0, 0.01, FS, seed=5)
    model = load(NETLIST, "dk", FS)
    kernel = model.topology.nonlinearity
    outputs = []
    for drive in (0.1, 0.9):
        model.set_value("drive", drive)
        with torch.no_grad():
            y = model(torch.as_tensor(x)).numpy()
        ref = simulate_ngspice(NETLIST, x, FS, params={"drive": drive}, tmax=1 / (16 * FS))
        assert esr(y, ref) <= 1e-5, (drive, esr(y, ref))
        outputs.append(y)
    assert model.topology.nonlinearity is kernel  # same compiled model, new matrices
    assert np.max(np.abs(outputs[1] - outputs[0])) > 0.1  # the knob really changes the sound
