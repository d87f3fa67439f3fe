"""Fitting speed and accuracy on ngspice-made recordings, each fit timed under ``/usr/bin/time -v``.

Cases (issue 12's acceptance):

``clipper4``
    A second-order diode clipper (series C1 470 nF, series R1 2.2 kOhm, shunt C2 10 nF,
    anti-parallel 1N914 pair; R1 known) with C1 +30 %, C2 -25 %, IS -40 %, N +26 %.  The
    "recording": 1 s of a 300 Hz sine ramped as t^2 to 4 V at 48 kHz, oversampled x8
    (:func:`circuitsim.audio.oversample`), simulated by ngspice at 384 kHz (TMAX = 1/(4 fs),
    reltol 1e-6) and decimated back to 48 kHz (:func:`circuitsim.audio.decimate`).  The fit
    (LM, ``oversample=8``, last 20 % held out) starts from the nominal values.
``ts808``
    ``netlists/ts808.cir`` (the whole pedal: buffers, clipping, tone, level) with six values
    changed (R4 +30 %, C3 +40 %, IS -40 %, N +25 % in the clipping stage, R7 -25 % and C5 +30 %,
    the tone stage's fixed low-pass, in the tone stage), three 1 s recordings at drive 0.2 / 0.5 /
    0.8 (48 kHz x 8, made as above from a 700 Hz + 3.1 kHz two-tone ramped to 0.3 V: the second
    tone probes the tone stage while the diodes are still off), one model per drive setting;
    then the fitted values against ngspice at an unseen drive (0.65) on plucked notes.  (C6,
    in series with R8 behind the tone pot, moves the output so little at these settings that
    LM sends it to 0 or infinity: it is not one of the six.)

The ngspice data are made first (not timed); each fit runs in a child process under
``/usr/bin/time -v`` so that its wall time and peak resident memory are its own.

    python benchmarks/bench_fit.py [--case clipper4 ts808] [--seconds 1] [--write]
"""

from __future__ import annotations

import argparse
import json
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

from benchmarks.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FS = 48000
UP = 8
SECTION = "## Fitting"

CLIPPER2 = ROOT / "tests" / "data" / "netlists" / "clipper2.cir"  # series C1, R1, shunt C2, 1N914 pair
CLIPPER_TRUE = {"C1": 470e-9 * 1.30, "C2": 10e-9 * 0.75, "D1N914.IS": 2.52e-9 * 0.60, "D1N914.N": 1.752 * 1.26}
TS808_TRUE = {"R4": 4.7e3 * 1.30, "C3": 47e-9 * 1.40, "D1N914.IS": 2.52e-9 * 0.60, "D1N914.N": 1.752 * 1.25,
              "R7": 1e3 * 0.75, "C5": 220e-9 * 1.30}
TS808_DRIVES = (0.2, 0.5, 0.8)
TS808_TEST_DRIVE = 0.65


def ramp(seconds: float, freq: float, peak: float, fs: float, second: float | None = None) -> np.ndarray:
    """Sine (volts) whose amplitude grows as t^2 to ``peak``: the diodes go from off to hard clipping.

    With ``second`` (hertz) a second tone at half the amplitude is added (peak still ``peak``).
    """
    t = np.arange(int(round(seconds * fs))) / fs
    wave = np.sin(2 * np.pi * freq * t)
    if second is not None:
        wave = (wave + 0.5 * np.sin(2 * np.pi * second * t)) / 1.5
    return peak * (t / seconds) ** 2 * wave


def plucks(seconds: float, fs: float) -> np.ndarray:
    """Decaying two-tone plucks at 0.02, 0.1 and 0.3 V (volts): a signal the fit never saw."""
    t = np.arange(int(round(seconds * fs))) / fs
    x = np.zeros_like(t)
    for start, level in zip((0.0, seconds / 3, 2 * seconds / 3), (0.02, 0.1, 0.3)):
        tau = np.clip(t - start, 0, None)
        x += (t >= start) * level * np.exp(-tau / 0.05) * (np.sin(2 * np.pi * 196 * tau)
                                                            + 0.5 * np.sin(2 * np.pi * 1500 * tau))
    return x


