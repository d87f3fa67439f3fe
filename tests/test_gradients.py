"""Gradients: MNA (plain torch autograd) against finite differences, and DK's compiled adjoint against MNA.

MNA runs the per-sample Newton in torch and attaches the implicit-function gradient with one
Newton step at each converged solution, so autograd through it is an independent oracle for
the compiled DK adjoint (a different formulation and a different code path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuitsim.api import load
from circuitsim.circuit.build import build_circuit
from circuitsim.formulations.dk import DKModule
from circuitsim.formulations.mna import MNAModule
from circuitsim.netlist import parse_string

ROOT = Path(__file__).resolve().parents[1] / "netlists"
FS = 96000.0


def drive(n: int, amp: float, freq: float = 2000.0, fs: float = FS) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / fs
    return (amp * torch.sin(2 * torch.pi * freq * t) * torch.clamp(t * 4000, max=1.0)).unsqueeze(0)


def weights(n: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(7).standard_normal(n))


def loss_of(model, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = model(x)[0]
    return (w * (y - y[0])).sum()


def grads(model, x, w, names):
    model.zero_grad()
    for n in names:
        model.set_kind(n, "learnable")
    loss_of(model, x, w).backward()
    return {n: float(model.parameter(n).grad) for n in names}


@pytest.mark.parametrize(
    "netlist,names,amp",
    [
        ("diode_clipper", ["R1", "C1", "D1N914.IS", "D1N914.N"], 1.0),
        ("bjt_common_emitter", ["Q2N3904.IS", "Q2N3904.BF", "RC", "CF"], 0.05),
    ],
)
def test_mna_gradients_match_finite_differences(netlist, names, amp):
    model = load(ROOT / f"{netlist}.cir", "mna", FS)
    x, w = drive(150, amp), weights(150)
    g = grads(model, x, w, names)
    for name in names:
        p = model.parameter(name)
        base = float(p.detach())
        h = abs(base) * 1e-4
        with torch.no_grad():
            p.fill_(base + h)
            up = float(loss_of(model, x, w))
            p.fill_(base - h)
            dn = float(loss_of(model, x, w))
            p.fill_(base)
        fd = (up - dn) / (2 * h)
        assert g[name] == pytest.approx(fd, rel=2e-5, abs=1e-9 * abs(fd) + 1e-300), (name, g[name], fd)


RLC = """rlc with a gain stage
VIN in 0 DC 0
L1 in a 10m
C1 a b 1u
R1 b 0 220
E1 out 0 b 0 3.3
R2 out 0 10k
.end
"""


@pytest.mark.parametrize(
    "netlist,names,amp",
    [
        ("diode_clipper", ["R1", "C1", "D1N914.IS", "D1N914.N"], 1.0),
        ("ts808_clipping", ["drive", "D1N914.IS", "D1N914.N"], 0.3),
        ("bjt_common_emitter", ["Q2N3904.IS", "Q2N3904.BF", "Q2N3904.VAF", "RC"], 0.05),
        ("triode_common_cathode", ["XV1.mu", "XV1.kg1", "XV1.ex", "RK", "CK"], 1.0),
        ("fmv_tonestack", ["treble", "bass", "mid", "R4", "C2"], 0.5),
        (RLC, ["L1", "C1", "R1", "E1"], 0.5),
    ],
    ids=["clipper", "ts808", "bjt", "triode", "fmv", "rlc"],
)
def test_dk_adjoint_matches_mna_autograd(netlist, names, amp):
    if "\n" in netlist:
        circuit = build_circuit(parse_string(netlist))
    else:
        circuit = load(ROOT / f"{netlist}.cir", "mna", FS).circuit
    mna, dk = MNAModule(circuit, FS), DKModule(circuit, FS)
    present = [n for n in names if any(n.lower() == k.lower() for k, _ in mna.values())]
    assert present == names, f"missing values: {set(names) - set(present)}"
    n = 120
    w = weights(n)
    x_m = drive(n, amp).requires_grad_(True)
    x_d = drive(n, amp).requires_grad_(True)
    gm = grads(mna, x_m, w, names)
    gd = grads(dk, x_d, w, names)
    for name in names:
        assert gd[name] == pytest.approx(gm[name], rel=1e-7, abs=1e-12 * max(abs(v) for v in gm.values())), name
    scale = float(x_m.grad.abs().max())
    assert torch.allclose(x_d.grad, x_m.grad, rtol=1e-7, atol=1e-9 * scale)
