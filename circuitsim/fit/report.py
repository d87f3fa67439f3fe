"""Fit report: parameter table, ESR before/after, identifiability from J^T J, and ``comparison.png``.

Identifiability: at a least-squares solution the Gauss-Newton Hessian ``H = J^T J`` (J the
Jacobian of the residual in log-value space) describes the loss near the optimum; an
eigenvector with an eigenvalue tiny against the largest is a combination of relative
changes the data cannot see (Nocedal & Wright, "Numerical Optimization", 2nd ed., Sec. 10.3;
Transtrum, Machta & Sethna, "Geometry of nonlinear least squares", PRE 83, 2011).  For an
electrical circuit driven and read as voltages, scaling every impedance by k (R*k, L*k, C/k,
saturation currents IS/k) leaves every transfer function unchanged, so it is named as such.
A learned output gain (``fit(..., learn_gain=True)``) is one more column of J (log g), listed
as "output gain"; it is a scale, not a netlist value, so it is never part of impedance scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from circuitsim.fit.trainer import GAIN_NAME, FitResult


@dataclass
class Direction:
    """A poorly determined combination of log-values: ``weights`` (name -> component of the unit eigenvector)."""

    eigenvalue: float  # relative to the largest eigenvalue of J^T J
    weights: dict[str, float]
    label: str

    def describe(self) -> str:
        terms = " ".join(f"{'+' if w > 0 else '-'} {n}" for n, w in self.weights.items())
        return f"{terms.lstrip('+ ')} (relative eigenvalue {self.eigenvalue:.1e}){self.label}"


def _impedance_sign(name: str) -> int:
    """+1 for impedance-like values (R, L), -1 for admittance-like ones (C, IS), 0 otherwise."""
    last = name.split(".")[-1].upper()
    if "." in name:
        return -1 if last in ("IS", "ISE", "ISC", "CJO", "CJ0", "CJE", "CJC", "IKF", "IKR") else (
            1 if last in ("RS", "RB", "RE", "RC") else 0)
    return {"R": 1, "L": 1, "C": -1}.get(last[:1], 0)


def identifiability(result: FitResult, rel_tol: float = 1e-6, show: float = 0.15) -> list[Direction]:
    """Directions of log-value space the data barely constrain (eigenvalue / largest < ``rel_tol``).

    Components of the unit eigenvector smaller than ``show`` times its largest are left out
    of the description.  Only log-space values take part in the impedance-scaling test.
    """
    if result.jacobian is None or len(result.names) == 0:
        return []
    columns = result.columns
    h = result.jacobian.T @ result.jacobian
    w, v = np.linalg.eigh(h)
    top = max(float(w[-1]), 1e-300)
    out = []
    for lam, vec in zip(w, v.T):
        rel = max(float(lam), 0.0) / top
        if rel >= rel_tol:
            continue
        vec = vec / np.max(np.abs(vec)) * (1 if vec[np.argmax(np.abs(vec))] > 0 else -1)
        weights = {n: float(c) for n, c in zip(columns, vec) if abs(c) >= show}
        if next(iter(weights.values())) < 0:  # write the first term with a plus sign
            weights = {n: -c for n, c in weights.items()}
        label = ""
        signs = {n: _impedance_sign(n) for n in weights}
        if all(signs.values()) and len(weights) > 1 and all(result.log_space.get(n, True) for n in weights):
            ref = next(iter(weights))
            if all(np.sign(weights[n]) * signs[n] == np.sign(weights[ref]) * signs[ref] for n in weights) and all(
                abs(abs(c) - 1.0) < 0.2 for c in weights.values()
            ):
                label = (" (impedance scaling: R*k, L*k, C/k, IS/k leave the output unchanged) — freeze one of "
                         "them")
        if not label:
            label = " — not determined by this data; freeze one of them or record a richer signal"
        out.append(Direction(rel, weights, label))
    return out


def _fmt_row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()


def report_text(result: FitResult, rel_tol: float = 1e-6) -> str:
    """The text report: values, ESR per recording, identifiability warnings."""
    lines = [f"fit: {result.message}; {result.evaluations} simulations in {result.seconds:.2f} s"]
    rows = [["value", "initial", "fitted", "change"]]
    for n in result.names:
        a, b = result.initial[n], result.fitted[n]
        rows.append([n, f"{a:.6g}", f"{b:.9g}", f"{(b - a) / a * 100:+.3f} %" if a else "n/a"])
    if result.gain is not None:  # learned scale of the simulated output: reported, never written to the netlist
        a, b = result.gain_initial or 1.0, result.gain
        rows.append([GAIN_NAME, f"{a:.6g}", f"{b:.9g}", f"{(b - a) / a * 100:+.3f} %"])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += [_fmt_row(r, widths) for r in rows]
    if result.gain is not None:
        lines.append("(output gain: multiplies the simulated output in the loss and the ESRs below; its initial "
                     "value is the least-squares gain of the initial simulation; not written to the netlist)")
    lines.append("")
    rows = [["recording", "knobs", "ESR train before", "after", "ESR held-out before", "after"]]
    for g in result.groups:
        knobs = " ".join(f"{k}={v:g}" for k, v in g.params.items()) or "-"
        rows.append([Path(g.name).name, knobs, f"{g.esr_train_before:.3e}", f"{g.esr_train_after:.3e}",
                     f"{g.esr_holdout_before:.3e}", f"{g.esr_holdout_after:.3e}"])
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines += [_fmt_row(r, widths) for r in rows]
    dirs = identifiability(result, rel_tol)
    lines.append("")
    if dirs:
        lines.append("identifiability: poorly determined combinations of relative changes:")
        lines += ["  " + d.describe() for d in dirs]
    elif result.jacobian is not None:
        lines.append("identifiability: every learned value is determined by the data")
    if result.interrupted:
        lines.append("interrupted: the values are the best seen before Ctrl-C")
    return "\n".join(lines) + "\n"


def comparison_plot(result: FitResult, path: str | Path) -> Path:
    """``comparison.png``: per recording the held-out waveform and error spectrum; the loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.signal

    k = len(result.groups)
    fig, axes = plt.subplots(k + 1, 2, figsize=(12, 3.2 * (k + 1)), squeeze=False)
    for i, (g, d) in enumerate(zip(result.groups, result.data)):
        t = np.arange(len(d.target)) / d.sample_rate
        s = d.split if d.split < len(d.target) - 1 else 0
        ax = axes[i, 0]
        ax.plot(t[s:], d.target[s:], "k", lw=1.0, label="recording")
        if g.output_before is not None:
            ax.plot(t[s:], g.output_before[s:], "C1", lw=0.7, alpha=0.7, label="initial")
        if g.output_after is not None:
            ax.plot(t[s:], g.output_after[s:], "C0--", lw=0.8, label="fitted")
        ax.set(title=f"{Path(g.name).name} (held-out)", xlabel="time (s)", ylabel="volts")
        ax.legend(loc="upper right", fontsize=8)
        ax = axes[i, 1]
        nper = min(4096, len(d.target))
        f, p = scipy.signal.welch(d.target, d.sample_rate, nperseg=nper)
        ax.semilogx(f[1:], 10 * np.log10(p[1:] + 1e-300), "k", label="recording")
        for out, style, lab in ((g.output_before, "C1", "initial error"), (g.output_after, "C0", "fitted error")):
            if out is not None:
                _, pe = scipy.signal.welch(out - d.target, d.sample_rate, nperseg=nper)
                ax.semilogx(f[1:], 10 * np.log10(pe[1:] + 1e-300), style, lw=0.8, label=lab)
        ax.set(title="spectra", xlabel="frequency (Hz)", ylabel="dB V^2/Hz")
        ax.legend(fontsize=8)
    ax = axes[k, 0]
    if result.history:
        ax.semilogy(np.minimum.accumulate(np.maximum(result.history, 1e-300)))
    ax.set(title="training loss (best so far)", xlabel="evaluation", ylabel="loss")
    axes[k, 1].axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(result: FitResult, directory: str | Path, rel_tol: float = 1e-6) -> str:
    """Write ``report.txt`` and ``comparison.png`` into ``directory``; returns the text."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = report_text(result, rel_tol)
    (directory / "report.txt").write_text(text)
    comparison_plot(result, directory / "comparison.png")
    return text


__all__ = ["Direction", "comparison_plot", "identifiability", "report_text", "write_report"]
