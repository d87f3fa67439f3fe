"""MNA transient: trapezoidal companion models and damped Newton on all unknowns, per sample.

The trapezoidal rule is applied row by row to ``z = Cm x + Wq f_q(Nv x)`` (charges and
fluxes), which is what SPICE's per-element companion models do (Nagel 1975; ngspice
``NIintegrate`` with method=trap)::

    dz_n = 2/T (z_n - z_{n-1}) - dz_{n-1}
    G x_n + Wi f_i(v_n) + dz_n = Bu s_n          =>   (G + 2/T Cm) x_n + W f(v_n) = Bu s_n + h_{n-1}
    h_n = 4/T z_n - h_{n-1},   h_0 = 2/T z(x_op)   (starting from the DC operating point)

with ``W = Wi + 2/T Wq``.  ``MNAModule`` is the independent oracle of the compiled formulations
(DK, WDF, port-Hamiltonian on :mod:`circuitsim.kernels.core`): its Newton iterations run per
sample in Python with batched torch linear algebra (the device currents and Jacobians inside
them come from the compiled nonlinearity), and its gradients come from torch autograd through
one implicit-function step per sample with the torch device equations, never from a compiled
adjoint.  Slow (``benchmarks/bench_mna.py``); the same trapezoidal system compiled on the core
is the second formulation of ``tests/test_core.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from circuitsim.formulations.base import AbstractCircuitModule, Diagnostics
from circuitsim.solvers.dc import junction_limiter, operating_point
from circuitsim.solvers.newton import NewtonError, newton


@dataclass
class MNAState:
    """Where a block of samples ended: trapezoidal history ``h`` and the last two solutions."""

    h: torch.Tensor
    x: torch.Tensor
    x_prev: torch.Tensor
    samples: int = 0  # samples already processed (so errors name the sample of the whole stream)


class MNAModule(AbstractCircuitModule):
    """Modified nodal analysis with trapezoidal integration: Newton per sample in Python, gradients by
    torch autograd (the oracle of the compiled formulations)."""

    method = "mna"
    inverts_companion = False  # its Newton matrix holds the devices' conductances, GMIN included

    def _simulate(self, u: torch.Tensor, state: MNAState | None = None) -> tuple[torch.Tensor, MNAState]:
        m = self.matrices()
        topo = self.topology
        nl = topo.nonlinearity
        T = 1.0 / self.sample_rate
        s = self.source_values(m, u)  # (batch, time, n_sources)
        b = s @ m.Bu.T  # (batch, time, n)
        diag = Diagnostics(samples=u.shape[1])
        limit = junction_limiter(topo, m.Nv)
        a_mat = m.G + (2.0 / T) * m.Cm
        w_mat = m.Wi + (2.0 / T) * m.Wq
        nv_d, theta_d, a_d, w_d = m.Nv.detach(), m.theta.detach(), a_mat.detach(), w_mat.detach()

        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (m.G, m.Cm, m.theta, b))
        theta_np = theta_d.numpy()

        def device_eval(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """f and df/dv without autograd: the compiled device code (µs) instead of torch ops (~0.3 ms)."""
            if nl.n_outputs == 0:
                return nl.torch_eval(v, theta_d, jacobian=True)
            try:
                pairs = [nl.eval_numpy(vb, theta_np) for vb in v.numpy()]
            except ArithmeticError:  # the compiled code raises where torch gives inf/NaN (a step to 1e289 V):
                nan = torch.full((v.shape[0], nl.n_outputs), float("nan"), dtype=v.dtype)  # Newton falls back
                return nan, nan.unsqueeze(-1).expand(-1, -1, v.shape[-1])
            return (torch.from_numpy(np.stack([p[0] for p in pairs])),
                    torch.from_numpy(np.stack([p[1] for p in pairs])))

        def charges(x):
            f = nl.torch_eval(x @ m.Nv.T, m.theta) if grad else device_eval(x @ nv_d.T)[0]
            return x @ m.Cm.T + f @ m.Wq.T

        ys = []
        first, offset = 0, 0
        if state is None:
            # DC operating point with the first input sample, then one implicit step for its gradient
            with torch.no_grad():
                x_op, diag.operating_point = operating_point(topo, m, s[:, 0])
            x = topo.implicit_step(m, x_op, m.G, m.Wi, b[:, 0])
            h = (2.0 / T) * charges(x)
            ys.append(x @ m.out)
            x_prev = x_prev2 = x.detach()
            first = 1
        else:
            h, x_prev, x_prev2 = state.h, state.x, state.x_prev
        offset = 0 if state is None else state.samples
        for n in range(first, u.shape[1]):
            rhs = b[:, n] + h
            rhs_d = rhs.detach()

            def fn(xx, rhs_d=rhs_d):
                f, jf = device_eval(xx @ nv_d.T)
                return xx @ a_d.T + f @ w_d.T - rhs_d, a_d + w_d @ jf @ nv_d

            with torch.no_grad():
                # plain Newton from a linear extrapolation; then junction-limited Newton from the last solution
                r = newton(fn, 2 * x_prev - x_prev2, max_iter=50)
                if not r.converged:
                    diag.fallbacks.append(f"sample {n}: restarted limited Newton from the previous solution")
                    r = newton(fn, x_prev, limit=limit, max_iter=500)
                if not r.converged:
                    k = offset + n
                    raise NewtonError(f"residual {r.residual:.3g} after {r.iterations} iterations", k, k * T)
            diag.newton_iterations += r.iterations
            diag.max_iterations = max(diag.max_iterations, r.iterations)
            x = topo.implicit_step(m, r.x, a_mat, w_mat, rhs)
            h = (4.0 / T) * charges(x) - h
            ys.append(x @ m.out)
            x_prev2, x_prev = x_prev, r.x
        self.diagnostics = diag
        return torch.stack(ys, dim=1), MNAState(h, x_prev, x_prev2, offset + u.shape[1])
