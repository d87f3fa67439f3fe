"""``method="sparse"``: DK's discrete system with the sparse Newton solve (circuitsim/formulations/sparse.py).

It must give DK's solution (the same residual, solved to the same tolerance), DK's gradients (the same
implicit-function adjoint), ngspice's waveform on a multi-transistor circuit, and be what ``load`` picks
by default only above ``AUTO_PORTS`` ports.  Its speed and first compile on the twelve-transistor Big Muff
are measured in benchmarks/bench_big.py, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import circuitsim
from circuitsim.errors import UsageError
from circuitsim.formulations.sparse import AUTO_PORTS, SparseModule, minimum_degree
from circuitsim.spice import simulate_ngspice
from circuitsim.validate import esr

ROOT = Path(__file__).resolve().parents[1]
NETLISTS = ROOT / "netlists"
FS = 96000.0


def _sine(n: int, amp: float, freq: float = 440.0) -> torch.Tensor:
    return torch.tensor(amp * np.sin(2 * np.pi * freq * np.arange(n) / FS))


@pytest.mark.parametrize(("name", "amp"), [("bjt_common_emitter", 0.3), ("diode_clipper", 2.0)])
def test_sparse_equals_dk(name: str, amp: float) -> None:
    """Same discrete system: the outputs agree to 1e-9 of their range, and the sparse solve did the work
    (the core's dense Newton ran only on the first sample of each kernel run, with no fallback)."""
    x = _sine(3000, amp)
    with torch.no_grad():
        sp = circuitsim.load(NETLISTS / f"{name}.cir", "sparse", FS)
        ys = sp(x)
        dk = circuitsim.load(NETLISTS / f"{name}.cir", "dk", FS)
        yd = dk(x)
    assert isinstance(sp, SparseModule)
    assert float(yd.max() - yd.min()) > 1e-2
    assert float((ys - yd).abs().max()) <= 1e-9 * float(yd.max() - yd.min())
    assert not sp.diagnostics.fallbacks
    # the core counts only its own Newton iterations; DK runs a call's last sample on its own (dk.py,
    # _runner: the charge rows), so two kernel runs each begin with one sample of the core's Newton
    assert sp.diagnostics.newton_iterations <= 2 * sp.diagnostics.max_iterations


def test_sparse_runs_a_linear_circuit() -> None:
    """No device, no unknowns of the sparse solve (the FMV tone stack): the same output as DK's."""
    x = _sine(1000, 0.5)
    with torch.no_grad():
        ys = circuitsim.load(NETLISTS / "fmv_tonestack.cir", "sparse", FS)(x)
        yd = circuitsim.load(NETLISTS / "fmv_tonestack.cir", "dk", FS)(x)
    assert float(yd.max() - yd.min()) > 1e-2
    assert float((ys - yd).abs().max()) <= 1e-12 * float(yd.max() - yd.min())


def test_sparse_streaming_matches_one_call() -> None:
    """Blocks through ``stream`` give one long call's output (to the Newton tolerance: each block's first
    sample is solved by the core's Newton from the warm start)."""
    x = _sine(2000, 0.3)
    with torch.no_grad():
        sp = circuitsim.load(NETLISTS / "bjt_common_emitter.cir", "sparse", FS)
        y = sp(x)
        a, st = sp.stream(x[:700])
        b, _ = sp.stream(x[700:], st)
    assert float((torch.cat([a, b]) - y).abs().max()) <= 1e-9 * float(y.max() - y.min())


def test_sparse_gradients_match_dk() -> None:
    """The backward pass is the core's implicit-function adjoint on the same residual: gradients of a loss
    w.r.t. every learnable value and the input agree with DK's as DK's agree with MNA's (tests/test_gradients.py:
    1e-7 relative, 1e-12 of the largest gradient absolute)."""
    grads, xgrads = [], []
    for method in ("sparse", "dk"):
        x = _sine(600, 0.3).requires_grad_(True)
        model = circuitsim.load(NETLISTS / "bjt_common_emitter.cir", method, FS)
        loss = (model(x) ** 2).mean()
        names = [n for n, p in model.values() if p.requires_grad]
        gs = torch.autograd.grad(loss, [model.parameter(n) for n in names] + [x])
        grads.append(dict(zip(names, (float(g) for g in gs[:-1]))))
        xgrads.append(gs[-1])
    floor = 1e-12 * max(abs(g) for g in grads[1].values())
    for n, g in grads[1].items():
        assert grads[0][n] == pytest.approx(g, rel=1e-7, abs=floor), (n, grads[0][n], g)
    scale = float(xgrads[1].abs().max())
    assert torch.allclose(xgrads[0], xgrads[1], rtol=1e-7, atol=1e-9 * scale)


def test_sparse_matches_ngspice_on_a_two_stage_transistor_circuit(tmp_path: Path) -> None:
    """Two common-emitter stages coupled by a capacitor (two transistors, five nodes the devices touch):
    ESR against ngspice at TMAX = T/16 below 1e-5 at 48 kHz x 2."""
    deck = tmp_path / "two_stage.cir"
    deck.write_text(
        "two common-emitter stages\n"
        "VCC vcc 0 9\nVIN in 0 0\nC1 in b1 1u\nR1 vcc b1 470k\nR2 b1 0 68k\nQ1 c1 b1 e1 QN\nRC1 vcc c1 10k\n"
        "RE1 e1 0 1k\nCE1 e1 0 10u\nC2 c1 b2 100n\nR3 vcc b2 470k\nR4 b2 0 68k\nQ2 c2 b2 e2 QN\nRC2 vcc c2 10k\n"
        "RE2 e2 0 1k\nC3 c2 out 1u\nRL out 0 100k\n"
        ".model QN NPN(IS=1e-14 BF=200 VAF=100 RB=10 RC=1 RE=0.5)\n.end\n"
    )
    fs = 96000.0
    x = 0.02 * np.sin(2 * np.pi * 500 * np.arange(1920) / fs)
    with torch.no_grad():
        model = circuitsim.load(deck, "sparse", fs)
        y = model(torch.as_tensor(x)).numpy()
    assert len(model.plan.unknowns) >= 5
    ref = simulate_ngspice(deck, x, fs, "VIN", "out", tmax=1 / (16 * fs))
    assert np.ptp(ref) > 1e-2
    assert esr(y, ref) <= 1e-5, esr(y, ref)


def test_sparse_independent_stages_are_blocks(tmp_path: Path) -> None:
    """Two diode clippers that only the ideal input source joins are two blocks of the sparse solve, whose K
    has no entry between them: the output equals DK's to 1e-9 of its range, and a K with an entry between the
    blocks (not the one the plan was made for) turns the sparse solve off (LC_OK = 0: the core's Newton)."""
    deck = tmp_path / "two_clippers.cir"
    deck.write_text(
        "two clippers on one input\nVIN in 0 0\nR1 in a 2.2k\nC1 a 0 10n\nD1 a 0 DX\nD2 0 a DX\n"
        "R2 in b 4.7k\nC2 b 0 22n\nD3 b 0 DX\nD4 0 b DX\nRM a out 10k\nRL out 0 10k\n"
        ".model DX D(Is=2.52n N=1.752)\n.end\n"
    )
    x = _sine(2000, 2.0)
    with torch.no_grad():
        sp = circuitsim.load(deck, "sparse", FS, input_source="VIN", output_node="b")
        ys = sp(x)
        yd = circuitsim.load(deck, "dk", FS, input_source="VIN", output_node="b")(x)
    assert sp.plan.blocks == 2
    assert float(yd.max() - yd.min()) > 1e-2
    assert float((ys - yd).abs().max()) <= 1e-9 * float(yd.max() - yd.min())
    assert not sp.diagnostics.fallbacks
    m, d = sp.dk()
    mod = sp.plan.module
    K = np.ascontiguousarray(d.K.detach().numpy())
    theta = m.theta.detach().numpy()
    lc = np.zeros(mod.FM_LC)
    mod.fm_prepare((K,), theta, lc)
    assert lc[mod.LC_OK] == 1.0
    i, k = np.nonzero(mod.SP_PBLK[:, None] != mod.SP_OBLK[None, :])
    assert i.size and not K[i, k].any()
    K[i[0], k[0]] = 1e-3 * np.abs(K).max()
    mod.fm_prepare((K,), theta, lc)
    assert lc[mod.LC_OK] == 0.0


def test_sparse_refuses_what_it_does_not_solve() -> None:
    """Behavioural (B / E VALUE=) blocks have no device loop, and an ideal source between device nodes leaves the
    other unknowns unsolvable on their own: an explicit 'sparse' says so."""
    with pytest.raises(UsageError, match="behavioural"):
        circuitsim.load(NETLISTS / "triode_common_cathode.cir", "sparse", FS)
    with pytest.raises(UsageError, match="not solvable on their own"):
        circuitsim.load(NETLISTS / "ts808_clipping.cir", "sparse", FS)


def test_default_method_by_size() -> None:
    """``choose_method``: DK up to AUTO_PORTS ports, sparse above (device blocks only), and the note says so."""
    from circuitsim.api import choose_method, load_circuit

    circ = load_circuit(NETLISTS / "bjt_common_emitter.cir")
    method, note = choose_method(circ, "VIN", "out")
    assert method == "dk" and "dk" in note
    assert AUTO_PORTS >= 8


def test_minimum_degree_orders_a_star_centre_last() -> None:
    """A star: eliminating a leaf makes no fill, the centre first would join every leaf."""
    adj = [{1, 2, 3, 4}, {0}, {0}, {0}, {0}]
    assert minimum_degree(adj)[-1] == 0 or minimum_degree(adj)[-2] == 0


def test_big_muff_sparse_solve_equals_dense_newton_and_ngspice(tmp_path: Path) -> None:
    """The twelve-transistor Big Muff export (tests/data/wild/bigmuff, 36 ports): chosen by default, the sparse
    solve gives the core's dense Newton's output (DK's exact ``I - K J`` on every sample, ``sparse_solve =
    False``) to 1e-9 of its range, and ngspice's (TMAX = T/16) to ESR 1e-5 over 10 ms of its published sine at
    48 kHz x 8.  (DK's own module takes half an hour to compile here; bench_big.py times this one.)"""
    import warnings

    from circuitsim.netlist import NetlistWarning

    published = ROOT / "tests" / "data" / "wild" / "bigmuff" / "BigMuff-Rams-Head.cir"
    deck = tmp_path / "bigmuff.cir"
    deck.write_text(f"Big Muff instanced as its repository's contrast.cir does\n.include {published}\n"
                    "xbmf BigMuff-Rams-Head\nVIN csim_unconnected 0 0\nRunconnected csim_unconnected 0 1k\n.end\n")
    fs = 384000.0
    x = torch.tensor(0.1 * np.sin(2 * np.pi * 146.0 * np.arange(int(0.01 * fs)) / fs))  # SIN(0 100m 146)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)  # R41/R67 '1-3k', read as ngspice does
        model = circuitsim.load(deck, sample_rate=fs, input_source="xbmf.V2", output_node="xbmf.rams_head_out")
    assert isinstance(model, SparseModule) and model.choice.startswith("sparse")
    assert model.plan.blocks == 3  # the three channels, which only the ideal supply and input join
    with torch.no_grad():
        y = model(x).numpy()
        model.sparse_solve = False
        yd = model(x).numpy()
    assert float(np.abs(y - yd).max()) <= 1e-9 * float(np.ptp(yd))
    ref = simulate_ngspice(deck, np.zeros(len(x)), fs, "VIN", "xbmf.rams_head_out", tmax=1 / (16 * fs))
    assert np.ptp(ref) > 1e-2
    assert esr(y, ref) <= 1e-5, esr(y, ref)
