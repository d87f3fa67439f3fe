"""``PHSModule``: the port-Hamiltonian formulation as a torch module on the compiled core.

The structure (storage, dissipation, ports, J) comes from :func:`.structure.analyse`; the step
is the discrete-gradient scheme of :mod:`.step`, run as a nonlinear state-space recursion by
:func:`circuitsim.kernels.autograd.run_state_space` (compiled Newton per sample, compiled
implicit-function adjoint).  :func:`.reference.reference_simulate` is the same step in plain
torch, the gradient oracle of the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitsim.formulations.base import AbstractCircuitModule, Diagnostics
from circuitsim.formulations.phs.charges import damping
from circuitsim.formulations.phs.energy import EnergyReport, PowerMap, stored_energy_delta
from circuitsim.formulations.phs.kernel import ph_module, theta_with_options
from circuitsim.formulations.phs.step import StepMatrices, step_matrices, storage_of, storage_values
from circuitsim.formulations.phs.structure import PHStructure, analyse
from circuitsim.kernels.autograd import run_state_space
from circuitsim.kernels.core import KernelOptions
from circuitsim.solvers.dc import operating_point
from circuitsim.system.mna_system import DTYPE, MNAMatrices


@dataclass
class PHSState:
    """Where a block ended: storage deviation ``δs`` from the DC point, the DC point, warm starts."""

    ds: torch.Tensor  # (batch, ns + 2 nq): linear storage minus its DC values (V, A), junction voltages w, charges Q
    src: torch.Tensor  # (batch, n_sources) source values at the last sample
    op: tuple[torch.Tensor, ...]  # (s_op, src_op, v_op, f_op, x_op) of the DC operating point
    v: torch.Tensor | None = None
    v_inst: torch.Tensor | None = None
    samples: int = 0
    stored: torch.Tensor | None = None  # (batch,) H - H_op at the last sample (for the energy residual)


class PHSModule(AbstractCircuitModule):
    """Port-Hamiltonian formulation (Falaize & Hélie 2016): discrete gradient, exact power balance."""

    method = "phs"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        topo = self.topology
        self.structure: PHStructure = analyse(topo)
        self.storage = storage_of(topo)  # junction charges a storage law cannot model are refused here
        self.record_energy = False
        self.energy_sink: Callable[[EnergyReport], None] | None = None
        self.last_energy: EnergyReport | None = None
        # Newton on the coupled ports alone, the damped storage's earlier values read once a sample (kernel.py);
        # False: the core's Newton on every port of the step (benchmarks/bench_phs.py's A/B)
        self.reduced_solve = True
        # with the reduced solve: the diode pair's explicit root and a fixed point on the damped capacitors' h before
        # the Newton, where the step has that structure (kernel.py, explicit_spec); False: Newton alone (the A/B)
        self.explicit_solve = True
        # the step's Newton options instead of step_options()'s choice (benchmarks/bench_phs.py --breakdown)
        self.newton_options: KernelOptions | None = None

    # ------------------------------------------------------------ structure
    def describe(self) -> str:
        """Storage, dissipation and port lists and J's size (``circuitsim describe --method phs``)."""
        return self.structure.describe()

    def storage_coefficients(self) -> torch.Tensor:
        """Signed storage values ``c`` (farads; minus henries for inductors), differentiable."""
        return storage_values(self.topology, self.storage, self.leaves())

    def ph_matrices(self, energy: bool = False) -> tuple[MNAMatrices, torch.Tensor, StepMatrices]:
        """MNA matrices, storage values and the step's state-space matrices (differentiable, cached)."""
        m = self.matrices()
        c = self.storage_coefficients()
        return m, c, self.cached(f"phs{int(energy)}",
                                 lambda: step_matrices(m, self.storage, c, self.sample_rate, energy))

    # ------------------------------------------------------------ simulation
    def dc_point(self, m: MNAMatrices, src0: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Diagnostics]:
        """(s_op, src_op, v_op, f_op, x_op) at the DC operating point for sources ``src0``, with gradients."""
        diag = Diagnostics()
        with torch.no_grad():
            x_op, diag.operating_point = operating_point(self.topology, m, src0)
        x_op = self.topology.implicit_step(m, x_op, m.G, m.Wi, src0 @ m.Bu.T)
        v_op = x_op @ m.Nv.T
        f_op = self.topology.nonlinearity.torch_eval(v_op, m.theta)
        return (x_op @ self.storage.incidence, src0, v_op, f_op, x_op), diag

    def _simulate(self, u: torch.Tensor, state: PHSState | None) -> tuple[torch.Tensor, PHSState]:
        return self.run(u, state)

    def _initial_state(self, m: MNAMatrices, op: tuple[torch.Tensor, ...], s_init: torch.Tensor | None) -> torch.Tensor:
        """``[δs, w, Q, w⁻, w⁻⁻, δs_d⁻, δs_d⁻⁻]`` at sample 0: the DC point, or ``s_init`` (linear storage, then
        junction voltages); the earlier values (for the alternation damping) equal to them."""
        st = self.storage
        s_op, v_op = op[0], op[2]
        s0 = s_op if s_init is None else s_init.to(DTYPE).expand_as(s_op)
        ds = s0[:, : st.n_linear] - s_op[:, : st.n_linear]
        if st.charges is None:
            return ds
        w0, sd = s0[:, st.n_linear :], ds[:, list(st.damped)]
        phi = st.charges.step_nl.torch_eval(st.charges.step_ports(v_op, w0, sd), m.theta)
        return torch.cat([ds, w0, phi[:, st.charges.q_index], w0, w0, sd, sd], dim=-1)

    def run(
        self, u: torch.Tensor, state: PHSState | None = None, s_init: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, PHSState]:
        """Output volts (batch, time) and the end state.

        ``s_init`` (batch or 1, ns) replaces the DC storage state (capacitor volts, inductor amperes) at
        sample 0 (the passivity tests start from random states).
        """
        energy = self.record_energy or self.energy_sink is not None
        m, c, sm = self.ph_matrices(energy)
        src = self.source_values(m, u)
        nl = self.topology.nonlinearity
        batch = u.shape[0]
        ch = self.storage.charges
        nl_step = nl if ch is None else ch.step_nl
        if state is None:
            op, diag = self.dc_point(m, src[:, 0])
            s_op, _, v_op, _, x_op = op
            ds = self._initial_state(m, op, s_init)
            v0 = v_op.detach()
            if ch is not None:
                w0 = ds[:, self.storage.n_linear : self.storage.n_linear + ch.size].detach()
                v0 = ch.step_ports(v0, w0, ds[:, list(self.storage.damped)].detach())
            prev_src, vi0, offset, stored, steps = src[:, 0], None, 0, None, src[:, 1:]
        else:
            op, diag = state.op, Diagnostics()
            s_op, _, v_op, _, x_op = op
            ds, prev_src, v0, vi0 = state.ds, state.src, state.v, state.v_inst
            offset, stored, steps = state.samples, state.stored, src
        diag.samples = u.shape[1]
        nt = steps.shape[1]
        k0 = offset + (1 if state is None else 0)  # sample index of the first step
        ys, mean = None, None
        if nt == 0:
            y_steps = torch.zeros(batch, 0, dtype=DTYPE)
            ds_new, v_end, vi_end = ds, v0, vi0
        else:
            mean = 0.5 * (steps + torch.cat([prev_src.unsqueeze(1), steps[:, :-1]], dim=1)) if energy else None
            y_op = torch.cat([s_op, op[1]], dim=-1) @ sm.e_out.T + op[3] @ sm.f_out_w.T  # (batch, 1)
            u0 = op[1][:, :1]
            x0 = torch.cat([ds, prev_src[:, :1] - u0, op[2], op[3]], dim=-1)
            # damped capacitors without junction charges: Newton to reltol 1e-12 (at the default 1e-10 the
            # devices' currents at the step's port voltages leave 3e-10 of the largest power term in the balance on
            # the TS-808 clipping stage's sweep; with the early accept, 1.5e-10 on its 1 V pluck: off, 9.3e-13, at
            # 2.04 iterations a sample on the 12AX7 stage against 2.02 with it).  With junction charges reltol 1e-9
            # (with the core's Newton on every port, at 1e-10 and 1e-12 the booster's Newton failed on one of the
            # three random-state passivity runs as the state decays; its balance stays at 2.4e-12 at 1e-9), and the
            # previous sample as first guess: the tangent takes 1.9 iterations a sample on the booster against 3.1
            # (kernel.py's solve, 384 kHz sine), but its power-balance run then fails at sample 523, every fallback
            # included
            opts = self.step_options()
            module = self._step_module(sm, nl_step, m.theta.numel())
            theta = m.theta if module is None else theta_with_options(m.theta, opts or KernelOptions())
            ys, final, stats = run_state_space(sm.step, theta, steps[..., :1] - u0.unsqueeze(1), x0, nl_step,
                                               sample_rate=self.sample_rate, v_init=v0, sample_offset=k0,
                                               options=opts, module=module)
            diag.newton_iterations += int(stats.get("iterations", 0))
            diag.max_iterations = int(stats.get("max_iterations", 0))
            ds_new, v_end = final["x"][:, : ds.shape[1]], final["v"]
            if sm.instant_nonlinear:
                u2 = torch.cat([ys[..., sm.rows["s"]] + s_op.unsqueeze(1), steps], dim=-1)
                y2, fin2, st2 = run_state_space(
                    sm.instant, m.theta, u2, torch.zeros(batch, 1, dtype=DTYPE), nl, sample_rate=self.sample_rate,
                    v_init=vi0 if vi0 is not None else v0[:, : len(self.topology.ports)], sample_offset=k0)
                y_steps, vi_end = y2[..., 0], fin2["v"]
                diag.newton_iterations += int(st2.get("iterations", 0))
            else:
                y_steps, vi_end = ys[..., 0] + y_op, vi0
        y = torch.cat([(x_op @ m.out).unsqueeze(1), y_steps], dim=1) if state is None else y_steps
        if energy:
            with torch.no_grad():
                rep, stored = self._energy(m, c, sm.rows, op, ds, state is None, mean, ys, offset, stored)
            if self.energy_sink is not None:
                self.energy_sink(rep)
            self.last_energy = rep
        self.diagnostics = diag
        last_src = src[:, -1] if src.shape[1] else prev_src
        return y, PHSState(ds_new, last_src, op, v_end, vi_end, offset + u.shape[1], stored)

    def step_options(self) -> KernelOptions | None:
        """The step's Newton options: ``newton_options`` where set, else the choice argued in :meth:`run`'s
        comment (None: the core's defaults, without a step nonlinearity of damped storage)."""
        ch = self.storage.charges
        if self.newton_options is not None or ch is None:
            return self.newton_options
        return KernelOptions(reltol=1e-9, predictor="previous") if ch.size else KernelOptions(reltol=1e-12, early=False)

    def _step_module(self, sm: StepMatrices, nl_step, n_theta: int):  # noqa: ANN001, ANN202
        """The step's generated module: with damped storage, Newton on the coupled ports alone, the earlier
        values of the damped storage (zero rows of ``K``) read once per sample (:mod:`.kernel`); None (DK's
        module) without."""
        ch = self.storage.charges
        if ch is None or not self.reduced_solve:
            return None
        free = ch.free_ports()
        k = sm.step[8].detach()
        fixed = [i for i in range(k.shape[0]) if i not in free]
        if fixed and float(k[fixed].abs().max()) != 0.0:  # not a state read after all: the core's Newton on all
            return None
        return ph_module(ch, n_theta, self.explicit_solve)

    def _energy(self, m, c, rows, op, ds0, first, mean, ys, offset, stored):  # noqa: ANN001, ANN202
        """Energy rows (batch item 0) for this block; returns the report and the last H - H_op (batch,).

        ``stored_J`` is the energy stored above the DC operating point, ``H(s) - H(s_op)`` (H is defined up
        to a constant), computed from the deviations so that a bias does not swamp its last digits; a junction
        charge adds ``E(w) - E(w_op)`` (docs/phs.md, "Nonlinear storage").  ``ds0`` is the state at the block's
        start, ``first`` whether the block starts at sample 0 (the DC row).
        """
        pm = self.cached("powermap", lambda: PowerMap(self.topology, self.leaves()))
        st, ch = self.storage, self.storage.charges
        ns, nq = st.n_linear, (ch.size if ch is not None else 0)
        c = c.detach()
        s_op, src_op, v_op, f_op, x_op = (t.detach() for t in op)
        T = 1.0 / self.sample_rate
        theta = m.theta.detach()
        e_op = ch.energy_nl.torch_eval(s_op[:, ns:], theta) if nq else None

        def h_rel(ds: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:  # ds (..., ns), w (..., nq) volts
            so = s_op[:, :ns].unsqueeze(-2) if ds.ndim == 3 else s_op[:, :ns]
            h = stored_energy_delta(ds, so, c)
            if nq:
                eo = e_op[:, :nq].unsqueeze(-2) if w.ndim == 3 else e_op[:, :nq]
                h = h + (ch.energy_nl.torch_eval(w, theta)[..., :nq] - eo).sum(-1)
            return h

        ds0 = ds0.detach()
        w_start = ds0[:, ns : ns + nq] if ch is not None else None
        dmp = list(st.damped)
        h_rows, d_rows, p_rows = [], [], []
        if first:  # sample 0: the DC operating point (no storage flow)
            h_rows.append(h_rel(ds0[:, :ns], w_start).unsqueeze(1))
            d_rows.append(pm.dissipated(x_op, f_op).unsqueeze(1))
            p_rows.append(pm.ports(x_op, src_op).unsqueeze(1))
        if ys is not None and ys.shape[1]:
            ys = ys.detach()
            xbar = ys[..., rows["x"]] + x_op.unsqueeze(1)
            s_new = ys[..., rows["s"]]
            w_new = s_new[..., ns:] + s_op[:, ns:].unsqueeze(1) if ch is not None else None
            h_rows.append(h_rel(s_new[..., :ns], w_new))
            # z(w)·w at the step's own w: the currents at the rows' port voltages (the kernel's Newton unknowns
            # differ from them by its tolerance, enough to flip the sign of a junction's 1e-45 W near v = 0)
            pd = pm.dissipated(xbar, self.topology.nonlinearity.torch_eval(xbar @ m.Nv.T.detach(), theta))
            pp = pm.ports(xbar, mean.detach())
            if dmp:  # the damped capacitors' numerical dissipation ρ Δs C Δs/T >= 0 (docs/phs.md, PH-D2), with
                # the step's own -2 ρ Δs = h (the law at the Newton's port values, as the device currents above)
                sd = torch.cat([ds0[:, dmp].unsqueeze(1), s_new[..., dmp]], dim=1)
                pd = pd - (0.5 * ys[..., rows["h"]] * c[dmp] * torch.diff(sd, dim=1)).sum(-1) / T
            if nq:  # the modulated charge ports: -ē Δ(Q - S(w))/T (docs/phs.md)
                q_new = ys[..., rows["q"]]
                q_all = torch.cat([ds0[:, ns + nq : ns + 2 * nq].unsqueeze(1), q_new], dim=1)
                w_all = torch.cat([ds0[:, ns + 3 * nq : ns + 4 * nq].unsqueeze(1),
                                   ds0[:, ns + 2 * nq : ns + 3 * nq].unsqueeze(1), w_start.unsqueeze(1), w_new], dim=1)
                s_all = ch.energy_nl.torch_eval(w_all[:, 2:], theta)[..., nq:]
                e_bar = xbar @ ch.rows.T
                pp = pp - (e_bar * (torch.diff(q_all, dim=1) - torch.diff(s_all, dim=1))).sum(-1) / T
                # and the junctions' numerical dissipation ρ Δw ΔS/T >= 0 (S increasing)
                rho = damping(w_all[:, 3:], w_all[:, 2:-1], w_all[:, 1:-2], w_all[:, :-3])
                pd = pd + (rho * torch.diff(w_all[:, 2:], dim=1) * torch.diff(s_all, dim=1)).sum(-1) / T
            d_rows.append(pd)
            p_rows.append(pp)
        H = torch.cat(h_rows, dim=1)
        Pd = torch.cat(d_rows, dim=1)
        Pp = torch.cat(p_rows, dim=1)
        h_before = torch.cat([H[:, :1] if stored is None else stored.unsqueeze(1), H[:, :-1]], dim=1)
        res = (H - h_before) / T + Pd - Pp
        t = (offset + torch.arange(H.shape[1], dtype=DTYPE)) * T
        rep = EnergyReport(t.numpy(), H[0].numpy(), Pd[0].numpy(), Pp[0].numpy(), res[0].numpy())
        return rep, H[:, -1]


__all__ = ["PHSModule", "PHSState"]
