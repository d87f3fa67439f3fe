"""``PHSModule``: the port-Hamiltonian formulation as a torch module on the compiled core.

The structure (storage, dissipation, ports, J) comes from :func:`.structure.analyse`; the step
is the discrete-gradient scheme of :mod:`.step`, run as a nonlinear state-space recursion by
:func:`circuitsim.kernels.autograd.run_state_space` (compiled Newton per sample, compiled
implicit-function adjoint).  :func:`reference_simulate` is the same step in plain torch, the
gradient oracle of the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitsim.formulations.base import AbstractCircuitModule, Diagnostics
from circuitsim.formulations.phs.energy import EnergyReport, PowerMap, stored_energy
from circuitsim.formulations.phs.step import StepMatrices, step_matrices, storage_of, storage_values
from circuitsim.formulations.phs.structure import PHStructure, analyse
from circuitsim.kernels.autograd import run_state_space
from circuitsim.netlist import NetlistError
from circuitsim.solvers.dc import operating_point
from circuitsim.system.mna_system import DTYPE, MNAMatrices


@dataclass
class PHSState:
    """Where a block ended: storage state ``s`` (volts, amperes), last source values, Newton warm starts."""

    s: torch.Tensor  # (batch, ns)
    src: torch.Tensor  # (batch, n_sources) source values at the last sample
    v: torch.Tensor | None = None
    v_inst: torch.Tensor | None = None
    samples: int = 0
    stored: torch.Tensor | None = None  # (batch,) H at the last sample (for the energy residual)


class PHSModule(AbstractCircuitModule):
    """Port-Hamiltonian formulation (Falaize & Hélie 2016): discrete gradient, exact power balance."""

    method = "phs"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        topo = self.topology
        charged = [b for b in topo.blocks if any(o >= 0 and topo.outputs[o][1] for o in _block_outputs(b))]
        if charged:
            name = next(d.element.name for d in topo.devices)
            for d, blk in zip(topo.devices, [b for b in topo.blocks if hasattr(b, "outs")]):
                if blk in charged:
                    name = d.element.name
                    break
            raise NetlistError(
                f"{name}: junction charges are nonlinear storage, which --method phs does not simulate yet "
                "(use --method dk, or drop the model's charge parameters)", None)
        self.structure: PHStructure = analyse(topo)
        self.storage = storage_of(topo)
        self.record_energy = False
        self.energy_sink: Callable[[EnergyReport], None] | None = None

    # ------------------------------------------------------------ structure
    def describe(self) -> str:
        """Storage, dissipation and port lists and J's size (``circuitsim describe --method phs``)."""
        return self.structure.describe()

    def storage_coefficients(self) -> torch.Tensor:
        """Signed storage values ``c`` (farads; minus henries for inductors), differentiable."""
        return storage_values(self.topology, self.storage, self.leaves())

    def ph_matrices(self, energy: bool = False) -> tuple[MNAMatrices, torch.Tensor, StepMatrices]:
        m = self.matrices()
        c = self.storage_coefficients()
        return m, c, self.cached(f"phs{int(energy)}",
                                 lambda: step_matrices(m, self.storage, c, self.sample_rate, energy))

    # ------------------------------------------------------------ simulation
    def initial_state(self, u0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Diagnostics]:
        """Storage state at the DC operating point for input ``u0`` (batch,), with its gradient; and x_op."""
        m = self.matrices()
        s0 = self.source_values(m, u0.unsqueeze(1))[:, 0]
        diag = Diagnostics()
        with torch.no_grad():
            x_op, diag.operating_point = operating_point(self.topology, m, s0)
        x_op = self.topology.implicit_step(m, x_op, m.G, m.Wi, s0 @ m.Bu.T)
        return x_op @ self.storage.incidence, x_op, diag

    def _simulate(self, u: torch.Tensor, state: PHSState | None) -> tuple[torch.Tensor, PHSState]:
        return self.run(u, state)

    def run(
        self, u: torch.Tensor, state: PHSState | None = None, s_init: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, PHSState]:
        """Output volts (batch, time) and the end state; ``s_init`` replaces the DC state (passivity tests)."""
        energy = self.record_energy or self.energy_sink is not None
        m, c, sm = self.ph_matrices(energy)
        src = self.source_values(m, u)
        diag = Diagnostics(samples=u.shape[1])
        nl = self.topology.nonlinearity
        first = None
        if state is None:
            s0, x_op, d0 = self.initial_state(u[:, 0])
            diag.operating_point = d0.operating_point
            if s_init is not None:
                s0 = s_init.to(DTYPE).expand_as(s0)
            prev_src, s_prev, v0, vi0, offset = src[:, 0], s0, (x_op @ m.Nv.T).detach(), None, 0
            first = (s0, src[:, 0], x_op)
            steps = src[:, 1:]
        else:
            prev_src, s_prev, v0, vi0, offset = state.src, state.s, state.v, state.v_inst, state.samples
            steps = src
        ns = s_prev.shape[1]
        if steps.shape[1] == 0:
            y_steps = torch.zeros(u.shape[0], 0, dtype=DTYPE)
            s_new, v_end, vi_end, ys, mean = s_prev, v0, vi0, None, None
        else:
            mean = 0.5 * (steps + torch.cat([prev_src.unsqueeze(1), steps[:, :-1]], dim=1))
            ys, final, stats = run_state_space(
                sm.step, m.theta, mean, s_prev, nl, sample_rate=self.sample_rate, v_init=v0,
                sample_offset=offset + (1 if state is None else 0))
            diag.newton_iterations += int(stats.get("iterations", 0))
            diag.max_iterations = int(stats.get("max_iterations", 0))
            s_traj = ys[..., :ns]
            s_new, v_end = final["x"], final["v"]
            u2 = torch.cat([s_traj, steps], dim=-1)
            if sm.instant_nonlinear:
                y2, fin2, st2 = run_state_space(
                    sm.instant, m.theta, u2, torch.zeros(u.shape[0], 1, dtype=DTYPE), nl,
                    sample_rate=self.sample_rate, v_init=vi0 if vi0 is not None else v0,
                    sample_offset=offset + (1 if state is None else 0))
                y_steps, vi_end = y2[..., 0], fin2["v"]
                diag.newton_iterations += int(st2.get("iterations", 0))
            else:
                y_steps, vi_end = u2 @ sm.instant[4][0], vi0
        if first is not None:
            y0 = (first[2] @ m.out).unsqueeze(1)
            y = torch.cat([y0, y_steps], dim=1)
        else:
            y = y_steps
        stored = state.stored if state is not None else None
        if energy:
            with torch.no_grad():
                rep, stored = self._energy(m, c, first, mean, ys, offset, stored)
            if self.energy_sink is not None:
                self.energy_sink(rep)
            self.last_energy = rep
        self.diagnostics = diag
        last_src = src[:, -1] if src.shape[1] else prev_src
        return y, PHSState(s_new, last_src, v_end, vi_end, offset + u.shape[1], stored)

    def _energy(self, m, c, first, mean, ys, offset, stored):  # noqa: ANN001, ANN202
        """Energy rows (batch item 0) for this block; returns the report and the last H (batch,)."""
        pm = self.cached("powermap", lambda: PowerMap(self.topology, self.leaves()))
        c = c.detach()
        nl = self.topology.nonlinearity
        T = 1.0 / self.sample_rate
        h_rows, d_rows, p_rows = [], [], []
        if first is not None:  # sample 0: the DC operating point (no storage flow)
            s0, src0, x_op = (t.detach() for t in first)
            f0 = nl.torch_eval(x_op @ m.Nv.T.detach(), m.theta.detach())
            h_rows.append(stored_energy(s0, c).unsqueeze(1))
            d_rows.append(pm.dissipated(x_op, f0).unsqueeze(1))
            p_rows.append(pm.ports(x_op, src0).unsqueeze(1))
        if ys is not None and ys.shape[1]:
            ns, n = c.shape[0], m.G.shape[0]
            ys = ys.detach()
            s_traj, xbar, f = ys[..., :ns], ys[..., ns : ns + n], ys[..., ns + n :]
            h_rows.append(stored_energy(s_traj, c))
            d_rows.append(pm.dissipated(xbar, f))
            p_rows.append(pm.ports(xbar, mean.detach()))
        H = torch.cat(h_rows, dim=1)
        Pd = torch.cat(d_rows, dim=1)
        Pp = torch.cat(p_rows, dim=1)
        h_before = torch.cat([H[:, :1] if stored is None else stored.unsqueeze(1), H[:, :-1]], dim=1)
        dH = (H - h_before) / T
        res = dH + Pd - Pp
        t = (offset + torch.arange(H.shape[1], dtype=DTYPE)) * T
        rep = EnergyReport(t.numpy(), H[0].numpy(), Pd[0].numpy(), Pp[0].numpy(), res[0].numpy())
        return rep, H[:, -1]


def _block_outputs(block) -> tuple[int, ...]:  # noqa: ANN001
    outs = getattr(block, "outs", None)
    if outs is not None:
        return tuple(outs)
    return (getattr(block, "out", -1),)


__all__ = ["PHSModule", "PHSState"]
