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


# run(split, sources (batch, T, Nu), start, sample_offset) -> (y (batch, T), end): the samples at
# split x the base rate from ``start``; raises NewtonError with ``sample`` = sample_offset + index
Runner = Callable[[int, torch.Tensor, Boundary, int], tuple[torch.Tensor, Boundary, dict[str, int]]]
# remap(boundary, split_from, split_to) -> the same physical point as a boundary of the other rate
Remap = Callable[[Boundary, int, int], Boundary]


def interpolate_sources(s_prev: torch.Tensor, s_next: torch.Tensor, k: int) -> torch.Tensor:
    """Source values at the ``k`` substep ends ``j/k`` (j = 1..k) of a sample, linear in between (batch, k, Nu)."""
    w = torch.arange(1, k + 1, dtype=s_prev.dtype) / k
    return s_prev.unsqueeze(1) + w.view(1, k, 1) * (s_next - s_prev).unsqueeze(1)


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


def run_items_substepped(run: Runner, remap: Remap, sources: torch.Tensor, start: Boundary, sample_offset: int,
                         max_split: int, warm: Callable[[torch.Tensor | np.ndarray | None], object] | None = None
                         ) -> tuple[torch.Tensor, Boundary, SubstepReport]:
    """Each batch item on its own through :func:`run_substepped` (so items stay independent of each other).

    Returns the outputs (batch, T), the items' end boundaries joined into one, and one report for all.
    ``warm`` maps each item's warm start before they are joined, where a substepped item's end holds
    a different kind of warm start than an unsplit one's (DK: port voltages against the kernel's array).
    """
    report, ys, ends = SubstepReport(), [], []
    for i in range(sources.shape[0]):
        one = Boundary(*(t[i : i + 1] if t is not None else None for t in
                         (start.state, start.charge, start.warm, start.sources)))
        y, end, rep = run_substepped(run, remap, sources[i : i + 1], one, sample_offset, max_split)
        ys.append(y)
        ends.append(end)
        report.samples += rep.samples
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


def record_substeps(diag: SubstepCounts, report: SubstepReport, before: int) -> None:
    """Put ``report`` into ``diag`` and its ``fallbacks`` (``before``: substepped samples of the stream's earlier
    blocks); ``diag`` is a formulation's ``Diagnostics`` with the :class:`SubstepCounts` fields."""
    diag.substepped, diag.max_substeps = report.samples, report.max_split
    diag.substepped_total = before + report.samples
    if report.samples:
        diag.fallbacks.append(f"{report.samples} samples needed substeps (up to {report.max_split} per sample)")


def merge_stats(stats: Sequence[dict[str, int]]) -> dict[str, int]:
    """Newton statistics of several runs as one: counts summed, ``max_iterations`` maxed."""
    out: dict[str, int] = {}
    for st in stats:
        for key, val in st.items():
            out[key] = max(out.get(key, 0), val) if key == "max_iterations" else out.get(key, 0) + val
    return out
