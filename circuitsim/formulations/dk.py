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

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from circuitsim.formulations.base import AbstractCircuitModule, Diagnostics
from circuitsim.kernels import autograd
from circuitsim.kernels.autograd import run_state_space
from circuitsim.kernels.core import KernelOptions
from circuitsim.solvers.newton import NewtonError
from circuitsim.solvers.substep import (
    Boundary,
    Remap,
    Runner,
    SubstepCounts,
    SubstepReport,
    local_error_splits,
    merge_stats,
    record_substeps,
    run_items_substepped,
)
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


# Newton options inside the substepping chain: a sample that damped Newton cannot solve in 50 iterations
# is cheaper split than iterated (200 iterations of 40 backtracking steps took a minute on one sample of the
# Mark IIC+ preamp at 96 kHz; docs/validation.md, "Substepping")
SUBSTEP_OPTIONS = KernelOptions(fallback_iter=50)
# an audio circuit's port voltages stay well within this many times its largest source or bias voltage
RANGE = 1e3


@dataclass
class DKDiagnostics(SubstepCounts, Diagnostics):
    """DK's diagnostics: the Newton work, and how often a sample had to be split into substeps."""


@dataclass
class DKState:
    """Where a block ended: the DK state and the last port voltages (for the Newton predictor).

    ``charge`` and ``sources`` are what a substep of the next block's first sample needs: the
    reactive charges ``Qᵀ (Cm x + Wq f)`` (coulombs / webers) and the source values at the last sample.
    """

    q: torch.Tensor
    v: torch.Tensor | None = None
    samples: int = 0  # samples already processed (so errors name the sample of the whole stream)
    charge: torch.Tensor | None = None
    sources: torch.Tensor | None = None
    substepped: int = 0  # substepped samples so far


def charge_rows(d: StateSpaceMatrices, sample_rate: float) -> StateSpaceMatrices:
    """``d`` with extra outputs after ``y``: ``c[n] = Qᵀ (Cm x[n] + Wq f[n])`` (coulombs / webers).

    The state update is ``q[n] = 4/T c[n] - q[n-1]`` (module doc), so ``c[n] = T/4 ((A + I) q[n-1] +
    B u[n] + C f[n])``: rows of the existing matrices, no new solve.
    """
    w = 0.25 / sample_rate
    eye = torch.eye(d.A.shape[0], dtype=DTYPE)
    D, E, F = (torch.cat([base, extra]) for base, extra in ((d.D, (d.A + eye) * w), (d.E, d.B * w), (d.F, d.C * w)))
    return StateSpaceMatrices(d.A, d.B, d.C, D, E, F, d.G, d.H, d.K)


def first_output(y: torch.Tensor) -> torch.Tensor:
    """``y[..., 0]`` of the core's (batch, T, Ny) output: a squeeze where Ny = 1, whose backward is a
    view (select's backward allocates and fills a (batch, T, Ny) tensor, ~1 ns/sample)."""
    return y.squeeze(-1) if y.shape[-1] == 1 else y[..., 0]


def _ports(warm: torch.Tensor | np.ndarray | None) -> torch.Tensor | np.ndarray | None:
    """The port voltages (batch, Nv) of a warm start (the kernel's warm array holds them in row 0)."""
    return warm[:, 0, :] if warm is not None and warm.ndim == 3 else warm


def _with_output(charge: torch.Tensor | None) -> torch.Tensor | None:
    """``charge`` (batch, Nc) after an unknown output (NaN): the columns the runner's ``charges`` dict holds."""
    return None if charge is None else torch.cat([torch.full_like(charge[:, :1], float("nan")), charge], dim=1)


def _largest(u: torch.Tensor, sources: torch.Tensor) -> tuple[float, ...]:
    """The largest ``|value|`` of each item (batch,) of ``source_values`` over input ``u`` (batch, T) and the
    constant ``sources[1:]`` (volts / amperes): the max and min of the input alone, a pass over a third to
    a half of the bytes of the source array on a circuit with one or two supplies."""
    x = u.detach().numpy()
    c = sources[1:].detach().numpy()
    hi, lo = x.max(axis=1), x.min(axis=1)
    if c.size:
        hi, lo = np.maximum(hi, c.max()), np.minimum(lo, c.min())
    return tuple(float(v) for v in np.maximum(hi, -lo))


