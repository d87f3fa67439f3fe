"""A second formulation on the compiled core: trapezoidal MNA with Newton on all unknowns.

The core (``circuitsim.kernels.core``) is not DK-specific: here the unknowns are all the MNA
unknowns ``x`` (node voltages, branch currents), the state is the trapezoidal history ``h``
and (``formulations/mna.py``)::

    p = h + Bu s                     (G = I, H = Bu)
    g(x) = p - (G + 2/T Cm) x - (Wi + 2/T Wq) f(Nv x)           P = (Am, W, Nv)
    phi = [x; f(Nv x)],   y = out . x,   h' = 4/T (Cm x + Wq f) - h

Its hooks are written below (compiled into the generated module with the diode clipper's
nonlinearity).  Checks: the compiled forward and adjoint against (1) the torch autograd oracle
of the same recursion (:func:`circuitsim.kernels.reference.reference_step`) for the gradients
w.r.t. every matrix, the device parameters, the input and the initial state, within 1e-7
relative; (2) the plain-torch MNA formulation (``MNAModule``, its own Newton and autograd)
for the output and the gradients w.r.t. the component values and the input signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import circuitsim
from circuitsim.kernels import codegen
from circuitsim.kernels.autograd import run_step
from circuitsim.kernels.core import NF, NV, NZ, StepFormulation, nl_prepare, nl_vjp_theta
from circuitsim.kernels.linalg import mtv, mv, outer_acc
from circuitsim.kernels.reference import reference_step
from circuitsim.kernels.statespace import nl_eval
from circuitsim.solvers.dc import operating_point

DT = torch.float64
ROOT = Path(__file__).resolve().parents[1]
FS = 96000.0


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ----------------------------------------------------------------------------- the hooks (numba templates)


def fm_prepare(P, theta, lc):
    nl_prepare(theta, lc)


def fm_eval(P, p, z, theta, phi, dphi, g, M, work):
    # phi = [x; f(Nv x)], dphi = [I; J Nv], g = p - Am x - W f, M = -dg/dx = Am + W J Nv
    Am, W, Nv = P
    v = np.empty(NV)
    J = np.empty((NF, NV))
    mv(v, Nv, z, NV, NZ, False)
    nl_eval(v, theta, phi[NZ:], J, work)
    n2 = 0.0
    for i in range(NZ):
        phi[i] = z[i]
        for j in range(NZ):
            dphi[i, j] = 1.0 if i == j else 0.0
    for k in range(NF):
        for j in range(NZ):
            s = 0.0
            for q in range(NV):
                s += J[k, q] * Nv[q, j]
            dphi[NZ + k, j] = s
    for i in range(NZ):
        s = p[i]
        for j in range(NZ):
            s -= Am[i, j] * z[j]
        for k in range(NF):
            s -= W[i, k] * phi[NZ + k]
        g[i] = s
        n2 += s * s
        for j in range(NZ):
            m = Am[i, j]
            for k in range(NF):
                m += W[i, k] * dphi[NZ + k, j]
            M[i, j] = m
    return n2


def fm_limit(P, zold, znew, lc, work):
    pass  # no limiting: the fallbacks of the core are enough on this circuit


def fm_vjp(P, z, phi, theta, gphi, w, dP, dtheta, mq, want_theta, work):
    # r(x) = -Am x - W f(Nv x): dAm -= w x', dW -= w f', mu = gf - W' w, dNv += (J' mu) x'
    Am, W, Nv = P
    dAm, dW, dNv = dP
    v = np.empty(NV)
    J = np.empty((NF, NV))
    f = np.empty(NF)
    jm = np.empty(NV)
    mv(v, Nv, z, NV, NZ, False)
    nl_eval(v, theta, f, J, work)
    for k in range(NF):
        s = gphi[NZ + k]
        for i in range(NZ):
            s -= W[i, k] * w[i]
        mq[k] = s
    for i in range(NZ):
        for j in range(NZ):
            dAm[i, j] -= w[i] * z[j]
        for k in range(NF):
            dW[i, k] -= w[i] * f[k]
    mtv(jm, J, mq, NF, NV, False)
    outer_acc(dNv, jm, z, NV, NZ)
    if want_theta:
        nl_vjp_theta(v, theta, mq, dtheta, work)


def mna_step(n: int) -> StepFormulation:
    """The compiled side of trapezoidal MNA with ``n`` unknowns."""
    consts = f"NZ = {n}\nNPHI = NZ + NF\nFM_WORK = N_WORK\n"
    return StepFormulation("mna_trap", (fm_prepare, fm_eval, fm_limit, fm_vjp), consts)


# ----------------------------------------------------------------------------- torch side


def mna_maps(m, fs: float) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``lin = (A..H)`` and ``P = (Am, W, Nv)`` of the module docstring from the MNA matrices (torch)."""
    k2 = 2.0 * fs
    n, ns, nf = m.G.shape[0], m.Bu.shape[1], m.Wq.shape[1]
    eye = torch.eye(n, dtype=DT)
    out = torch.cat([m.out, torch.zeros(nf, dtype=DT)]).unsqueeze(0)
    lin = (-eye, torch.zeros(n, ns, dtype=DT), 2.0 * k2 * torch.cat([m.Cm, m.Wq], dim=1),
           torch.zeros(1, n, dtype=DT), torch.zeros(1, ns, dtype=DT), out, eye, m.Bu)
    return lin, (m.G + k2 * m.Cm, m.Wi + k2 * m.Wq, m.Nv)