def perturbed(netlist: Path, values: dict[str, float], out: Path) -> Path:
    """A copy of ``netlist`` with ``values`` (netlist names, SI units) written in."""
    import circuitsim
    from circuitsim.netlist.writer import rewrite_values

    model = circuitsim.load(netlist, method="dk", sample_rate=FS * UP)
    spans = {model.circuit.params[n].span: v for n, v in values.items()}
    out.write_text(rewrite_values(model.circuit.netlist, spans)[model.circuit.netlist.path])
    return out


def recording(netlist: Path, x: np.ndarray, params: dict[str, float] | None = None) -> np.ndarray:
    """ngspice's output (volts at 48 kHz) for input ``x`` (48 kHz): oversampled, simulated at 384 kHz, decimated."""
    from circuitsim.audio import decimate, oversample
    from circuitsim.spice import simulate_ngspice

    xs = oversample(x, UP)
    return decimate(simulate_ngspice(netlist, xs, FS * UP, tmax=1 / (4 * FS * UP), params=params), UP)


def make_data(case: str, seconds: float, work: Path) -> Path:
    """ngspice-made recordings for ``case`` in ``work/case.npz`` (and the netlists they need)."""
    if case == "clipper4":
        nominal = work / "clipper2.cir"
        nominal.write_text(CLIPPER2.read_text())
        true = perturbed(nominal, CLIPPER_TRUE, work / "clipper2_true.cir")
        x = ramp(seconds, 300.0, 4.0, FS)
        np.savez(work / "clipper4.npz", x=x, y=recording(true, x), netlist=str(nominal))
    else:
        nominal = ROOT / "netlists" / "ts808.cir"
        true = perturbed(nominal, TS808_TRUE, work / "ts808_true.cir")
        x = ramp(seconds, 700.0, 0.3, FS, second=3100.0)
        ys = [recording(true, x, {"drive": d}) for d in TS808_DRIVES]
        xt = plucks(0.5, FS)
        yt = recording(true, xt, {"drive": TS808_TEST_DRIVE})
        np.savez(work / "ts808.npz", x=x, ys=np.stack(ys), xt=xt, yt=yt, netlist=str(nominal))
    return work / f"{case}.npz"


def child(case: str, data: Path) -> None:
    """Run one fit (the process timed by /usr/bin/time) and print its results as JSON on the last line."""
    import torch

    import circuitsim
    from circuitsim.audio import decimate, oversample
    from circuitsim.fit import FitData, fit
    from circuitsim.validate import esr

    torch.set_num_threads(1)
    d = np.load(data)
    t0 = time.perf_counter()
    if case == "clipper4":
        model = circuitsim.load(str(d["netlist"]), method="dk", sample_rate=FS * UP)
        res = fit(model, FitData(d["x"], d["y"], FS, holdout=0.2), learn=list(CLIPPER_TRUE), oversample=UP,
                  progress=False, keep_outputs=False)
        true, extra = CLIPPER_TRUE, {}
    else:
        models = [circuitsim.load(str(d["netlist"]), method="dk", sample_rate=FS * UP, params={"drive": v})
                  for v in TS808_DRIVES]
        data = [FitData(d["x"], y, FS, params={"drive": v}, name=f"drive={v}", holdout=0.2)
                for v, y in zip(TS808_DRIVES, d["ys"])]
        res = fit(models, data, learn=list(TS808_TRUE), oversample=UP, progress=False, keep_outputs=False)
        true = TS808_TRUE
        unseen = circuitsim.load(str(d["netlist"]), method="dk", sample_rate=FS * UP,
                                 params={"drive": TS808_TEST_DRIVE})
        with torch.no_grad():
            xt = torch.tensor(oversample(d["xt"], UP)[None, :])
            before = decimate(unseen(xt)[0].numpy(), UP)
            for n, v in res.fitted.items():
                unseen.set_value(n, v)
            after = decimate(unseen(xt)[0].numpy(), UP)
        extra = {"unseen_esr_nominal": esr(before, d["yt"]), "unseen_esr_fitted": esr(after, d["yt"])}
    seconds = time.perf_counter() - t0
    out = {
        "fit_seconds": seconds, "evaluations": res.evaluations, "message": res.message,
        "errors": {n: res.fitted[n] / v - 1 for n, v in true.items()},
        "esr_train": [g.esr_train_after for g in res.groups], "esr_holdout": [g.esr_holdout_after for g in res.groups],
        "esr_holdout_before": [g.esr_holdout_before for g in res.groups], **extra,
    }
    print(json.dumps(out))


