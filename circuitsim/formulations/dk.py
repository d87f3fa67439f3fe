"""The DK method: a nonlinear state-space model derived automatically from the MNA equations.

"Discretise first, then eliminate" (Holters & Zölzer, DAFx-11, §3; Yeh 2009, ch. 4): with
the trapezoidal companion form of :mod:`circuitsim.formulations.mna`,

    M x_n + W f(v_n) = Bu s_n + h_{n-1},   M = G + 2/T Cm,  W = Wi + 2/T Wq,  v = Nv x
    h_n = 4/T (Cm x_n + Wq f(v_n)) - h_{n-1}

``h`` lives in the span ``Q`` of the reactive incidence columns (capacitors, inductors and
device charges), so the state is ``q = Qᵀ h`` and eliminating ``x`` gives the DK form

    v = (Nv M⁻¹ Q) q + (Nv M⁻¹ Bu) s − (Nv M⁻¹ W) f(v)                 (Newton on v only)
    y = (c M⁻¹ Q) q + (c M⁻¹ Bu) s − (c M⁻¹ W) f(v)
    q' = (4/T Qᵀ Cm M⁻¹ Q − I) q + 4/T Qᵀ Cm M⁻¹ Bu s + 4/T Qᵀ (Wq − Cm M⁻¹ W) f(v)

Nonlinear charges (junction capacitances) are therefore modelled, not refused: they are
extra outputs of ``f``.  DK and MNA compute the same discrete system and agree to the
Newton tolerance.  The matrices are computed in torch from the component values, so
gradients reach every R, C, L and gain; the per-sample loop runs on the compiled core
(:mod:`circuitsim.kernels.core`, with DK's residual from :mod:`circuitsim.kernels.statespace`;
see "Plugging a formulation into the core" in ``docs/architecture.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from circuitsim.formulations.base import AbstractCircuitModule, Diagnostics
from circuitsim.kernels.autograd import run_state_space
from circuitsim.solvers.dc import operating_point
from circuitsim.system.mna_system import DTYPE, MNAMatrices


@dataclass
class StateSpaceMatrices:
    """A discrete-time nonlinear state-space model as the kernel runs it (x' = A x + B u + C f ...)."""

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    E: torch.Tensor
    F: torch.Tensor
    G: torch.Tensor
    H: torch.Tensor
    K: torch.Tensor

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return (self.A, self.B, self.C, self.D, self.E, self.F, self.G, self.H, self.K)


@dataclass
class DKMatrices(StateSpaceMatrices):
    """The DK model: the state-space matrices and the state basis ``Q``."""

    Q: torch.Tensor  # (n, n_states) state basis in MNA row space


def record_newton_stats(diag: Diagnostics, stats: dict[str, int]) -> None:
    """Copy the compiled kernel's Newton statistics (iterations, fallbacks) into ``diag``."""
    diag.newton_iterations = int(stats.get("iterations", 0))
    diag.max_iterations = int(stats.get("max_iterations", 0))
    for key in ("damped_fallbacks", "homotopy_fallbacks"):
        if stats.get(key):
            diag.fallbacks.append(f"{stats[key]} samples needed {key.replace('_', ' ')[:-1]}")


def state_basis(m: MNAMatrices) -> torch.Tensor:
    """Orthonormal basis of the span of the reactive columns: ``range([Cm, Wq])`` (volts, amperes rows).

    ``Cm = sum_k c_k a_k a_kᵀ`` spans exactly the incidence vectors ``a_k`` of its capacitors and
    inductors while every value is non-zero, so the basis computed at the netlist's values stays
    valid when values change.  Columns are normalised first so picofarads are not lost next to
    the unit entries of ``Wq``.
    """
    cols = torch.cat([m.Cm.detach(), m.Wq.detach()], dim=1).numpy()
    scale = np.abs(cols).max(axis=0)
    cols = cols[:, scale > 0] / scale[scale > 0]
    if cols.size == 0:
        return torch.zeros(m.G.shape[0], 0, dtype=DTYPE)
    u, sv, _ = np.linalg.svd(cols, full_matrices=False)
    rank = int(np.sum(sv > sv.max() * 1e-10))
    return torch.tensor(u[:, :rank], dtype=DTYPE)


def dk_matrices(m: MNAMatrices, sample_rate: float, q: torch.Tensor) -> DKMatrices:
    """Eliminate the MNA unknowns, leaving the state ``Qᵀ h`` and the port voltages (see module doc)."""
    k2 = 2.0 * sample_rate
    mm = m.G + k2 * m.Cm
    w = m.Wi + k2 * m.Wq
    rhs = torch.cat([q, m.Bu, w], dim=1)
    sol = torch.linalg.solve(mm, rhs)
    ns, nu = q.shape[1], m.Bu.shape[1]
    mq, mb, mw = sol[:, :ns], sol[:, ns : ns + nu], sol[:, ns + nu :]
    z = 2.0 * k2 * (q.T @ m.Cm)
    c = m.out.unsqueeze(0)
    return DKMatrices(
        A=z @ mq - torch.eye(ns, dtype=DTYPE),
        B=z @ mb,
        C=2.0 * k2 * (q.T @ m.Wq) - z @ mw,
        D=c @ mq,
        E=c @ mb,
        F=-(c @ mw),
        G=m.Nv @ mq,
        H=m.Nv @ mb,
        K=-(m.Nv @ mw),
        Q=q,
    )


@dataclass
class DKState:
    """Where a block ended: the DK state and the last port voltages (for the Newton predictor)."""

    q: torch.Tensor
    v: torch.Tensor | None = None
    samples: int = 0  # samples already processed (so errors name the sample of the whole stream)


class DKModule(AbstractCircuitModule):
    """Nonlinear state-space (DK method) formulation with the compiled per-sample core."""

    method = "dk"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._q = state_basis(self.topology.assemble(self.topology.leaf_values()))

    def dk(self) -> tuple[MNAMatrices, DKMatrices]:
        """MNA and DK matrices at the current parameter values (differentiable)."""
        m = self.matrices()
        return m, self.cached("dk", lambda: dk_matrices(m, self.sample_rate, self._q))

    def _simulate(self, u: torch.Tensor, state: DKState | None) -> tuple[torch.Tensor, DKState]:
        m, d = self.dk()
        s = self.source_values(m, u)
        diag = Diagnostics(samples=u.shape[1])
        k2 = 2.0 * self.sample_rate
        if state is None:
            with torch.no_grad():
                x_op, diag.operating_point = operating_point(self.topology, m, s[:, 0])
            # implicit-function step so the operating point carries its gradient
            x_op = self.topology.implicit_step(m, x_op, m.G, m.Wi, s[:, 0] @ m.Bu.T)
            f_op = self.topology.nonlinearity.torch_eval(x_op @ m.Nv.T, m.theta)
            h0 = k2 * (x_op @ m.Cm.T + f_op @ m.Wq.T)
            q0 = h0 @ d.Q
            y0 = (x_op @ m.out).unsqueeze(1)
            y, final, stats = run_state_space(
                d.as_tuple(), m.theta, s[:, 1:], q0, self.topology.nonlinearity,
                sample_rate=self.sample_rate, v_init=(x_op @ m.Nv.T).detach(), sample_offset=1,
            )
            y = torch.cat([y0, y[..., 0]], dim=1)
        else:
            y, final, stats = run_state_space(
                d.as_tuple(), m.theta, s, state.q, self.topology.nonlinearity,
                sample_rate=self.sample_rate, v_init=state.v, sample_offset=state.samples,
            )
            y = y[..., 0]
        record_newton_stats(diag, stats)
        self.diagnostics = diag
        done = (0 if state is None else state.samples) + u.shape[1]
        return y, DKState(final["x"], final.get("v"), done)