def torch_residual(nl):
    """The same residual in torch (batched), for the oracle."""

    def residual(P, p, x, theta):
        Am, W, Nv = P
        f, jac = nl.torch_eval(x @ Nv.T, theta, jacobian=True)
        return torch.cat([x, f], dim=-1), p - x @ Am.T - f @ W.T, Am + W @ jac @ Nv

    return residual


@pytest.fixture(scope="module")
def clipper():
    model = circuitsim.load(ROOT / "netlists" / "diode_clipper.cir", method="mna", sample_rate=FS)
    module = codegen.step_module(model.topology.nonlinearity.nb_source, mna_step(model.topology.size))
    return model, module


def test_mna_on_core_adjoint_matches_torch_oracle(clipper):
    """Gradients w.r.t. all eight maps, P, the diode parameters, the input and the initial state, vs autograd.

    The device parameters enter through ``theta`` built from them in torch (its derived slots
    included), as in the formulations.
    """
    model, module = clipper
    nl = model.topology.nonlinearity
    m = model.matrices()
    lin0, P0 = mna_maps(m, FS)
    rng = np.random.default_rng(3)
    lin = [t.detach().clone().requires_grad_(True) for t in lin0]
    P = [t.detach().clone().requires_grad_(True) for t in P0]
    theta = m.theta
    devices = [p for k, p in model.named_parameters() if k.startswith("D1N914.")]
    assert len(devices) >= 2
    T = 60
    u = torch.tensor(1.5 * np.sin(np.arange(T) * 2 * np.pi * 2000 / FS)[None, :, None]
                     * np.array([1.0, 0.6])[:, None, None], requires_grad=True)
    x0 = torch.tensor(1e-6 * rng.standard_normal((2, lin0[0].shape[0])), requires_grad=True)
    wy = torch.tensor(rng.standard_normal((2, T, 1)))
    wx = torch.tensor(rng.standard_normal((2, lin0[0].shape[0])))
    leaves = [*lin, *P, *devices, u, x0]

    y, fin, stats = run_step(module, lin, P, theta, u, x0)
    assert stats["samples"] == 2 * T and stats["iterations"] > 2 * T  # Newton really ran, on the core
    loss = (y * wy).sum() + (fin["x"] * wx).sum()
    g_core = torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)

    y_ref, x_ref, _ = reference_step(lin, P, theta, u, x0, torch_residual(nl))
    assert rel(y, y_ref) < 1e-9 and rel(fin["x"], x_ref) < 1e-9
    loss_ref = (y_ref * wy).sum() + (x_ref * wx).sum()
    g_ref = torch.autograd.grad(loss_ref, leaves, allow_unused=True)
    names = ["A", "B", "C", "D", "E", "F", "G", "H", "Am", "W", "Nv"] + [f"D{i}" for i in range(len(devices))]
    names += ["u", "x0"]
    for name, a, b in zip(names, g_core, g_ref):
        b = torch.zeros_like(a) if b is None else b
        if b.abs().max() == 0:
            assert a.abs().max() == 0, name
            continue
        assert rel(a, b) < 1e-7, (name, rel(a, b))


def test_mna_on_core_matches_mna_formulation(clipper):
    """Output and gradients w.r.t. R1, C1, IS, N and the input against ``MNAModule`` (plain torch)."""
    model, module = clipper
    topo = model.topology
    T = 120
    x = torch.tensor(2.0 * np.sin(np.arange(T) * 2 * np.pi * 1500 / FS)[None, :], requires_grad=True)
    wy = torch.tensor(np.random.default_rng(5).standard_normal((1, T)))

    def compiled(x: torch.Tensor) -> torch.Tensor:
        m = model.matrices()
        s = model.source_values(m, x)
        with torch.no_grad():
            x_op, _ = operating_point(topo, m, s[:, 0])
        x_op = topo.implicit_step(m, x_op, m.G, m.Wi, s[:, 0] @ m.Bu.T)  # carries the DC gradient
        f_op = topo.nonlinearity.torch_eval(x_op @ m.Nv.T, m.theta)
        h0 = 2.0 * FS * (x_op @ m.Cm.T + f_op @ m.Wq.T)
        lin, P = mna_maps(m, FS)
        y, _, _ = run_step(module, lin, P, m.theta, s[:, 1:], h0, z_init=x_op.detach())
        return torch.cat([(x_op @ m.out).unsqueeze(1), y[..., 0]], dim=1)

    params = [p for _, p in model.named_parameters() if p.requires_grad]
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    assert {"R1", "C1"} <= set(names) and any(k.endswith(".IS") for k in names)
    y_core = compiled(x)
    g_core = torch.autograd.grad((y_core * wy).sum(), [*params, x])
    y_mna = model(x)
    g_mna = torch.autograd.grad((y_mna * wy).sum(), [*params, x])
    assert rel(y_core, y_mna) < 1e-9
    for name, a, b in zip([*names, "input"], g_core, g_mna):
        assert rel(a, b) < 1e-7, (name, rel(a, b))
