"""DK against ngspice: speed and accuracy on the same input at 48 kHz x 8, ngspice timed on its own work.

For each circuit, in one run on one thread:

- circuitsim DK forward (compiled Newton per sample), no gradients, best of ``--repeats``;
- circuitsim DK forward + backward (compiled adjoint) with every component value learnable;
- ngspice 39 in batch mode (``ngspice -b``) on the same netlist with **its own source** for the
  same signal, at matched accuracy: TMAX = 1/fs_sim, ``.options reltol=1e-6 abstol=1e-15
  vntol=1e-9``.  The time is ngspice's own account of the transient (``.options acct``:
  "Transient analysis time"), best of ``--spice-repeats``: no Python file writing or reading
  is counted.  With ``--signal sine`` (default: 1 kHz, 0.5 s, as issue 12's table) the source
  is ngspice's ``SIN(0 A f)``; with ``--signal guitar`` (plucked notes, 0.3 V peak) it is the
  XSPICE ``filesource`` reading a ``time value`` text file written *before* the run (ngspice
  parses it itself, inside its own analysis time; it interpolates linearly between samples);
- the ESR of DK's output against ngspice's (ngspice's points interpolated to the sample
  instants by a cubic spline), so that a fast wrong answer cannot hide.

It prints ns/sample, the real-time factor (audio seconds per wall second at the simulation
rate), the speed ratio against ngspice, the bytes saved per sample for backward and the mean
Newton iterations per sample.

    python benchmarks/bench_dk.py [--seconds 0.5] [--signal sine|guitar] [--circuits diode_clipper ...]
                                  [--no-ngspice] [--write]      # --write updates BENCHMARKS.md's section
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_kernel import _best as timed  # noqa: E402  (best of N wall-clock runs)
from benchmarks.report import write_section  # noqa: E402
from circuitsim.api import load  # noqa: E402
from circuitsim.kernels import autograd, core  # noqa: E402
from circuitsim.signals import karplus_strong  # noqa: E402
from circuitsim.spice import _common_edits, _Netlist, _read_raw, _to_samples  # noqa: E402
from circuitsim.validate import esr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# every netlist in netlists/ (issue 12: >= 30x ngspice on each)
CIRCUITS = ["diode_clipper", "ts808_clipping", "bjt_common_emitter", "triode_common_cathode", "fmv_tonestack",
            "ts808_tone", "ts808", "opamp_rails"]
FS = 48000 * 8
TOLS = {"reltol": 1e-6, "abstol": 1e-15, "vntol": 1e-9}
SECTION = "## DK against ngspice"


def guitar(seconds: float, fs: float) -> np.ndarray:
    """Plucked notes (Karplus-Strong), 0.3 V peak: a guitar DI at pickup level (volts)."""
    notes = [82.4, 110.0, 146.8, 196.0, 246.9, 329.6]
    n_each = int(seconds * fs / len(notes)) + 1
    x = np.concatenate([karplus_strong(f, n_each / fs, fs, seed=i) for i, f in enumerate(notes)])[: int(seconds * fs)]
    return 0.3 * x / np.max(np.abs(x))


def sine(seconds: float, fs: float, freq: float, amplitude: float) -> np.ndarray:
    """``amplitude * sin(2 pi freq t)`` (volts) at ``t = k/fs``: exactly what ngspice's ``SIN(0 A f)`` gives."""
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(round(seconds * fs))) / fs)


def ngspice_deck(netlist: Path, source_line: str, n: int, fs: float, extra: list[str]) -> str:
    """The netlist with ``VIN`` replaced by ``source_line`` ({pos} {neg} filled in) and a matched-accuracy .tran.

    Analyses and control blocks are stripped and include paths made absolute as in
    :mod:`circuitsim.spice`; ``.options acct`` makes ngspice print its own timings.
    """
    nl = _Netlist.read(netlist)
    replace, append = _common_edits(nl, None)
    k = next(i for i, st in enumerate(nl.stmts) if st.depth == 0 and not st.control and st.keyword == "vin")
    toks = nl.stmts[k].tokens
    replace[k] = source_line.format(pos=toks[1], neg=toks[2])
    h = 1.0 / fs
    opts = " ".join(f"{k}={v!r}" for k, v in TOLS.items())
    append = append + extra + [f".options {opts} acct", ".save v(out)", f".tran {h!r} {(n - 1) * h!r} 0 {h!r}"]
    return nl.render(replace, append)


_ACCT = re.compile(r"Transient analysis time\s*=\s*([0-9.eE+-]+)")


