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

import torch

from circuitsim.formulations.base import AbstractCircuitModule, Diagnostics
from circuitsim.solvers.dc import junction_limiter, operating_point
from circuitsim.solvers.newton import NewtonError, newton
from circuitsim.solvers.substep import (
    Boundary,
    Remap,
    Runner,
    SubstepCounts,
    SubstepReport,
    merge_stats,
    record_substeps,
    run_items_substepped,
)
from circuitsim.system.mna_system import MNAMatrices

# Newton iterations of the junction-limited restart from the previous solution: where the sample can still
# be split, a sample that has not converged in SPLIT_ITER is split, and at the finest split it may take
# FINAL_ITER.  A split changes the discrete system, so it is kept for samples whose Newton fails, as in DK
# (solvers/substep.py): with 10, MNA split samples that DK solves unsplit (the Fuzz Face's plucks moved 2.8e-3
# away from DK, the DS-1's sweep 0.95 V), although on the BA4558 dual stage the earlier split is closer to ngspice
SPLIT_ITER, FINAL_ITER = 100, 500


@dataclass
class MNAState:
    """Where a block of samples ended: trapezoidal history ``h`` and the last two solutions.

    ``sources`` (batch, Nu), the source values at the last sample, and ``charge``, the charges
    ``z = Cm x + Wq f_q`` there (coulombs / webers; recomputed from ``x`` when absent), are what a
    substep of the next block's first sample needs; without ``sources`` that block is not substepped.
    """

    h: torch.Tensor
    x: torch.Tensor
    x_prev: torch.Tensor
    samples: int = 0  # samples already processed (so errors name the sample of the whole stream)
    sources: torch.Tensor | None = None
    charge: torch.Tensor | None = None
    substepped: int = 0  # substepped samples so far


@dataclass
class MNADiagnostics(SubstepCounts, Diagnostics):
    """MNA's diagnostics: the Newton work, and how often a sample had to be split into substeps (as DK's)."""


