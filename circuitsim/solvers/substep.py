"""Substepping: a sample whose Newton solve fails after every fallback is split into smaller steps.

A one-step formulation solves each sample from the previous one.  Where Newton cannot reach the
next solution even with damping and homotopy (a 400 V tube stage driven hard at 48 kHz makes
steps of tens of volts per sample), the same sample is retried as two trapezoidal half steps at
twice the rate, with the input linearly interpolated between the two samples it joins, each half
split again where it still fails, down to ``max_split`` substeps; the chain then goes back to the
original rate at the sample's end.  The map between the states of two rates is the formulation's
(``remap``); for DK and MNA it is exact (docs/validation.md, "Substepping"): both carry the trapezoidal
history ``h = 2/T z + r`` of the charges ``z`` and the reactive currents ``r``, which are the same at
every rate, so the history of the same point at the step ``T'`` is ``h + (2/T' - 2/T) z``.

The chain is written in torch around the formulation's differentiable runner, so gradients
pass through substepped samples as through any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from circuitsim.solvers.newton import NewtonError


@dataclass
class Boundary:
    """Where a run of samples ended, at the rate it ran: all the next run (or a remap) starts from.

    ``state`` (batch, Nx) the formulation's state, ``charge`` (batch, Nc) what its remap needs
    (DK: the reactive charges in the state basis, coulombs / webers), ``warm`` the Newton warm
    start (port voltages or the kernel's warm array), ``sources`` (batch, Nu) the source values
    at the boundary's sample (volts / amperes).
    """

    state: torch.Tensor
    charge: torch.Tensor
    warm: torch.Tensor | np.ndarray | None
    sources: torch.Tensor


@dataclass
class SubstepReport:
    """How often substepping happened: samples (at the base rate) that needed it, the finest split."""

    samples: int = 0
    max_split: int = 1
    stats: list[dict[str, int]] = field(default_factory=list)  # Newton statistics of every run
    refined: int = 0  # samples split because their local error estimate exceeded the tolerance


# run(split, sources (batch, T, Nu), start, sample_offset) -> (y (batch, T), end): the samples at
# split x the base rate from ``start``; raises NewtonError with ``sample`` = sample_offset + index
Runner = Callable[[int, torch.Tensor, Boundary, int], tuple[torch.Tensor, Boundary, dict[str, int]]]
# remap(boundary, split_from, split_to) -> the same physical point as a boundary of the other rate
Remap = Callable[[Boundary, int, int], Boundary]


def interpolate_sources(s_prev: torch.Tensor, s_next: torch.Tensor, k: int) -> torch.Tensor:
    """Source values at the ``k`` substep ends ``j/k`` (j = 1..k) of a sample, linear in between (batch, k, Nu).

    ``s_prev`` and ``s_next`` (batch, Nu), or (batch, m, Nu) for ``m`` consecutive samples: then (batch, m k, Nu).
    """
    w = torch.arange(1, k + 1, dtype=s_prev.dtype) / k
    a, b = (t.unsqueeze(1) if t.ndim == 2 else t for t in (s_prev, s_next))
    out = a.unsqueeze(2) + w.view(1, 1, k, 1) * (b - a).unsqueeze(2)
    return out.reshape(a.shape[0], -1, a.shape[-1])


def run_substepped(run: Runner, remap: Remap, sources: torch.Tensor, start: Boundary, sample_offset: int = 0,
        max_split: int = 64, split: int = 1, report: SubstepReport | None = None
) -> tuple[torch.Tensor, Boundary, SubstepReport]:
    """Run ``sources`` (batch, T, Nu) at ``split`` x the base rate, halving the step of failing samples.

    Returns the output (batch, T), the end boundary (at this rate) and the report.  A sample that
    still fails with ``max_split`` substeps raises the :class:`NewtonError` of the first failure
    at this level (the message of the unsplit attempt: sample, time and batch item).
    """
    report = report if report is not None else SubstepReport()
    T = sources.shape[1]
    ys: list[torch.Tensor] = []
    pos, b = 0, start
    while pos < T:
        n, first_error = T, None
        while n > pos:  # the samples up to the first failure, which the next failure may move earlier
            try:
                y, end, st = run(split, sources[:, pos:n], b, sample_offset + pos)
            except NewtonError as err:
                bad = int(err.sample) - sample_offset
                if not pos <= bad < n:
                    raise
                n, first_error = bad, first_error or err
                if err.partial is None:
                    continue
                y, end, st = err.partial  # the runner kept the samples before the failure: no second run
            ys.append(y)
            report.stats.append(st)
            b = end
            break
        if n == T:
            break
        if 2 * split > max_split:
            raise first_error
        try:  # sample n as two substeps of half the step, each split again where it fails
            yf, fine, _ = run_substepped(run, remap, interpolate_sources(b.sources, sources[:, n], 2),
                                         remap(b, split, 2 * split), 0, max_split, 2 * split, report)
        except NewtonError:
            raise first_error from None
        report.max_split = max(report.max_split, 2 * split)
        report.samples += split == 1
        ys.append(yf[:, -1:])
        b = remap(fine, 2 * split, split)
        pos = n + 1
    y = torch.cat(ys, dim=1) if ys else sources.new_zeros(sources.shape[0], 0)
    return y, b, report


def local_error_splits(charges: torch.Tensor, before: torch.Tensor | None, tolerance: float, max_split: int
                       ) -> np.ndarray:
    """Substeps per sample (batch, T) that bring each sample's estimated local error within ``tolerance``.

    ``charges`` (batch, T, Nc) are what is watched at the samples of a run: the reactive charges ``z``
    (coulombs / webers) and any output (volts), ``before`` (batch, Nc) the same at the sample before the
    run (None: unknown; NaN entries and NaN samples are unknown).  The trapezoidal rule's local truncation
    error of one step is ``-T³/12 d³z/dt³`` (Hairer, Nørsett & Wanner, Solving ODEs I, §II.7; the estimate
    SPICE3's ``CKTterr`` makes from divided differences of the charges, with its ``trapCoeff`` 1/12), and
    ``T³ d³z/dt³`` is the third difference ``Δ³z[n] = z[n] - 3 z[n-1] + 3 z[n-2] - z[n-3]``.  A step's error
    is the largest ``|Δ³z|/12`` of the three windows that contain it, relative to each column's peak-to-peak
    range over the run (at least 1e-9 of its largest magnitude), largest over the columns.  An output that is
    the current of a coupling capacitor is the derivative of a charge, so it is watched too: its error is
    what the ESR measures.  The ``k`` substeps of a split sample have local errors ``k⁻³`` of it and add up
    to ``k⁻²`` of it, so a sample with relative error ``e > tolerance`` gets the smallest power of two
    ``k >= sqrt(e / tolerance)``, at most ``max_split``; every other sample 1.  The first samples of a run,
    whose windows would need values before ``before``, and the neighbours of an unknown value (a sample
    Newton solved only in substeps, :func:`gather_charges`) are judged by the windows that exist.
    """
    z = charges.detach().numpy()
    if before is not None:
        z = np.concatenate([before.detach().numpy()[:, None], z], axis=1)
    lead = z.shape[1] - charges.shape[1]  # 1 where ``before`` was prepended
    z = np.ascontiguousarray(z.transpose(0, 2, 1))  # (batch, Nc, L): the reductions over Nc are elementwise
    # fmax / fmin skip NaN (an unknown value); a column with none known gets scale 1e-300 and no window
    top, bottom = np.fmax.reduce(z, axis=2), np.fmin.reduce(z, axis=2)
    size = np.nan_to_num(np.maximum(np.abs(top), np.abs(bottom)))
    scale = np.maximum(np.maximum(np.nan_to_num(top - bottom), 1e-9 * size), 1e-300)
    e = np.zeros((z.shape[0], z.shape[2]))  # (batch, L): the window ending at each point
    if z.shape[2] > 3:
        d3 = np.abs(z[..., 3:] - 3 * z[..., 2:-1] + 3 * z[..., 1:-2] - z[..., :-3]) * (1.0 / (12 * scale))[..., None]
        e[:, 3:] = np.nan_to_num(np.fmax.reduce(d3, axis=1))
    # the step into point n lies in the windows ending at n, n + 1 and n + 2
    err = e.copy()
    err[:, :-1] = np.maximum(err[:, :-1], e[:, 1:])
    err[:, :-2] = np.maximum(err[:, :-2], e[:, 2:])
    err = err[:, lead:]
    ratio = np.sqrt(np.maximum(err / tolerance, 1.0))
    k = np.exp2(np.ceil(np.log2(ratio) - 1e-12))
    return np.minimum(k, max_split).astype(np.int64)


# two split runs are run as one where the unsplit samples between them would cost fewer extra substeps than
# this: a segment costs ~0.1 ms of CPU in calls (DK's runner, TS-808 clipping stage at 384 kHz) against ~0.5 us
# a substep, and joining also splits the samples next to the flagged ones.  Measured on that stage's sweep at
# max_local_error 3e-3: 2.1x the fixed step's CPU time at 1024, 7.5x at 64, 12x unjoined, the ESR 8e-7 to 1e-6;
# on the Mark IIC+ sweep 1024 gives ESR 6.7e-7, unjoined 1.2e-5 (docs/validation.md, "Substepping")
JOIN_SUBSTEPS = 1024


def schedule(splits: np.ndarray, join: int = JOIN_SUBSTEPS) -> list[tuple[int, int, int]]:
    """Segments ``(first, end, k)`` of a sample schedule (powers of two): samples ``first:end`` at ``k`` substeps.

    Consecutive split samples form one segment at their largest split; two split segments whose gap of
    unsplit samples would cost fewer than ``join`` extra substeps at the larger split are joined.
    """
    flagged = np.concatenate([[False], splits > 1, [False]])
    edges = np.flatnonzero(flagged[1:] != flagged[:-1])  # starts and ends of the runs of split samples
    out: list[tuple[int, int, int]] = []
    for first, end in zip(edges[::2].tolist(), edges[1::2].tolist()):
        k = int(splits[first:end].max())
        if out and (first - out[-1][1]) * (max(k, out[-1][2]) - 1) <= join:
            out[-1] = (out[-1][0], end, max(k, out[-1][2]))
        else:
            out.append((first, end, k))
    full, pos = [], 0
    for first, end, k in out:
        if first > pos:
            full.append((pos, first, 1))
        full.append((first, end, k))
        pos = end
    if pos < len(splits):
        full.append((pos, len(splits), 1))
    return full


def run_scheduled(run: Runner, remap: Remap, sources: torch.Tensor, start: Boundary, splits: np.ndarray,
                  sample_offset: int = 0, max_split: int = 64, report: SubstepReport | None = None
                  ) -> tuple[torch.Tensor, Boundary, SubstepReport]:
    """Run ``sources`` (1, T, Nu) with sample ``n`` split into at least ``splits[n]`` substeps (powers of two).

    The segments of :func:`schedule` go through :func:`run_substepped`: unsplit ones at the base rate, split
    ones at their split with the input linearly interpolated (:func:`interpolate_sources`) and the state
    remapped at both ends; either is split further where Newton fails.  Returns the output at the base-rate
    instants (1, T), the end boundary and the report (``refined``: the samples run split).
    """
    report = report if report is not None else SubstepReport()
    ys, b = [], start
    for pos, n, k in schedule(splits):
        if k == 1:
            y, b, report = run_substepped(run, remap, sources[:, pos:n], b, sample_offset + pos, max_split, 1, report)
            ys.append(y)
            continue
        prev = torch.cat([b.sources.unsqueeze(1), sources[:, pos : n - 1]], dim=1)
        yf, end, report = run_substepped(run, remap, interpolate_sources(prev, sources[:, pos:n], k),
                                         remap(b, 1, k), 0, max_split, k, report)
        ys.append(yf[:, k - 1 :: k])
        b = remap(end, k, 1)
        report.refined += n - pos
        report.max_split = max(report.max_split, k)
    y = torch.cat(ys, dim=1) if ys else sources.new_zeros(sources.shape[0], 0)
    return y, b, report


def gather_charges(collected: dict[int, torch.Tensor], sample_offset: int, T: int) -> torch.Tensor:
    """What :func:`local_error_splits` watches (batch, T, Nc) at samples ``sample_offset ..``, from the base-rate
    runs' values keyed by their first sample; NaN at samples no base-rate run solved (those Newton solved only
    in substeps)."""
    first = next(iter(collected.values()))
    out = first.new_full((first.shape[0], T, first.shape[2]), float("nan"))
    for n, c in collected.items():
        out[:, n - sample_offset : n - sample_offset + c.shape[1]] = c.detach()
    return out


def run_items_substepped(run: Runner, remap: Remap, sources: torch.Tensor, start: Boundary, sample_offset: int,
                         max_split: int, warm: Callable[[torch.Tensor | np.ndarray | None], object] | None = None,
                         splits: np.ndarray | None = None, tolerance: float | None = None,
                         collected: dict[int, torch.Tensor] | None = None,
                         before: Callable[[torch.Tensor | None], torch.Tensor | None] | None = None
                         ) -> tuple[torch.Tensor, Boundary, SubstepReport]:
    """Each batch item on its own through :func:`run_substepped` (so items stay independent of each other).

    Returns the outputs (batch, T), the items' end boundaries joined into one, and one report for all.
    ``warm`` maps each item's warm start before they are joined, where a substepped item's end holds
    a different kind of warm start than an unsplit one's (DK: port voltages against the kernel's array).
    ``splits`` (batch, T): substeps per sample asked for in advance (:func:`run_scheduled`).  ``tolerance``: each
    item is run again with :func:`local_error_splits`'s schedule at that tolerance, from the values that its
    base-rate runs put into ``collected`` (the runner's dict, keyed by a run's first sample); ``before`` maps
    an item's start charge to the values watched before its first sample.
    """
    report, ys, ends = SubstepReport(), [], []
    for i in range(sources.shape[0]):
        one = Boundary(*(t[i : i + 1] if t is not None else None for t in
                         (start.state, start.charge, start.warm, start.sources)))
        if splits is None:
            if collected is not None:
                collected.clear()
            y, end, rep = run_substepped(run, remap, sources[i : i + 1], one, sample_offset, max_split)
            if tolerance is not None and collected:
                z = gather_charges(collected, sample_offset, sources.shape[1])
                plan = local_error_splits(z, (before or (lambda c: c))(one.charge), tolerance, max_split)[0]
                if plan.max() > 1:
                    stats = rep.stats
                    y, end, rep = run_scheduled(run, remap, sources[i : i + 1], one, plan, sample_offset, max_split)
                    rep.stats += stats
        else:
            y, end, rep = run_scheduled(run, remap, sources[i : i + 1], one, splits[i], sample_offset, max_split)
        ys.append(y)
        ends.append(end)
        report.samples += rep.samples
        report.refined += rep.refined
        report.max_split = max(report.max_split, rep.max_split)
        report.stats += rep.stats
    warms = [e.warm for e in ends]
    if warm is not None and len({tuple(w.shape) for w in warms}) > 1:
        warms = [warm(w) for w in warms]
    end = Boundary(*(torch.cat([torch.as_tensor(t) for t in ts]) for ts in
                     ([e.state for e in ends], [e.charge for e in ends], warms, [e.sources for e in ends])))
    return torch.cat(ys), end, report


@dataclass
class SubstepCounts:
    """The diagnostics fields of a formulation that substeps (a mixin of its ``Diagnostics``)."""

    substepped: int = 0  # samples of this call that Newton solved only in substeps
    max_substeps: int = 1  # the finest split used (substeps per sample)
    substepped_total: int = 0  # substepped samples since the stream started (streaming blocks add up)
    refined: int = 0  # samples of this call split because their local error estimate exceeded the tolerance


def record_substeps(diag: SubstepCounts, report: SubstepReport, before: int) -> None:
    """Put ``report`` into ``diag`` and its ``fallbacks`` (``before``: substepped samples of the stream's earlier
    blocks); ``diag`` is a formulation's ``Diagnostics`` with the :class:`SubstepCounts` fields."""
    diag.substepped, diag.max_substeps = report.samples, report.max_split
    diag.substepped_total = before + report.samples
    diag.refined = report.refined
    if report.samples:
        diag.fallbacks.append(f"{report.samples} samples needed substeps (up to {report.max_split} per sample)")


def merge_stats(stats: Sequence[dict[str, int]]) -> dict[str, int]:
    """Newton statistics of several runs as one: counts summed, ``max_iterations`` maxed."""
    out: dict[str, int] = {}
    for st in stats:
        for key, val in st.items():
            out[key] = max(out.get(key, 0), val) if key == "max_iterations" else out.get(key, 0) + val
    return out