class DKModule(AbstractCircuitModule):
    """Nonlinear state-space (DK method) formulation with the compiled per-sample core.

    Where Newton fails after its fallbacks, the sample is split into up to ``max_substeps``
    trapezoidal substeps (:mod:`circuitsim.solvers.substep`); ``diagnostics.substepped`` counts them.
    """

    method = "dk"
    max_substeps = 64
    #: split samples whose estimated local truncation error, relative to the range of each charge and of the
    #: output, exceeds this
    #: (None: off, the plain fixed step; :func:`circuitsim.solvers.substep.local_error_splits`)
    max_local_error: float | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._q = state_basis(self.topology.assemble(self.topology.leaf_values()))

    def dk(self) -> tuple[MNAMatrices, DKMatrices]:
        """MNA and DK matrices at the current parameter values (differentiable)."""
        m = self.matrices()
        return m, self.cached("dk", lambda: dk_matrices(m, self.sample_rate, self._q))

    def _runner(self, m: MNAMatrices, d: DKMatrices, max_split: int, watch: bool, head: torch.Tensor | None = None,
                charges: dict[int, torch.Tensor] | None = None, end_charges: bool = True,
                u_max: tuple[torch.Tensor, tuple[float, ...]] | None = None) -> tuple[Runner, Remap]:
        """The DK run of samples at ``split`` x the rate and the exact state map between two rates.

        A run's last sample also gives the charges ``c`` (:func:`charge_rows`).  With ``h = 2/T c + r``
        (``r`` the reactive currents, the same at every rate; module doc), the state of the same
        physical point at the step ``T'`` is ``q' = q + (2/T' - 2/T) c``.

        Where the step can still be split, a port voltage beyond ``RANGE`` times the largest source,
        bias or starting port voltage counts as a Newton failure (``KernelOptions.bound``: the relative
        stop ``|dv| <= reltol |v|`` alone also accepts a Newton that ran away to 1e34 V, after which later
        samples run on garbage); the kernel reports the sample at once (no fallbacks).  At the
        finest split such a solution is kept (it may be real).  ``watch``: the substepping chain (damped
        Newton stops sooner, ``SUBSTEP_OPTIONS``).  ``head`` (batch, 1): outputs put before the run's
        (the operating point's sample), so that the signal is joined in one copy.  ``charges``: a dict that
        each run at the base rate puts the output and the charges ``c`` of all its samples into (batch, T,
        1 + Nc), by first sample (what :func:`local_error_splits` watches).  ``end_charges=False``: the
        run's end state is not kept (``forward``), so no sample needs the extra rows and the whole run is
        one kernel call; its boundary has no charge and cannot be remapped.  ``u_max``: a source array and the
        largest ``|value|`` in each of its items, passed to the kernel for a run over that whole array
        (``core.forward``: no pass over it there).
        """
        fs, nl, ns = self.sample_rate, self.topology.nonlinearity, d.A.shape[0]
        mats: dict[tuple[int, bool], tuple[torch.Tensor, ...]] = {}
        base = SUBSTEP_OPTIONS if watch else autograd.DEFAULT_OPTIONS  # (read per call: benchmarks swap it)

        def matrices(split: int, rows: bool) -> tuple[torch.Tensor, ...]:
            """The maps at ``split`` x the rate, with the charge rows where ``rows`` (each formed once)."""
            if (split, rows) not in mats:
                if rows:
                    mats[split, rows] = charge_rows(StateSpaceMatrices(*matrices(split, False)), split * fs).as_tuple()
                else:
                    dd = d if split == 1 else self.cached(f"dk{split}", lambda: dk_matrices(m, split * fs, self._q))
                    mats[split, rows] = dd.as_tuple()
            return mats[split, rows]

        def run(split: int, s: torch.Tensor, b: Boundary, offset: int) -> tuple[torch.Tensor, Boundary, dict]:
            # samples run without the extra rows: none where every sample's charges are watched, all but the
            # last where the end state is kept, else all
            cut = 0 if charges is not None else s.shape[1] - 1 if end_charges else s.shape[1]
            options = replace(base, bound=RANGE if 2 * split <= max_split else math.inf)
            q, v, ys, stats = b.state, b.warm, [], []
            lead = head  # put before the first part's output: by the kernel itself where that part has no charge rows
            for rows, part, first in ((False, s[:, :cut], offset), (True, s[:, cut:], offset + cut)):
                if part.shape[1] == 0:
                    continue
                lin = matrices(split, rows)
                um = u_max[1] if u_max is not None and s is u_max[0] and part.shape[1] == s.shape[1] else None
                y, final, st = run_state_space(lin, m.theta, part, q, nl, sample_rate=split * fs, v_init=v,
                                               sample_offset=first, options=options,
                                               head=None if rows else lead, u_max=um)
                q, v = final["x"], final["v"]
                if lead is not None and rows:
                    ys.append(lead)
                lead = None
                ys.append(first_output(y))
                stats.append(st)
                if charges is not None and split == 1:
                    charges[first] = y[..., : 1 + ns]
            y_all = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
            charge = y[:, -1, 1 : 1 + ns] if end_charges or charges is not None else None
            # the last sources cloned: a view would keep the reusable source array busy while the state is held
            # (AbstractCircuitModule.source_values)
            return y_all, Boundary(q, charge, v, s[:, -1].clone()), merge_stats(stats)

        def remap(b: Boundary, k_from: int, k_to: int) -> Boundary:
            return Boundary(b.state + (2.0 * fs * (k_to - k_from)) * b.charge, b.charge, _ports(b.warm), b.sources)

        return run, remap

    def _output(self, u: torch.Tensor) -> torch.Tensor:
        return self._simulate(u, None, keep_state=False)[0]

    def _simulate(self, u: torch.Tensor, state: DKState | None, keep_state: bool = True
                  ) -> tuple[torch.Tensor, DKState]:
        """Run ``u`` (batch, time) volts from ``state`` (None: the operating point).  ``keep_state=False``:
        the returned state is not used (``forward``), so the run does not form the end charges (one kernel
        call instead of two); it has no charge and a stream cannot continue from it with substeps."""
        m, d = self.dk()
        s = self.source_values(m, u)
        diag = DKDiagnostics(samples=u.shape[1])
        k2 = 2.0 * self.sample_rate
        if state is None:
            x_op, diag.operating_point = self.start_point(m, s[:, 0])
            charge = x_op @ m.Cm.T  # at DC the reactive currents are 0: h0 = 2/T c0, c0 = Q' (Cm x + Wq f)
            if any(q for _, q in self.topology.outputs):  # device charges (Wq is zero without them)
                charge = charge + self.topology.nonlinearity.torch_eval(x_op @ m.Nv.T, m.theta) @ m.Wq.T
            c0 = charge @ d.Q
            start = Boundary(k2 * c0, c0, (x_op @ m.Nv.T).detach(), s[:, 0])
            head, rest, offset, before = (x_op @ m.out).unsqueeze(1), s[:, 1:], 1, 0
        else:
            start = Boundary(state.q, state.charge, state.v, state.sources)
            head, rest, offset, before = None, s, state.samples, state.substepped
        max_split = self.max_substeps if start.charge is not None else 1
        tol = self.max_local_error if max_split > 1 and rest.shape[1] else None
        charges: dict[int, torch.Tensor] | None = None if tol is None else {}
        try:  # the whole batch at once; substeps (item by item) only where Newton fails
            # the input's range for the bound on |v| (core.forward), where there are port voltages to bound
            newton = rest.shape[1] and self.topology.nonlinearity.n_ports
            span = (rest, _largest(u[:, u.shape[1] - rest.shape[1] :], m.sources)) if newton else None
            run, _ = self._runner(m, d, max_split, watch=False, head=head, charges=charges, end_charges=keep_state,
                                  u_max=span)
            y, end, stats = run(1, rest, start, offset) if rest.shape[1] else (rest[..., 0], start, {})
            if not rest.shape[1] and head is not None:
                y = head
            report = SubstepReport(stats=[stats])
            splits = None if charges is None else local_error_splits(charges[offset], _with_output(start.charge),
                                                                     tol, max_split)
            if splits is not None and splits.max() > 1:  # again, item by item, the flagged samples split
                run, remap = self._runner(m, d, max_split, watch=True)
                y, end, report = run_items_substepped(run, remap, rest, start, offset, max_split, _ports, splits)
                report.stats.append(stats)
                if head is not None:
                    y = torch.cat([head, y], dim=1)
        except NewtonError:
            if max_split == 1:
                raise
            run, remap = self._runner(m, d, max_split, watch=True, charges=charges)
            y, end, report = self._substepped(run, remap, rest, start, offset, max_split, tol, charges)
            if head is not None:
                y = torch.cat([head, y], dim=1)
        record_newton_stats(diag, merge_stats(report.stats))
        record_substeps(diag, report, before)
        self.diagnostics = diag
        done = (0 if state is None else state.samples) + u.shape[1]
        return y, DKState(end.state, end.warm, done, end.charge, end.sources, diag.substepped_total)

    @staticmethod
    def _substepped(run: Runner, remap: Remap, s: torch.Tensor, start: Boundary, offset: int, max_split: int,
                    tol: float | None = None, charges: dict[int, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, Boundary, SubstepReport]:
        """Each batch item on its own (:func:`run_items_substepped`); a substepped end holds port voltages only.
        ``tol``, ``charges``: each item run again split where its local error exceeds ``tol``."""
        return run_items_substepped(run, remap, s, start, offset, max_split, _ports, None, tol, charges, _with_output)
