"""MNA on linear circuits against closed-form results: the trapezoidal rule is the bilinear transform."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from circuitsim.circuit.build import build_circuit
from circuitsim.formulations.dk import DKModule
from circuitsim.formulations.mna import MNAModule
from circuitsim.netlist import parse_string

FS = 96000.0


def module(text: str, fs: float = FS) -> MNAModule:
    return MNAModule(build_circuit(parse_string(text)), fs)


def noise(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n)
    x[0] = 0.0
    return x


def bilinear_response(b_s, a_s, x, fs=FS):
    bz, az = scipy.signal.bilinear(b_s, a_s, fs)
    return scipy.signal.lfilter(bz, az, x)


def test_rc_lowpass_is_bilinear_transform():
    r, c = 1.5e3, 47e-9
    m = module(f"rc\nVIN in 0 DC 0\nR1 in out {r}\nC1 out 0 {c}\n.end\n")
    x = noise(400)
    y = m(torch.tensor(x)).detach().numpy()
    ref = bilinear_response([1.0], [r * c, 1.0], x)
    assert np.max(np.abs(y - ref)) < 1e-12 * np.max(np.abs(ref)) * 100


def test_series_rlc_bandpass_with_inductor():
    r, ind, c = 100.0, 10e-3, 1e-6
    m = module(f"rlc\nVIN in 0 DC 0\nL1 in a {ind}\nC1 a out {c}\nR1 out 0 {r}\n.end\n")
    x = noise(400, 1)
    y = m(torch.tensor(x)).detach().numpy()
    # V(out)/V(in) = R / (R + sL + 1/(sC)) = sRC / (s^2 LC + sRC + 1)
    ref = bilinear_response([r * c, 0.0], [ind * c, r * c, 1.0], x)
    assert np.max(np.abs(y - ref)) < 1e-10 * np.max(np.abs(ref))


def test_vcvs_non_inverting_amplifier_dc_gain():
    # E op-amp with gain A: Vout = A (Vin - Vout*R1/(R1+R2))  ->  exact closed-loop gain
    a, r1, r2 = 1e5, 1e3, 9e3
    m = module(f"amp\nVIN in 0 DC 0\nE1 out 0 in fb {a}\nR1 fb 0 {r1}\nR2 out fb {r2}\n.end\n")
    y = m(torch.tensor([0.0, 0.1, -0.2], dtype=torch.float64)).detach().numpy()
    beta = r1 / (r1 + r2)
    gain = a / (1 + a * beta)
    assert np.allclose(y, gain * np.array([0.0, 0.1, -0.2]), rtol=1e-12, atol=1e-15)


def test_starts_from_dc_operating_point_with_bias():
    # a 9 V divider with a coupling capacitor: the output must start settled, not charging
    m = module("bias\nVCC vcc 0 DC 9\nVIN in 0 DC 0\nC1 in out 1u\nR1 vcc out 10k\nR2 out 0 10k\n.end\n")
    y = m(torch.zeros(50)).detach().numpy()
    assert np.allclose(y, 4.5, rtol=1e-13)


def test_gradient_wrt_r_and_c_matches_finite_difference():
    text = "rc\nVIN in 0 DC 0\nR1 in out 2.2k\nC1 out 0 10n\n.end\n"
    m = module(text)
    x = torch.tensor(noise(60, 2))
    loss = (m(x) ** 2).sum()
    loss.backward()
    for name, rel in (("R1", 1e-6), ("C1", 1e-6)):
        p = m.parameter(name)
        h = float(p.detach()) * 1e-6
        with torch.no_grad():
            p += h
            up = float((m(x) ** 2).sum())
            p -= 2 * h
            dn = float((m(x) ** 2).sum())
            p += h
        fd = (up - dn) / (2 * h)
        assert p.grad is not None
        assert float(p.grad) == pytest.approx(fd, rel=rel)


def test_streaming_blocks_equal_one_run():
    m = module("rc\nVIN in 0 DC 0\nR1 in out 1k\nC1 out 0 1u\nR2 out 0 1k\n.end\n")
    x = torch.tensor(noise(300, 3))
    with torch.no_grad():
        whole = m(x)
        a, st = m.stream(x[:100])
        b, st = m.stream(x[100:], st)
    assert torch.allclose(torch.cat([a, b]), whole, rtol=0, atol=1e-15)


@pytest.mark.parametrize("method", [MNAModule, DKModule], ids=["mna", "dk"])
def test_capacitor_ladder_sharing_a_node_is_bilinear_transform(method):
    # C1 between a and out, C2 from out to ground: the two capacitors share a node, so the
    # reactive rows have rank 2 although the sign pattern of Cm has rank 1
    r1, r2, c1, c2 = 1e3, 10e3, 100e-9, 47e-9
    text = f"ladder\nVIN in 0 DC 0\nR1 in a {r1}\nC1 a out {c1}\nC2 out 0 {c2}\nR2 out 0 {r2}\n.end\n"
    m = method(build_circuit(parse_string(text)), FS)
    x = noise(400, 4)
    with torch.no_grad():
        y = m(torch.tensor(x)).numpy()
    g1, g2 = 1 / r1, 1 / r2
    # V(out)/V(in) = G1 C1 s / (C1 C2 s^2 + ((C1 + C2) G1 + G2 C1) s + G1 G2)
    ref = bilinear_response([g1 * c1, 0.0], [c1 * c2, (c1 + c2) * g1 + g2 * c1, g1 * g2], x)
    assert np.max(np.abs(y - ref)) < 1e-10 * np.max(np.abs(ref))
