"""Knobs and per-call caches: changing a control recomputes the DK matrices in place, and the result is
ngspice's at that setting; what a call reuses (matrices, constants of the value expressions, the one-solve
DC point of a linear circuit, the one-call forward, the source array, the operating point) gives what an
uncached computation gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from circuitsim.api import load
from circuitsim.formulations.dk import DKModule
from circuitsim.netlist.ast import Binary, Name, Num
from circuitsim.netlist.expr import MATH_OPS, TORCH_OPS, evaluate
from circuitsim.signals import karplus_strong
from circuitsim.solvers.dc import linear_point, operating_point
from circuitsim.solvers.newton import newton
from circuitsim.spice import simulate_ngspice
from circuitsim.validate import esr

ROOT = Path(__file__).resolve().parents[1] / "netlists"
NETLIST = ROOT / "ts808_clipping.cir"
FMV = ROOT / "fmv_tonestack.cir"
FS = 384000.0


@pytest.mark.requires_ngspice
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


def _fb(model, x: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # noqa: ANN001
    """Output and the gradients of a weighted sum of it w.r.t. every learnable value."""
    model.zero_grad()
    y = model(x)
    (y * torch.linspace(0.5, 1.5, y.shape[-1], dtype=torch.float64)).sum().backward()
    return y.detach().numpy(), {n: p.grad.numpy().copy() for n, p in model.values() if p.grad is not None}


@pytest.mark.parametrize("method", ["dk", "wdf"])
def test_a_changed_knob_is_picked_up_by_every_cache(method: str) -> None:
    """The matrices are cached while no value changes (cached(); WDF's adaptors too): after set_value the
    output and gradients are those of a model loaded at the new setting (nothing cached), not the old ones."""
    x = torch.as_tensor(0.3 * karplus_strong(110.0, 0.002, FS, seed=3))
    knobs = ("treble", "bass", "mid", "rtreble", "rbass", "rmid")
    model = load(FMV, method, FS)
    for name in knobs:
        model.set_kind(name, "learnable")
    with torch.no_grad():
        model(x)  # fills the no-grad caches at the netlist's values
    y_old, _ = _fb(model, x)
    model.set_value("bass", 0.9)
    model.set_value("rtreble", 200e3)
    with torch.no_grad():
        y_nograd = model(x).numpy()
    y_new, g_new = _fb(model, x)
    fresh = load(FMV, method, FS, params={"bass": 0.9, "rtreble": 200e3})
    for name in knobs:
        fresh.set_kind(name, "learnable")
    y_ref, g_ref = _fb(fresh, x)
    assert np.max(np.abs(y_new - y_old)) > 1e-3 * np.max(np.abs(y_ref))  # the change is audible
    assert np.max(np.abs(y_nograd - y_ref)) <= 1e-12 * np.max(np.abs(y_ref))
    assert np.max(np.abs(y_new - y_ref)) <= 1e-12 * np.max(np.abs(y_ref))
    assert g_new.keys() == g_ref.keys() and len(g_ref) == 10  # knobs, pot tracks, R4, C1-C3
    for name, g in g_ref.items():
        assert np.max(np.abs(g_new[name] - g)) <= 1e-10 * np.max(np.abs(g)), name


def test_forward_in_one_kernel_call_equals_the_stream_with_end_charges() -> None:
    """forward() keeps no end state, so it runs every sample in one kernel call without the charge rows;
    stream() runs the last sample with them (the substep remap's charges).  Same output and gradients."""
    x = torch.as_tensor(0.5 * karplus_strong(196.0, 0.002, FS, seed=4))
    model = load(NETLIST, "dk", FS)
    y_fwd, g_fwd = _fb(model, x)

    class Streamed(DKModule):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return self.stream(u)[0]

    streamed = Streamed(model.circuit, FS)
    y_st, g_st = _fb(streamed, x)
    _, state = streamed.stream(x)
    assert state.charge is not None  # the stream's end state has its charges
    assert np.max(np.abs(y_fwd - y_st)) <= 1e-13 * np.max(np.abs(y_st))
    assert g_fwd.keys() == g_st.keys()
    for name, g in g_st.items():
        assert np.max(np.abs(g_fwd[name] - g)) <= 1e-9 * np.max(np.abs(g)), name


def test_reused_buffers_and_memos_give_what_a_fresh_model_gives() -> None:
    """What a call reuses from the last (the source array with the supply column, the kernel writing after the
    operating point's row, the operating point kept while the values stay) changes no result, however calls
    interleave: a result still held while the next call runs, two forwards before one backward, a stream
    continued after another call.  The reference: a fresh model for each signal (nothing reused)."""
    n = 4096  # the (n, 2) source array is large enough to be kept (SOURCE_BUFFER_MIN)
    xa = torch.as_tensor(0.5 * karplus_strong(196.0, n / FS, FS, seed=6))
    xb = torch.as_tensor(0.3 * karplus_strong(110.0, n / FS, FS, seed=7))
    path = ROOT / "bjt_common_emitter.cir"
    model = load(path, "dk", FS)
    fresh = {k: _fb(load(path, "dk", FS), x) for k, x in (("a", xa), ("b", xb))}
    with torch.no_grad():  # without a recorded gradient the operating point has no implicit step: its own reference
        plain = {k: load(path, "dk", FS)(x).numpy() for k, x in (("a", xa), ("b", xb))}

    def close(a: np.ndarray, b: np.ndarray, rel: float) -> bool:
        return float(np.max(np.abs(a - b))) <= rel * float(np.max(np.abs(b)))

    with torch.no_grad():
        ya = model(xa)
        yb = model(xb)  # ya is still held
        assert model._source_buffer is not None  # the array is kept between calls
    assert np.array_equal(ya.numpy(), plain["a"]) and np.array_equal(yb.numpy(), plain["b"])
    model.zero_grad()
    w = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    ya, yb = model(xa), model(xb)  # two forwards, then one backward through both
    ((ya + yb) * w).sum().backward()
    grads = {k: p.grad.numpy() for k, p in model.values() if p.grad is not None}
    assert grads.keys() == fresh["a"][1].keys() and len(grads) > 5
    for k, g in grads.items():
        assert close(g, fresh["a"][1][k] + fresh["b"][1][k], 1e-12), k
    with torch.no_grad():
        y1, state = model.stream(xa[: n // 2])
        model(xb)
        y2, _ = model.stream(xa[n // 2 :], state)
    assert close(torch.cat([y1, y2]).numpy(), plain["a"], 1e-12)


DIVIDER = """resistive divider with a capacitor: at DC v(out) = R2 / (R1 + R2) v(in)
VIN in 0 DC 0
R1 in out 1k
R2 out 0 3k
C1 out 0 1u
.end
"""


@pytest.mark.parametrize("method", ["dk", "wdf"])
def test_linear_dc_point_is_one_solve_with_the_analytic_value_and_gradient(tmp_path: Path, method: str) -> None:
    """A circuit without devices: the DC point is one solve of G x = Bu s (no Newton iterations), the
    first output sample is the divider's R2/(R1+R2) u0 and its gradient the analytic derivative."""
    path = tmp_path / "divider.cir"
    path.write_text(DIVIDER)
    model = load(path, method, FS)
    u0, r1, r2 = 0.2, 1e3, 3e3
    y = model(torch.full((16,), u0, dtype=torch.float64))
    assert model.diagnostics.operating_point.iterations == 1
    assert abs(float(y[0].detach()) - u0 * r2 / (r1 + r2)) <= 1e-15
    g1, g2 = torch.autograd.grad(y[0], [model.parameter("R1"), model.parameter("R2")])
    assert abs(float(g1) - (-u0 * r2 / (r1 + r2) ** 2)) <= 1e-12 * u0 * r2 / (r1 + r2) ** 2
    assert abs(float(g2) - u0 * r1 / (r1 + r2) ** 2) <= 1e-12 * u0 * r1 / (r1 + r2) ** 2


LADDER = """a ladder with an inductor, a controlled source and a capacitor (DC: L shorted, C open)
VIN in 0 DC 0
R1 in a 1k
L1 a b 10m
R2 b 0 2.2k
E1 c 0 b 0 3
R3 c out 4.7k
R4 out 0 10k
C1 out 0 10n
.end
"""


def test_linear_dc_point_equals_newton_and_its_gradient_the_implicit_step(tmp_path: Path) -> None:
    """A batch of input values: the one solve vs damped Newton from zero on the same equations
    (solvers/newton.py), and autograd through the solve vs the implicit-function step."""
    path = tmp_path / "ladder.cir"
    path.write_text(LADDER)
    model = load(path, "dk", FS)
    m = model.matrices()
    s0 = torch.tensor([[-0.4], [0.1], [0.7]], dtype=torch.float64)
    x, info = operating_point(model.topology, m, s0)
    assert info.iterations == 1 and info.method == "newton"
    g, b = m.G.detach(), s0 @ m.Bu.detach().T
    ref = newton(lambda z: (z @ g.T - b, g.expand(3, -1, -1)), torch.zeros_like(b))
    assert ref.converged and ref.iterations >= 2
    assert float((x - ref.x).abs().max()) <= 1e-14 * float(ref.x.abs().max())
    assert linear_point(load(NETLIST, "dk", FS).topology, m, s0) is None  # a circuit with devices: Newton
    x_grad = linear_point(model.topology, m, s0)
    x_implicit = model.topology.implicit_step(m, x.detach(), m.G, m.Wi, s0 @ m.Bu.T)
    w = torch.arange(1.0, 1.0 + x.numel(), dtype=torch.float64).reshape(x.shape)
    names = ["R1", "R2", "E1", "R3", "R4"]  # what the DC point depends on (not L1, C1)
    params = [model.parameter(n) for n in names]
    ga = torch.autograd.grad((x_grad * w).sum(), params, retain_graph=True)
    gb = torch.autograd.grad((x_implicit * w).sum(), params)
    for name, a, b_ in zip(names, ga, gb):
        assert float(b_.abs()) > 0, name
        assert float((a - b_).abs()) <= 1e-12 * float(b_.abs()), name


def test_expression_constants_are_shared_but_a_tampered_one_is_replaced() -> None:
    """TorchOps.const keeps one tensor per number; one written to in place (or made to require grad) by a
    caller is not handed out again, so later values stay those of the float evaluation."""
    expr = Binary("*", Binary("-", Num(1.0), Name("t")), Num(250e3))
    env = {"t": torch.tensor(0.3, dtype=torch.float64)}
    exact = evaluate(expr, {"t": 0.3}, MATH_OPS)
    one = TORCH_OPS.const(1.0)
    assert TORCH_OPS.const(1.0) is one  # shared
    assert float(evaluate(expr, env, TORCH_OPS)) == exact
    one.mul_(3.0)  # a caller that writes into a constant
    assert float(evaluate(expr, env, TORCH_OPS)) == exact
    TORCH_OPS.const(250e3).requires_grad_(True)
    assert not evaluate(expr, env, TORCH_OPS).requires_grad
    assert float(evaluate(expr, env, TORCH_OPS)) == exact
    assert str(float(TORCH_OPS.const(-0.0))) == "-0.0" and str(float(TORCH_OPS.const(0.0))) == "0.0"
