"""``circuitsim analyze``: the files and the summary (docs/analysis.md describes each measurement)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from circuitsim.analysis.smallsignal import FrequencyResponse, ac_response, log_frequencies
from circuitsim.errors import UsageError


def parse_sweep(text: str) -> tuple[str, np.ndarray]:
    """``KNOB=a:b:n`` -> (knob, n values from a to b)."""
    try:
        name, rng = text.split("=", 1)
        a, b, n = rng.split(":")
        values = np.linspace(float(a), float(b), int(n))
    except ValueError:
        raise UsageError(f"--sweep expects KNOB=a:b:n (e.g. drive=0:1:5), got '{text}'") from None
    if int(n) < 1:
        raise UsageError(f"--sweep {name}: n must be at least 1")
    return name.strip(), values


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish_plot(fig, axes, path: Path, title: str, legend: bool = True, suptitle: bool = False) -> None:  # noqa: ANN001
    """Grid, legend and title on ``axes``, then save ``fig`` as a 110 dpi PNG at ``path`` and close it."""
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if legend:
            ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(title, fontsize=10)
    else:
        axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_bode(path: Path, curves: Sequence[FrequencyResponse], title: str, refs: Sequence[FrequencyResponse] = ()
              ) -> None:
    """Magnitude (dB) and phase (degrees) against frequency; ``refs`` (ngspice) drawn dashed over them."""
    plt = _plt()
    fig, (am, ap) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    for k, c in enumerate(curves):
        am.semilogx(c.frequency_hz, c.magnitude_db, lw=1.8, color=f"C{k}", label=c.label)
        ap.semilogx(c.frequency_hz, c.phase_deg, lw=1.8, color=f"C{k}")
    for k, r in enumerate(refs):
        am.semilogx(r.frequency_hz, r.magnitude_db, lw=0.9, ls="--", color="k",
                    label=r.label if k == 0 else None)
        ap.semilogx(r.frequency_hz, r.phase_deg, lw=0.9, ls="--", color="k")
    am.set_ylabel("magnitude (dB)")
    ap.set_ylabel("phase (degrees)")
    ap.set_xlabel("frequency (Hz)")
    am.legend(fontsize=8)
    _finish_plot(fig, (am, ap), path, title, legend=False)


@dataclass
class AnalysisResult:
    files: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    ac_worst: tuple[float, float] | None = None  # (dB, degrees) against ngspice

    def text(self) -> str:
        return "\n".join(self.lines + ["", "wrote " + ", ".join(str(f) for f in self.files)]) + "\n"


def _write_csv(path: Path, header: str, rows: np.ndarray) -> None:
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.10g")


def analyze(
    netlist: str | Path,
    out_dir: str | Path,
    *,
    params: Mapping[str, float] | None = None,
    input_source: str = "VIN",
    output_node: str = "out",
    ac_csv: str | Path | None = None,
    sweep: str | None = None,
    ess: bool = False,
    aliasing: bool = True,
    ngspice: bool = True,
    sample_rate: float = 48000.0,
) -> AnalysisResult:
    """Run the analyses of ``circuitsim analyze`` and write their PNG and CSV files into ``out_dir``."""
    from circuitsim.analysis import distortion as dist
    from circuitsim.analysis.output import is_nonlinear
    from circuitsim.api import load, load_circuit

    netlist = Path(netlist)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = AnalysisResult()
    params = dict(params or {})
    opts = dict(params=params, input_source=input_source, output_node=output_node)
    model = load(netlist, "mna", sample_rate, params=params, input_source=input_source, output_node=output_node)
    f = log_frequencies()
    ours = ac_response(netlist, f, model=model)
    refs: list[FrequencyResponse] = []
    title = f"{netlist.name}: small-signal response at the DC operating point"
    if ngspice:
        from circuitsim.analysis.ngspice_ac import ac_ngspice
        from circuitsim.spice import _ngspice_executable

        if _ngspice_executable() is not None:  # the .ac runner needs the executable (batch mode)
            ref = ac_ngspice(netlist, **opts)
            ours_at = ac_response(netlist, ref.frequency_hz, model=model)
            res.ac_worst = ours_at.difference(ref)
            refs.append(ref)
            title += f"\nvs ngspice .ac: largest difference {res.ac_worst[0]:.1e} dB, {res.ac_worst[1]:.1e} deg"
            res.lines.append(f"AC response vs ngspice .ac ({len(f)} frequencies, 20 Hz-20 kHz): largest difference "
                             f"{res.ac_worst[0]:.2e} dB, {res.ac_worst[1]:.2e} degrees")
        else:
            res.lines.append("AC response: ngspice not found, no comparison")
    i1k = int(np.argmin(np.abs(f - 1000.0)))
    res.lines.append(f"gain at 1 kHz {ours.magnitude_db[i1k]:.2f} dB, phase {ours.phase_deg[i1k]:.1f} deg")
    ours.label = "circuitsim"
    plot_bode(out / "bode.png", [ours], title, refs)
    res.files.append(out / "bode.png")
    if ac_csv is not None:
        ours.write_csv(ac_csv)
        res.files.append(Path(ac_csv))

    if sweep:
        knob, values = parse_sweep(sweep)
        model.parameter(knob)  # one-line error for an unknown knob
        curves = []
        for v in values:
            m = load(netlist, "mna", sample_rate, params={**params, knob: float(v)}, input_source=input_source,
                     output_node=output_node)
            c = ac_response(netlist, f, model=m)
            c.label = f"{knob} = {v:g}"
            curves.append(c)
        plot_bode(out / "sweep.png", curves, f"{netlist.name}: small-signal response against {knob}")
        _write_csv(out / "sweep.csv", "frequency_hz," + ",".join(f"{knob}={v:g}_db" for v in values),
                   np.column_stack([f] + [c.magnitude_db for c in curves]))
        res.files += [out / "sweep.png", out / "sweep.csv"]

    if not is_nonlinear(load_circuit(netlist, params)):
        res.lines.append("linear circuit: no distortion analyses")
        return res

    plt = _plt()
    tc = dist.transfer_curve(netlist, **opts, sample_rate=sample_rate)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot(tc.input_v, tc.output_v, lw=1.5)
    ax.set_xlabel("input (V)")
    ax.set_ylabel("output (V)" if tc.kind == "dc" else "output minus its mean (V)")
    _finish_plot(fig, (ax,), out / "transfer.png", f"{netlist.name}: " + (
        "static transfer curve (DC sweep)" if tc.kind == "dc" else
        "AC-coupled: dynamic transfer curve, one period of 200 Hz"), legend=False)
    _write_csv(out / "transfer.csv", "input_v,output_v", np.column_stack([tc.input_v, tc.output_v]))
    res.files += [out / "transfer.png", out / "transfer.csv"]

    levels = np.geomspace(0.01, 2.0, 12)
    hl = dist.thd_against_level(netlist, levels, **opts, sample_rate=sample_rate)
    k = hl.harmonics_v.shape[1]
    rel = 20 * np.log10(np.maximum(hl.harmonics_v[:, 1:], 1e-300) / hl.harmonics_v[:, :1])
    _write_csv(out / "thd.csv", "input_v,thd_percent,fundamental_v," + ",".join(f"h{j}_dbc" for j in range(2, k + 1)),
               np.column_stack([levels, 100 * hl.thd, hl.harmonics_v[:, 0], rel]))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.loglog(levels, 100 * hl.thd, "o-")
    a1.set_xlabel("input sine amplitude (V)")
    a1.set_ylabel("THD (%)")
    for j in range(min(k - 1, 4)):
        a2.semilogx(levels, rel[:, j], "o-", label=f"H{j + 2}")
    a2.set_xlabel("input sine amplitude (V)")
    a2.set_ylabel("level relative to the fundamental (dBc)")
    a2.legend(fontsize=8)
    _finish_plot(fig, (a1, a2), out / "thd.png",
                 f"{netlist.name}: harmonics of a {hl.f0:g} Hz sine against level (8x oversampled)", legend=False,
                 suptitle=True)
    res.files += [out / "thd.png", out / "thd.csv"]
    head = f"{'input (V)':>10}{'THD (%)':>10}{'H2 (dBc)':>10}{'H3 (dBc)':>10}"
    res.lines += ["", f"THD of a {hl.f0:g} Hz sine:", head]
    res.lines += [f"{a:>10.3g}{100 * t:>10.3g}{r[0]:>10.1f}{r[1]:>10.1f}" for a, t, r in zip(levels, hl.thd, rel)]

    if sweep:  # the distortion at each knob setting too
        knob, values = parse_sweep(sweep)
        thds = [100 * dist.thd_against_level(netlist, levels, params={**params, knob: float(v)},
                                             input_source=input_source, output_node=output_node,
                                             sample_rate=sample_rate).thd for v in values]
        _write_csv(out / "sweep_thd.csv", "input_v," + ",".join(f"{knob}={v:g}_thd_percent" for v in values),
                   np.column_stack([levels] + thds))
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for v, t in zip(values, thds):
            ax.loglog(levels, t, "o-", label=f"{knob} = {v:g}")
        ax.set_xlabel("input sine amplitude (V)")
        ax.set_ylabel("THD (%)")
        _finish_plot(fig, (ax,), out / "sweep_thd.png", f"{netlist.name}: THD of a {hl.f0:g} Hz sine against {knob}")
        res.files += [out / "sweep_thd.png", out / "sweep_thd.csv"]

    if aliasing:
        rows = dist.aliasing_report(netlist, **opts, sample_rate=sample_rate)
        res.lines += ["", aliasing_table(rows)]
        _write_csv(out / "aliasing.csv", "oversample,aliased_db,ns_per_sample",
                   np.array([[r.oversample, r.aliased_db, r.ns_per_sample] for r in rows]))
        plot_aliasing(out / "aliasing.png", {netlist.stem: rows})
        res.files += [out / "aliasing.png", out / "aliasing.csv"]

    if ess:
        e = dist.ess_harmonics(netlist, **opts, sample_rate=sample_rate)
        db = 20 * np.log10(np.maximum(np.abs(e.harmonics), 1e-300))
        _write_csv(out / "ess.csv", "frequency_hz," + ",".join(f"h{j}_db" for j in range(1, len(db) + 1)),
                   np.column_stack([e.frequency_hz, db.T]))
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for j, row in enumerate(db):
            ax.semilogx(e.frequency_hz, row, label=f"H{j + 1}")
        ax.set_xlabel("excitation frequency (Hz)")
        ax.set_ylabel("harmonic amplitude per volt of input (dB)")
        _finish_plot(fig, (ax,), out / "ess.png",
                     f"{netlist.name}: exponential sine sweep ({e.amplitude:g} V), harmonic responses")
        res.files += [out / "ess.png", out / "ess.csv"]
    return res


def aliasing_table(rows: Sequence) -> str:  # noqa: ANN001 - AliasingRow
    """Markdown table: oversampling factor, aliased energy (dB re harmonics), cost (ns per audio sample)."""
    lines = ["| oversample | aliased / harmonic energy (dB) | ns per audio sample |", "|---:|---:|---:|"]
    lines += [f"| {r.oversample}x | {r.aliased_db:.1f} | {r.ns_per_sample:.0f} |" for r in rows]
    return "\n".join(lines)


def plot_aliasing(path: Path, results: Mapping[str, Sequence]) -> None:
    """Aliased energy and cost against the oversampling factor, one line per circuit."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in results.items():
        n = [r.oversample for r in rows]
        a1.semilogx(n, [r.aliased_db for r in rows], "o-", base=2, label=name)
        a2.loglog(n, [r.ns_per_sample for r in rows], "o-", base=2, label=name)
        a2.set_yscale("log", base=10)
        for ax in (a1, a2):
            ax.set_xticks(n, [f"{k}x" for k in n])
    a1.set_xlabel("oversampling factor")
    a1.set_ylabel("aliased / harmonic energy (dB)")
    a2.set_xlabel("oversampling factor")
    a2.set_ylabel("cost (ns per audio sample)")
    _finish_plot(fig, (a1, a2), path, "1245 Hz sine at 1 V, 48 kHz output: aliasing against oversampling",
                 suptitle=True)


__all__ = ["AnalysisResult", "aliasing_table", "analyze", "parse_sweep", "plot_aliasing", "plot_bode"]
