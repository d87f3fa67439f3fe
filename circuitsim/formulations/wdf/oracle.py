"""The plain-torch WDF: waves propagated adaptor by adaptor, sample by sample (the gradient oracle).

Per sample: the up-pass (:func:`~circuitsim.formulations.wdf.waves.up_pass`) on the numbers of
the states and sources, Newton at the root on ``v = p + K f(v)`` (no autograd through the
iterations), one implicit-function step so the solution carries ``dv/dθ = (I - K J)⁻¹ ∂(p + K f)/∂θ``,
then the down-pass to the leaves.  Every operation is torch, so autograd gives the gradient of
the output with respect to every component value and the input: the reference for the compiled
path.  Slow (hundreds of tensor operations per sample); for tests on short signals.
"""

from __future__ import annotations

import torch

from circuitsim.formulations.wdf.realize import initial_state, step_rows
from circuitsim.formulations.wdf.waves import node_voltage
from circuitsim.solvers.dc import operating_point
from circuitsim.solvers.newton import NewtonError
from circuitsim.system.mna_system import DTYPE


def _newton(nl, theta: torch.Tensor, p: torch.Tensor, K: torch.Tensor, v0: torch.Tensor,  # noqa: ANN001
            tol: float = 1e-14, max_iter: int = 100) -> torch.Tensor:
    """Solve ``v = p + K f(v)`` for v (batch, Nv) without autograd, from ``v0``; step limited to 0.1 V."""
    v = v0.clone()
    eye = torch.eye(p.shape[1], dtype=DTYPE)
    for _ in range(max_iter):
        f, J = nl.torch_eval(v, theta, jacobian=True)
        r = v - p - f @ K.T
        jac = eye - K @ J
        dv = torch.linalg.solve(jac, r.unsqueeze(-1)).squeeze(-1)
        dv = dv.clamp(-0.1, 0.1)
        v = v - dv
        if float(dv.abs().max()) <= tol * (1.0 + float(v.abs().max())):
            return v
    raise NewtonError(f"plain-torch WDF root: no convergence in {max_iter} iterations")


def simulate_oracle(model, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Output volts (batch, T) of ``model`` (a :class:`WDFModule`) for input volts (batch, T), in plain torch."""
    u, squeeze = model._as_batch(x)
    topo, tree, lay, fs = model.topology, model.tree, model.layout, model.sample_rate
    m = model.matrices()
    ad = model.adapter.adapt(model.leaves())
    s = model.source_values(m, u)  # (batch, T, Nu)
    nl = topo.nonlinearity
    with torch.no_grad():
        x_op, _ = operating_point(topo, m, s[:, 0])
    x_op = topo.implicit_step(m, x_op, m.G, m.Wi, s[:, 0] @ m.Bu.T)
    v = x_op @ m.Nv.T
    f_op = nl.torch_eval(v, m.theta) if nl.n_outputs else x_op[:, :0]
    state = initial_state(tree, topo, ad, lay, x_op, f_op, fs).T  # (Nx, batch)
    ys = [x_op @ m.out]
    v = v.detach()
    eye = torch.eye(nl.n_ports, dtype=DTYPE)
    for n in range(1, u.shape[1]):
        src = s[:, n].T
        pr, p, K, finish, sigma = step_rows(tree, topo, ad, lay, fs, topo.output, state, src)
        if nl.n_ports:
            pt = p.T
            with torch.no_grad():
                v_star = _newton(nl, m.theta.detach(), pt.detach(), K.detach(), v)
            f, J = nl.torch_eval(v_star, m.theta, jacobian=True)
            res = v_star - pt - f @ K.T
            v_g = v_star - torch.linalg.solve((eye - K @ J).detach(), res.unsqueeze(-1)).squeeze(-1)
            f = nl.torch_eval(v_g, m.theta)
            v = v_star
            finish(f.T)
        else:
            f = src[:0].T
            finish(src[:0])
        nxt = [pr.beta[id(lf)] for lf in tree.states]
        for o in lay.charges:
            nxt.append(4.0 * fs * f[:, o] - sigma[o])
        state = torch.stack(nxt) if nxt else state
        ys.append(node_voltage(pr.known, topo.output, src[0]))
    y = torch.stack(ys, dim=1)
    return y[0] if squeeze else y


__all__ = ["simulate_oracle"]
