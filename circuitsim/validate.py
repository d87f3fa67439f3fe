"""Validation against ngspice: ESR and largest error on the standard signals, and the DC point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from circuitsim.api import load


def esr(y: np.ndarray, ref: np.ndarray) -> float:
    """Error-to-signal ratio ``sum((y - ref)^2) / sum((ref - ref[0])^2)``.

    The reference's starting value (its DC operating point) is removed from the signal
    energy, so a biased output (a pedal at 4.5 V) cannot hide its error behind the bias.
    """
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    signal = np.sum((ref - ref[0]) ** 2)
    return float(np.sum((y - ref) ** 2) / max(signal, 1e-300))


@dataclass
class SignalResult:
    name: str
    esr: float
    max_error: float  # volts
    peak: float  # volts, peak deviation of the reference from its start
    ours: np.ndarray | None = field(default=None, repr=False)  # output volts
    reference: np.ndarray | None = field(default=None, repr=False)  # ngspice's output volts


@dataclass
class DCResult:
    name: str
    ours: float
    ngspice: float

    @property
    def rel_error(self) -> float:
        return abs(self.ours - self.ngspice) / max(abs(self.ngspice), 1e-12)


@dataclass
class ValidationReport:
    netlist: str
    method: str
    sim_rate: float
    signals: list[SignalResult] = field(default_factory=list)
    dc: list[DCResult] = field(default_factory=list)

    def plot(self, path: str | Path) -> None:
        """Save a PNG: each signal's output against ngspice's (top) and their difference (bottom)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sigs = [r for r in self.signals if r.ours is not None]
        fig, axes = plt.subplots(2, len(sigs), figsize=(3.2 * len(sigs), 5), squeeze=False, sharex="col")
        for k, r in enumerate(sigs):
            t = np.arange(len(r.ours)) / self.sim_rate * 1e3
            axes[0, k].plot(t, r.reference, lw=1.6, label="ngspice")
            axes[0, k].plot(t, r.ours, lw=0.8, ls="--", label=f"circuitsim {self.method}")
            axes[0, k].set_title(f"{r.name}\nESR {r.esr:.2e}", fontsize=9)
            axes[1, k].plot(t, r.ours - r.reference, lw=0.8, color="C3")
            axes[1, k].set_xlabel("time (ms)")
        axes[0, 0].set_ylabel("output (V)")
        axes[1, 0].set_ylabel("difference (V)")
        axes[0, 0].legend(fontsize=8)
        fig.suptitle(f"{Path(self.netlist).name} at {self.sim_rate:g} Hz against ngspice", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def table(self) -> str:
        lines = [f"{self.netlist} ({self.method}, {self.sim_rate:g} Hz) against ngspice", ""]
        lines.append(f"{'signal':<16}{'ESR':>12}{'max error (V)':>16}{'peak (V)':>12}")
        for r in self.signals:
            lines.append(f"{r.name:<16}{r.esr:>12.3e}{r.max_error:>16.3e}{r.peak:>12.4g}")
        if self.dc:
            worst = max(self.dc, key=lambda d: abs(d.ours - d.ngspice))
            lines += ["", f"DC operating point: {len(self.dc)} values, largest difference at {worst.name}: "
                      f"{worst.ours:.9g} vs ngspice {worst.ngspice:.9g}"]
        return "\n".join(lines)


def compare_dc(
    model, netlist: str | Path, params: Mapping[str, float] | None = None, dialect: str | None = None
) -> list[DCResult]:
    """Our DC operating point against ngspice's ``.op``, on every node and source current both report."""
    from circuitsim.spice import operating_point_ngspice

    ours = model.dc_voltages(0.0)
    theirs = operating_point_ngspice(netlist, params=params, dialect=dialect)
    out = []
    for key, val in ours.items():
        name = key[2:-1] if key.startswith("v(") else key
        ref = theirs.get(name, theirs.get(key))
        if ref is not None:
            out.append(DCResult(key, val, ref))
    return out


def validate(
    netlist: str | Path,
    method: str = "mna",
    sample_rate: float = 48000.0,
    oversample: int = 8,
    duration: float = 0.02,
    params: Mapping[str, float] | None = None,
    input_source: str = "VIN",
    output_node: str = "out",
    reference_tmax: float | None = None,
    dialect: str | None = None,
    reference_abstol: float = 1e-15,
    max_local_error: float | None = None,
) -> ValidationReport:
    """Run ``netlist`` through circuitsim and ngspice on the standard signals at ``sample_rate*oversample``.

    ngspice's largest step is ``reference_tmax`` (default ``1/(16 fs)``).  With TMAX = 1/fs
    ngspice's own error (its steps do not fall on our sample instants, and the input has a
    kink at every sample) is ESR ~2e-7 on the FMV tone stack; at 1/(16 fs) it has converged,
    so what remains is the error of our trapezoidal discretisation (see docs/validation.md).
    ``reference_abstol`` is ngspice's ABSTOL (amperes): at 1e-15 ngspice stops with "timestep too
    small" on the 400 V Mark IIC+ preamp (tests/data/wild/mkiicp_full.net), where 1e-9 runs.
    ``dialect`` as for :func:`circuitsim.load` (None: detected); ngspice runs on a copy rewritten
    for that dialect, never on changed source files (docs/netlists.md).  ``max_local_error``: as for
    :func:`circuitsim.load` (DK's local-error-driven substeps; None: off).
    """
    from circuitsim.signals import standard_signals
    from circuitsim.spice import simulate_ngspice

    fs = sample_rate * oversample
    model = load(netlist, method, fs, params=params, input_source=input_source, output_node=output_node,
                 dialect=dialect, max_local_error=max_local_error)
    dialect = model.circuit.netlist.dialect
    input_source = model.topology.input_source.name if model.topology.input_source is not None else input_source
    report = ValidationReport(str(netlist), method, fs)
    tmax = reference_tmax if reference_tmax is not None else 1.0 / (16 * fs)
    for name, x in standard_signals(fs, duration).items():
        ref = simulate_ngspice(netlist, x, fs, input_source, output_node, params=params, tmax=tmax, dialect=dialect,
                               abstol=reference_abstol)
        with torch.no_grad():
            y = model(torch.as_tensor(x)).numpy()
        report.signals.append(
            SignalResult(name, esr(y, ref), float(np.max(np.abs(y - ref))), float(np.max(np.abs(ref - ref[0]))), y, ref)
        )
    report.dc = compare_dc(model, netlist, params, dialect)
    return report
