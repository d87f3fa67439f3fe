"""Gradients: MNA (plain torch autograd) against finite differences, and DK's compiled adjoint against MNA
(with every state saved and with checkpoints only) and against the plain-torch recursion.

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
from circuitsim.kernels import autograd
from circuitsim.kernels import statespace as ss
from circuitsim.kernels.autograd import run_state_space
from circuitsim.kernels.core import KernelOptions
from circuitsim.kernels.devices import diode_params_vector
from circuitsim.kernels.nonlinearity import DiodeBlock, build_nonlinearity
from circuitsim.kernels.reference import reference_state_space
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
    _dk_against_mna(netlist, names, amp)


@pytest.mark.parametrize(
    "options",
    [KernelOptions(checkpoint=7, state_budget=0), KernelOptions(checkpoint=7)],
    ids=["checkpoints", "every-state"],
)
@pytest.mark.parametrize(
    "netlist,names,amp",
    [
        ("diode_clipper", ["R1", "C1", "D1N914.IS", "D1N914.N"], 1.0),
        ("bjt_common_emitter", ["Q2N3904.IS", "Q2N3904.BF", "RC"], 0.05),
        ("fmv_tonestack", ["treble", "bass", "R4", "C2"], 0.5),
    ],
    ids=["clipper", "bjt", "fmv"],
)
def test_dk_adjoint_in_both_saving_modes(netlist, names, amp, options, monkeypatch):
    """Blocks of 7 samples (120 = 17 x 7 + 1: a one-sample last block), with every state saved and
    with only a checkpoint per block (state_budget=0: the backward recomputes the states)."""
    monkeypatch.setattr(autograd, "DEFAULT_OPTIONS", options)
    _dk_against_mna(netlist, names, amp)


@pytest.mark.parametrize(
    "budget,checkpoint,rows",
    [(64000, 64, 1000), (63999, 64, 16), (0, 1000, 1)],
    ids=["every-state", "checkpoints", "one-checkpoint"],
)
def test_saved_states_stay_within_the_budget(budget, checkpoint, rows):
    """Saved bytes per sample: 8 (Nz + Nx) with every state (here 8 * 2 * 1000 * 4 = 64000 bytes of
    states), 8 Nz + 8 Nx / checkpoint above the budget; the gradients equal those of the plain-torch
    recursion (kernels/reference.py)."""
    nl = build_nonlinearity([DiodeBlock(port=0, out_i=0)], 1, 1)
    rng = np.random.default_rng(3)
    nx, T, batch = 4, 1000, 2
    a = rng.standard_normal((nx, nx))
    A = 0.9 * a / np.abs(np.linalg.eigvals(a)).max()
    # one diode port v = p + K f(v) with K < 0 (a resistance to ground), p = G x + H u volts
    mats = [A, 0.1 * rng.standard_normal((nx, 1)), 1e2 * rng.standard_normal((nx, 1)), rng.standard_normal((1, nx)),
            rng.standard_normal((1, 1)), 1e2 * rng.standard_normal((1, 1)), 0.1 * rng.standard_normal((1, nx)),
            np.array([[0.5]]), np.array([[-1e3]])]
    theta = torch.tensor(diode_params_vector({"IS": 2.52e-9, "N": 1.752}))  # 1N914: f moves y by ~2.5%
    u = np.sin(np.arange(T) * 0.05)[None, :, None].repeat(batch, 0) * np.array([1.0, 0.7])[:, None, None]
    x0 = np.zeros((batch, nx))
    # the strict stop rule (early=False): this test isolates the saving modes of the backward pass, so both
    # sides solve to the same tolerance (with the default early accept this stiff random system's Newton
    # stops up to ~10x reltol short, which moves its gradients by up to 2e-7 of the largest)
    opts = KernelOptions(checkpoint=checkpoint, state_budget=budget, early=False)
    res = ss.forward(nl, mats, theta.numpy(), u, x0, options=opts)
    assert res.checkpoints.shape == (batch, rows, nx)
    assert res.v.shape == (batch, T, 1)
    assert (res.checkpoints.nbytes + res.v.nbytes) / (batch * T) == 8 * 1 + 8 * nx * rows / T
    assert res.checkpoints.nbytes <= max(budget, 8 * batch * nx * -(-T // checkpoint))
    wy = torch.tensor(np.random.default_rng(5).standard_normal((batch, T, 1)))

    def grads(run):
        mt = [torch.tensor(m, requires_grad=True) for m in mats]
        th = theta.clone().requires_grad_(True)
        ut = torch.tensor(u, requires_grad=True)
        y, xT = run(mt, th, ut, torch.tensor(x0))
        return torch.autograd.grad((wy * y).sum() + xT.sum(), mt + [th, ut])

    g_nb = grads(lambda mt, th, ut, x: (lambda r: (r[0], r[1]["x"]))(run_state_space(mt, th, ut, x, nl, options=opts)))
    g_ref = grads(lambda mt, th, ut, x: reference_state_space(mt, th, ut, x, nl)[:2])
    for name, gn, gr in zip(list("ABCDEFGHK") + ["theta", "u"], g_nb, g_ref):
        assert torch.count_nonzero(gr) > 0, name
        assert float((gn - gr).abs().max() / gr.abs().max()) < 1e-7, name


def _dk_against_mna(netlist, names, amp):
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


# the adjoint's one-pass device evaluation (core.backward_core): nl_eval_grad gives f and J and keeps the parameter
# VJP's local partials in the sample's work (the tape), nl_vjp_saved forms the VJP from them; both against torch
# autograd through Nonlinearity.torch_eval (the oracle of tests/test_kernels.py's compiled-gradient cases: diodes with
# charge, breakdown and a reversed one, NPN, PNP, the Koren triode with cut-off and zero bases of its powers)
_TAPE_LOOP = """