def timed_child(case: str, data: Path) -> dict:
    """The child under /usr/bin/time -v: its JSON plus wall s, user s, sys s, peak RSS MB, minor page faults."""
    cmd = ["/usr/bin/time", "-v", sys.executable, str(Path(__file__).resolve()), "--child", case, str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, NUMBA_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"{case} fit failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}:\s*(.+)", proc.stderr).group(1).strip()

    parts = [float(p) for p in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(wall=sum(p * 60**i for i, p in enumerate(reversed(parts))), user=float(field("User time (seconds)")),
               sys=float(field("System time (seconds)")),
               rss_mb=float(field("Maximum resident set size (kbytes)")) / 1024,
               minor_faults=int(field("Minor (reclaiming a frame) page faults")))
    return res


_FLOOR_IMPORTS = "import torch, numba, scipy.optimize, circuitsim.fit"
# numba's first call of any compiled function, even one loaded from its cache, initialises LLVM and
# its typing registries (which import scipy.linalg): about 50 MB that every fit pays
_FLOOR_NUMBA = _FLOOR_IMPORTS + "\nf = numba.njit(lambda x: x + 1.0)\nf(1.0)"


def runtime_floor(code: str = _FLOOR_IMPORTS) -> float:
    """Peak RSS (MB) of a process that only runs ``code`` (default: the imports of a fit)."""
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code], capture_output=True, text=True)
    return float(re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", proc.stderr).group(1)) / 1024


def describe(case: str, r: dict) -> str:
    errs = ", ".join(f"{n} {100 * e:+.4f} %" for n, e in r["errors"].items())
    worst = max(abs(e) for e in r["errors"].values())
    lines = [
        f"| {case}: values recovered (error) | {errs} (worst {100 * worst:.4f} %) |",
        f"| {case}: fit time (in-process) / process wall (`/usr/bin/time -v`) | {r['fit_seconds']:.1f} s / "
        f"{r['wall']:.1f} s (user {r['user']:.1f} s, sys {r['sys']:.1f} s), {r['evaluations']} simulations |",
        f"| {case}: peak RSS / minor page faults | {r['rss_mb']:.0f} MB / {r['minor_faults'] / 1e6:.2f} M |",
        f"| {case}: ESR train / held-out after the fit | "
        + ", ".join(f"{a:.2e} / {b:.2e}" for a, b in zip(r["esr_train"], r["esr_holdout"])) + " |",
    ]
    if "unseen_esr_fitted" in r:
        lines.append(f"| {case}: unseen drive {TS808_TEST_DRIVE}, plucks: ESR nominal → fitted | "
                     f"{r['unseen_esr_nominal']:.2e} → {r['unseen_esr_fitted']:.2e} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="*", default=["clipper4", "ts808"], choices=["clipper4", "ts808"])
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each recording, seconds at 48 kHz")
    ap.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md (its own section)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_fit_") as tmp:
        for case in args.case:
            t0 = time.perf_counter()
            data = make_data(case, args.seconds, Path(tmp))
            print(f"{case}: ngspice data in {time.perf_counter() - t0:.1f} s", flush=True)
            r = timed_child(case, data)
            print(json.dumps(r), flush=True)
            rows.append(describe(case, r))
    floor, floor_numba = runtime_floor(), runtime_floor(_FLOOR_NUMBA)
    table = "| | |\n|---|---|\n" + "\n".join(rows)
    table += f"\n| runtime floor: peak RSS of `import torch, numba, scipy.optimize, circuitsim.fit` | {floor:.0f} MB |"
    table += f"\n| runtime floor: the same plus numba's first compiled call (LLVM initialised) | {floor_numba:.0f} MB |"
    print(table)
    if args.write:
        text = (
            f"{SECTION} ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `python benchmarks/bench_fit.py --write --seconds {args.seconds:g} --case {' '.join(args.case)}`"
            " — each fit in its own process under `/usr/bin/time -v`; ngspice data made first, not timed; "
            f"{args.seconds:g} s recordings at 48 kHz, simulated at 384 kHz (x8), last 20 % held out.  \n"
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread "
            f"(NUMBA_NUM_THREADS=1, torch threads 1), load average {os.getloadavg()[0]:.1f} at the end "
            "(shared with other jobs).\n\n" + table + "\n"
        )
        print(f"\nwrote {write_section(SECTION + ' (', text)}")


if __name__ == "__main__":
    main()