def run_ngspice(deck: str, work: Path, repeats: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Run ``deck`` ``repeats`` times: (best transient analysis time s, best process wall s, t, v(out))."""
    cir, raw = work / "deck.cir", work / "out.raw"
    cir.write_text(deck)
    best_acct = best_wall = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(["ngspice", "-b", "-n", "-r", str(raw), str(cir)], cwd=work, capture_output=True,
                              text=True, errors="replace")
        wall = time.perf_counter() - t0
        m = _ACCT.search(proc.stdout + proc.stderr)
        if proc.returncode != 0 or m is None:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise RuntimeError(f"ngspice failed (exit {proc.returncode}): {' | '.join(tail)}")
        best_acct, best_wall = min(best_acct, float(m.group(1))), min(best_wall, wall)
    _, names, arr = _read_raw(raw)[-1]
    return best_acct, best_wall, arr[:, names.index("time")], arr[:, names.index("v(out)")]


def ngspice_reference(path: Path, x: np.ndarray, signal: str, freq: float, amplitude: float,
                      repeats: int) -> tuple[float, float, np.ndarray]:
    """ngspice's own time for the signal (s, from acct), its process wall time (s) and its output at k/FS."""
    n = len(x)
    with tempfile.TemporaryDirectory(prefix="bench_dk_") as tmp:
        work = Path(tmp)
        if signal == "sine":
            deck = ngspice_deck(path, f"VIN {{pos}} {{neg}} DC 0 SIN(0 {amplitude!r} {freq!r})", n, FS, [])
        else:
            data = work / "input.txt"
            t = np.arange(n + 2) / FS
            np.savetxt(data, np.column_stack([t, np.concatenate([x, [x[-1]] * 2])]), fmt="%.17g")
            deck = ngspice_deck(
                path, "avin %vd([{pos} {neg}]) bench_src", n, FS,
                [f'.model bench_src filesource (file="{data}" amploffset=[0] amplscale=[1] timeoffset=0 '
                 "timescale=1 timerelative=false amplstep=false)"])
        acct, wall, t, y = run_ngspice(deck, work, repeats)
    return acct, wall, _to_samples(t, y, FS, n, "cubic")


def _saved_bytes(model, n: int) -> float:
    """Bytes saved per sample for backward over ``n`` samples: port voltages and inputs, and every state
    (within ``KernelOptions.state_budget``) or a state checkpoint per ``checkpoint`` samples."""
    try:
        nx = model._q.shape[1]
        ports = 8 * (len(model.topology.ports) + len(model.topology.sources))
    except AttributeError:  # another formulation's internals: not known here
        return math.nan
    opts = autograd.DEFAULT_OPTIONS
    return ports + 8 * nx * core.saved_states(opts, core.save_mode(opts, True, 1, n, nx), n) / n


def forward_backward_times(model, xt: torch.Tensor, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Best-of wall seconds of ``model(xt)`` without gradients, and of forward + backward of mean(y^2)
    with every component value learnable (after a warm-up that compiles or loads the kernels)."""
    with torch.no_grad():
        model(xt[:, :1000])  # compile (or load from the cache) and warm up

    def forward():
        with torch.no_grad():
            return model(xt)

    def forward_backward():
        model.zero_grad()
        y = model(xt)
        (y**2).mean().backward()

    t_fwd = timed(forward, repeats)
    forward_backward()
    return t_fwd, timed(forward_backward, max(repeats - 1, 1))


def bench(name: str, x: np.ndarray, args: argparse.Namespace) -> dict:
    path = ROOT / "netlists" / f"{name}.cir"
    n = len(x)
    model = load(path, "dk", FS)
    xt = torch.as_tensor(x).unsqueeze(0)
    t_fwd, t_bwd = forward_backward_times(model, xt, args.repeats)
    with torch.no_grad():
        y = model(xt)[0].numpy()
    diag = getattr(model, "diagnostics", None)
    row = {
        "circuit": name,
        "fwd_ns": t_fwd / n * 1e9,
        "fb_ns": t_bwd / n * 1e9,
        "rt": (n / FS) / t_fwd,
        "fb_ratio": t_bwd / t_fwd,
        "bytes": _saved_bytes(model, n),
        "iters": diag.mean_iterations if diag is not None else math.nan,
        "spice_ns": math.nan, "spice_wall_ns": math.nan, "ratio": math.nan, "esr": math.nan,
    }
    if not args.no_ngspice:
        acct, wall, ref = ngspice_reference(path, x, args.signal, args.freq, args.amplitude, args.spice_repeats)
        row.update(spice_ns=acct / n * 1e9, spice_wall_ns=wall / n * 1e9, ratio=acct / t_fwd, esr=esr(y, ref))
    return row


def _f(v: float, fmt: str) -> str:
    return "–" if not math.isfinite(v) else format(v, fmt)


def table(rows: list[dict]) -> str:
    head = ("| circuit | DK fwd ns/sample | real-time x | DK fwd+bwd ns/sample | fwd+bwd / fwd "
            "| ngspice ns/sample (own analysis time) | ngspice process ns/sample | DK speed-up vs ngspice "
            "| saved bytes/sample | Newton it/sample | ESR vs ngspice |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ratio = f"{r['ratio']:.1f}x" if math.isfinite(r["ratio"]) else "–"
        lines.append(
            f"| {r['circuit']} | {r['fwd_ns']:.0f} | {r['rt']:.0f} | {r['fb_ns']:.0f} | {r['fb_ratio']:.2f} "
            f"| {_f(r['spice_ns'], '.0f')} | {_f(r['spice_wall_ns'], '.0f')} | {ratio} "
            f"| {_f(r['bytes'], '.1f')} | {_f(r['iters'], '.2f')} | {_f(r['esr'], '.2e')} |"
        )
    return "\n".join(lines)


def arguments(doc: str, circuits: list[str], seconds: float, signal: str, repeats: int, spice_repeats: int
              ) -> argparse.ArgumentParser:
    """The command line shared by the formulation benchmarks (bench_dk.py, bench_wdf.py), with their defaults."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=seconds, help="seconds of audio (at 48 kHz x 8)")
    ap.add_argument("--signal", choices=["sine", "guitar"], default=signal,
                    help="sine: ngspice's own SIN source; guitar: plucked notes through XSPICE filesource")
    ap.add_argument("--freq", type=float, default=1000.0, help="sine frequency, hertz")
    ap.add_argument("--amplitude", type=float, default=0.5, help="sine peak, volts")
    ap.add_argument("--circuits", nargs="*", default=circuits, help="netlists/<name>.cir to run")
    ap.add_argument("--no-ngspice", action="store_true", help="circuitsim timings only")
    ap.add_argument("--repeats", type=int, default=repeats, help="best of N (forward)")
    ap.add_argument("--spice-repeats", type=int, default=spice_repeats, help="best of N for ngspice")
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md (its own section)")
    return ap


def run_rows(args: argparse.Namespace, bench_fn, table_fn) -> tuple[list[dict], str]:  # noqa: ANN001
    """One thread; ``bench_fn(name, x, args)`` per circuit on the chosen signal, each row printed as it
    comes; returns the rows and ``table_fn(rows)`` (printed too)."""
    torch.set_num_threads(1)
    x = sine(args.seconds, FS, args.freq, args.amplitude) if args.signal == "sine" else guitar(args.seconds, FS)
    rows = []
    for name in args.circuits:
        rows.append(bench_fn(name, x, args))
        print(table_fn(rows[-1:]).splitlines()[-1], flush=True)
    out = table_fn(rows)
    print("\n" + out)
    return rows, out


def main() -> None:
    args = arguments(__doc__, CIRCUITS, seconds=0.5, signal="sine", repeats=3, spice_repeats=3).parse_args()
    _, out = run_rows(args, bench, table)
    if args.write:
        flags = [f"--seconds {args.seconds:g}", f"--signal {args.signal}"]
        if args.circuits != CIRCUITS:
            flags.append("--circuits " + " ".join(args.circuits))
        if args.no_ngspice:
            flags.append("--no-ngspice")
        if args.signal == "sine":
            what = f"a {args.freq:g} Hz sine of {args.amplitude:g} V peak, {args.seconds:g} s"
            src = f"its own `SIN(0 {args.amplitude:g} {args.freq:g})` source"
        else:
            what = f"{args.seconds:g} s of plucked notes at 0.3 V peak"
            src = "the XSPICE `filesource` reading the same samples from a text file written before the run"
        load1 = os.getloadavg()[0]
        text = (
            f"{SECTION} ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `python benchmarks/bench_dk.py --write {' '.join(flags)}`  \n"
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread used "
            f"(NUMBA_NUM_THREADS=1, torch threads 1), load average {load1:.1f} when it ran (shared with other "
            f"jobs: figures are best of {args.repeats} / {args.spice_repeats}); Python {platform.python_version()}, "
            f"torch {torch.__version__}.  \n"
            f"Input: {what}, simulated at {FS} Hz (48 kHz x 8). ngspice runs in batch mode with {src}, "
            "TMAX = 1/fs_sim, reltol 1e-6, abstol 1e-15, vntol 1e-9; its time is its own transient analysis "
            "time (`.options acct`), no Python file I/O counted; the process column is the whole `ngspice -b` "
            "process (start-up, parsing, raw file). Backward: every component value learnable, "
            "loss = mean(y^2). The forward (no gradients) reuses the derived matrices and the DC operating point "
            "of the previous repeat while no value has changed (`AbstractCircuitModule.cached`, as a repeated "
            "render does); forward + backward rebuilds the matrices and their graph every call and reuses only "
            "the Newton solution of the DC operating point (found without autograd; its implicit-function step "
            "is rebuilt), which a training step, whose values have changed, finds again.\n\n"
            + out
            + "\n\nEarlier versions of this table (74–114×) timed ngspice through the Python harness, which writes a "
            "384,000-line input file and reads the raw file back: more than ngspice's own simulation. Issue 12's "
            "targets: ≥ 30× ngspice on every netlist, forward + backward ≤ 2.5× forward.\n"
        )
        print(f"\nwrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