@njit(cache=True)
def tape_loop(v, theta, mu, f, J, g):
    work = np.zeros((v.shape[0], N_WORK))
    for n in range(v.shape[0]):
        nl_eval_grad(v[n], theta, f[n], J[n], work[n])
    for n in range(v.shape[0] - 1, -1, -1):  # the backward's order: the tapes of a block, read last first
        nl_vjp_saved(v[n], theta, mu[n], g, work[n])
"""


@pytest.mark.parametrize("name", ["diodes", "npn", "pnp", "koren"])
def test_one_pass_device_gradient_matches_torch(name):
    from test_kernels import _vjp_case, rel

    from circuitsim.kernels.autograd import theta_gradient
    from circuitsim.kernels.nonlinearity import load_generated

    nl, leaves, theta_fn, v, mu = _vjp_case(name, np.random.default_rng(21))
    theta = theta_fn(leaves)
    v, mu = v.reshape(-1, v.shape[-1]), mu.reshape(-1, mu.shape[-1])
    mod = load_generated(nl.nb_source + _TAPE_LOOP)
    f = np.zeros((len(v), nl.n_outputs))
    jac = np.zeros((len(v), nl.n_outputs, nl.n_ports))
    g = np.zeros(theta.numel())
    mod.tape_loop(np.ascontiguousarray(v), theta.detach().numpy(), np.ascontiguousarray(mu), f, jac, g)
    with torch.enable_grad():
        f_t, j_t = nl.torch_eval(torch.tensor(v), theta.detach(), jacobian=True)
    for k in range(nl.n_outputs):  # per output, relative to its scale (currents and charges)
        assert rel(f[:, k], f_t[:, k]) < 1e-13, k
        assert rel(jac[:, k], j_t[:, k]) < 1e-10, k
    g_t = theta_gradient(nl, theta, v[None], mu[None])
    raw = torch.autograd.grad(theta, list(leaves.values()), torch.from_numpy(g), retain_graph=True,
                              allow_unused=True, materialize_grads=True)
    raw_t = torch.autograd.grad(theta, list(leaves.values()), g_t, allow_unused=True, materialize_grads=True)
    nonzero = 0
    for k, a, b in zip(leaves, raw, raw_t):
        assert abs(float(a - b)) <= 1e-10 * abs(float(b)), (k, float(a), float(b))
        nonzero += float(b) != 0.0
    assert nonzero >= len(leaves) - 4  # only RB, RC, ISC, IKR (no effect here) may be zero