class MNAModule(AbstractCircuitModule):
    """Modified nodal analysis with trapezoidal integration: Newton per sample in Python, gradients by
    torch autograd (the oracle of the compiled formulations).

    Where Newton fails after its fallbacks, the sample is split into up to ``max_substeps``
    trapezoidal substeps (:mod:`circuitsim.solvers.substep`); ``diagnostics.substepped`` counts them.
    """

    method = "mna"
    inverts_companion = False  # its Newton matrix holds the devices' conductances, GMIN included
    max_substeps = 64

    def _simulate(self, u: torch.Tensor, state: MNAState | None = None) -> tuple[torch.Tensor, MNAState]:
        m = self.matrices()
        topo = self.topology
        nl = topo.nonlinearity
        fs = self.sample_rate
        s = self.source_values(m, u)  # (batch, time, n_sources)
        diag = MNADiagnostics(samples=u.shape[1])
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (m.G, m.Cm, m.theta, s))

        device_eval = topo.device_evaluator(m.theta)

        def charges(x: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
            """``z = Cm x + Wq f_q(Nv x)`` (``f``: the device outputs at ``x`` when known, without autograd)."""
            if grad:
                f = nl.torch_eval(x @ m.Nv.T, m.theta)
            elif f is None:
                f = device_eval(x @ m.Nv.T)[0]
            return x @ m.Cm.T + f @ m.Wq.T

        if state is None:
            # DC operating point with the first input sample, then one implicit step for its gradient
            with torch.no_grad():
                x_op, diag.operating_point = operating_point(topo, m, s[:, 0])
            x = topo.implicit_step(m, x_op, m.G, m.Wi, s[:, 0] @ m.Bu.T)
            z = charges(x)  # at DC the reactive currents are 0: h0 = 2/T z0
            start = Boundary(2.0 * fs * z, z, torch.stack([x.detach(), x.detach()], 1), s[:, 0])
            head, rest, offset, before = (x @ m.out).unsqueeze(1), s[:, 1:], 1, 0
        else:
            z = state.charge if state.charge is not None else charges(state.x)
            start = Boundary(state.h, z, torch.stack([state.x, state.x_prev], 1), state.sources)
            head, rest, offset, before = None, s, state.samples, state.substepped
        max_split = self.max_substeps if start.sources is not None else 1
        run, remap = self._runner(m, device_eval, charges, diag, max_split)
        try:  # the whole batch at once; substeps (item by item) from the first sample where Newton fails
            y, end, stats = run(1, rest, start, offset)
            report = SubstepReport(stats=[stats])
        except NewtonError as err:
            if max_split == 1:
                raise
            y0, b0, st0 = err.partial
            done = y0.shape[1]
            y1, end, report = run_items_substepped(run, remap, rest[:, done:], b0, offset + done, max_split)
            y, report.stats = torch.cat([y0, y1], dim=1), [st0, *report.stats]
        if head is not None:
            y = torch.cat([head, y], dim=1)
        st = merge_stats(report.stats)
        diag.newton_iterations, diag.max_iterations = st.get("newton_iterations", 0), st.get("max_iterations", 0)
        record_substeps(diag, report, before)
        self.diagnostics = diag
        done = (0 if state is None else state.samples) + u.shape[1]
        return y, MNAState(end.state, end.warm[:, 0], end.warm[:, 1], done, end.sources, end.charge,
                           diag.substepped_total)

    def _runner(self, m: MNAMatrices, device_eval, charges, diag: MNADiagnostics, max_split: int  # noqa: ANN001
                ) -> tuple[Runner, Remap]:
        """MNA's run of samples at ``split`` x the rate, and the exact map of its state between two rates.

        The boundary's ``state`` is the history ``h``, its ``charge`` the charges ``z`` of the last
        solution and its ``warm`` the last two solutions (batch, 2, n), from which the next sample's
        Newton starts at their linear extrapolation.  With ``h = 2/T z + r`` (``r`` the reactive
        currents, the same at every rate; module doc), the history of the same point at the step
        ``T'`` is ``h + (2/T' - 2/T) z``; the extrapolation's earlier point moves to the new step.
        A failing sample raises :class:`NewtonError` with the samples before it kept (``partial``).
        """
        topo, fs = self.topology, self.sample_rate
        limit = junction_limiter(topo, m.Nv)
        nv_d = m.Nv.detach()
        mats: dict[int, tuple[torch.Tensor, ...]] = {}

        def matrices(split: int) -> tuple[torch.Tensor, ...]:
            if split not in mats:
                k = 2.0 * split * fs
                a_mat, w_mat = m.G + k * m.Cm, m.Wi + k * m.Wq
                mats[split] = (a_mat, w_mat, a_mat.detach(), w_mat.detach(), topo.jacobian(w_mat.detach(), nv_d))
            return mats[split]

        def run(split: int, s: torch.Tensor, b: Boundary, offset: int) -> tuple[torch.Tensor, Boundary, dict]:
            a_mat, w_mat, a_d, w_d, jacobian = matrices(split)
            k = 2.0 * split * fs
            h, z, x_prev, x_prev2 = b.state, b.charge, b.warm[:, 0], b.warm[:, 1]
            limited_iter = SPLIT_ITER if 2 * split <= max_split else FINAL_ITER
            ys: list[torch.Tensor] = []
            stats = {"newton_iterations": 0, "max_iterations": 0}
            last: list[torch.Tensor] = []  # the last point fn evaluated, and the device outputs there

            for n in range(s.shape[1]):
                rhs = s[:, n] @ m.Bu.T + h
                rhs_d = rhs.detach()

                def fn(xx: torch.Tensor, rhs_d: torch.Tensor = rhs_d) -> tuple[torch.Tensor, torch.Tensor]:
                    f, jf = device_eval(xx @ nv_d.T)
                    last[:] = [xx, f]
                    return xx @ a_d.T + f @ w_d.T - rhs_d, jacobian(a_d, jf)

                with torch.no_grad():
                    # plain Newton from a linear extrapolation; then junction-limited Newton from the last solution
                    r = newton(fn, 2 * x_prev - x_prev2, max_iter=50)
                    its = r.iterations
                    if not r.converged:
                        if split == 1:
                            diag.fallbacks.append(f"sample {offset + n}: restarted limited Newton from the "
                                                  "previous solution")
                        r = newton(fn, x_prev, limit=limit, max_iter=limited_iter)
                        its += r.iterations
                stats["newton_iterations"] += its
                stats["max_iterations"] = max(stats["max_iterations"], its)
                if not r.converged:
                    at = offset + n
                    err = NewtonError(f"residual {r.residual:.3g} after {r.iterations} iterations", at,
                                      at / (split * fs))
                    y = torch.stack(ys, dim=1) if ys else s.new_zeros(s.shape[0], 0)
                    err.partial = (y, Boundary(h, z, torch.stack([x_prev, x_prev2], 1),
                                               s[:, n - 1] if n else b.sources), stats)
                    raise err
                x = topo.implicit_step(m, r.x, a_mat, w_mat, rhs)
                z = charges(x, last[1] if last and last[0] is r.x else None)
                h = 2.0 * k * z - h  # h_n = 4/T z_n - h_{n-1}
                ys.append(x @ m.out)
                x_prev2, x_prev = x_prev, r.x
            y = torch.stack(ys, dim=1) if ys else s.new_zeros(s.shape[0], 0)
            return y, Boundary(h, z, torch.stack([x_prev, x_prev2], 1), s[:, -1] if s.shape[1] else b.sources), stats

        def remap(b: Boundary, k_from: int, k_to: int) -> Boundary:
            x1, x0 = b.warm[:, 0], b.warm[:, 1]
            warm = torch.stack([x1, x1 - (x1 - x0) * (k_from / k_to)], 1)  # the earlier point one new step back
            return Boundary(b.state + (2.0 * fs * (k_to - k_from)) * b.charge, b.charge, warm, b.sources)

        return run, remap

