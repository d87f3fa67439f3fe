"""DK's local-error-driven substeps (``max_local_error``) against the fixed step and against oversampling more.

For each clipped case whose ESR against ngspice at 48 kHz x 8 exceeds 1e-5 with the fixed step
(docs/validation.md, "Substepping"), in one run on one thread:

- the ESR against ngspice (TMAX = 1/(16 fs) of each rate, as ``validate``) of DK at x 8 with the
  fixed step, at x 8 with each ``--tolerances`` value, and at x 16 and x 32 with the fixed step;
- the share of the x 8 samples run split (``diagnostics.refined``: flagged ones and the gaps joined
  between them) and the finest split;
- the forward time (no gradients) on the signal repeated ``--tile`` times (so that the per-call work, the
  operating point and the matrices, does not hide the per-sample work), best of ``--repeats``, the runs
  interleaved, as a ratio to the fixed step at x 8 (x 16 and x 32 include their 2x and 4x more samples:
  the cost of the other cure), and the share of the tiled signal's samples run split.
  The time is the process's CPU time (``time.process_time``, one thread): on a shared machine wall
  time mostly measures the other processes.

    python benchmarks/bench_lte.py [--cases ts808,ds1,mkiicp,ece341] [--tolerances 1e-2,3e-3] [--x4]
                                   [--cache DIR]    # DIR keeps the ngspice references between runs
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from circuitsim.api import load  # noqa: E402
from circuitsim.signals import standard_signals  # noqa: E402
from circuitsim.spice import simulate_ngspice  # noqa: E402
from circuitsim.validate import esr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# name: (netlist, input source, output node, ngspice tolerances, signal)
CASES = {
    "ts808": ("netlists/ts808_clipping.cir", "VIN", "out", {}, "sweep"),
    "ds1": ("netlists/bjt_common_emitter.cir", "VIN", "out", {}, "sweep"),
    "mkiicp": ("tests/data/wild/mkiicp_full.net", "V1", "wout", {"abstol": 1e-9, "vntol": 1e-6}, "sweep"),
    "ece341": ("tests/data/wild/ece341_bjt_tran.sp", "VIN", "out", {}, "sweep"),
    "ts808_pluck": ("netlists/ts808_clipping.cir", "VIN", "out", {}, "pluck_1V"),
    "mkiicp_pluck": ("tests/data/wild/mkiicp_full.net", "V1", "wout", {"abstol": 1e-9, "vntol": 1e-6}, "pluck_1V"),
}


def reference(case: str, factor: int, duration: float, cache: Path | None) -> np.ndarray:
    """ngspice's output for the case's signal at 48 kHz x ``factor`` (volts), cached under ``cache``."""
    path, source, output, tols, signal = CASES[case]
    file = None if cache is None else cache / f"ref_{case}_x{factor}_{duration:g}.npy"
    if file is not None and file.exists():
        return np.load(file)
    fs = 48000.0 * factor
    ref = simulate_ngspice(ROOT / path, standard_signals(fs, duration)[signal], fs, source, output,
                           tmax=1 / (16 * fs), **tols)
    if file is not None:
        np.save(file, ref)
    return ref


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="ts808,ds1,mkiicp,ece341")
    ap.add_argument("--tolerances", default="1e-2,3e-3")
    ap.add_argument("--duration", type=float, default=0.01, help="seconds per signal")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tile", type=int, default=20, help="times the signal is repeated for the timing")
    ap.add_argument("--x4", action="store_true", help="also the fixed step and each tolerance at 48 kHz x 4")
    ap.add_argument("--cache", type=Path, default=None, help="folder for the ngspice references")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    tols = [float(t) for t in args.tolerances.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f}; {args.duration * 1e3:g} ms per signal")
    print(f"{'case':<14}{'run':<18}{'ESR':>10}{'split':>8}{'finest':>8}{'CPU ms':>10}{'ratio':>8}{'split':>8}"
          f"   (CPU and the second split: the signal x {args.tile})")
    for case in args.cases.split(","):
        path, source, output, _, signal = CASES[case]
        low = [(4, None), *((4, t) for t in tols)] if args.x4 else []
        runs = [(8, None), *((8, t) for t in tols), *low, (16, None), (32, None)]
        models, inputs, tiled, refs = {}, {}, {}, {}
        for factor in sorted({f for f, _ in runs}):
            fs = 48000.0 * factor
            models[factor] = load(ROOT / path, "dk", fs, input_source=source, output_node=output)
            inputs[factor] = torch.as_tensor(standard_signals(fs, args.duration)[signal])
            tiled[factor] = inputs[factor].repeat(args.tile)
            refs[factor] = reference(case, factor, args.duration, args.cache)
        best = {run: float("inf") for run in runs}
        result, share = {}, {}
        for run in runs:
            factor, tol = run
            models[factor].max_local_error = tol
            with torch.no_grad():
                y = models[factor](inputs[factor]).numpy()
            d = models[factor].diagnostics
            result[run] = (esr(y, refs[factor]), d.refined / len(y), d.max_substeps)
        for _ in range(args.repeats):  # interleaved: each repeat runs every configuration once
            for run in runs:
                factor, tol = run
                model = models[factor]
                model.max_local_error = tol
                t0 = time.process_time()
                with torch.no_grad():
                    model(tiled[factor])
                best[run] = min(best[run], time.process_time() - t0)
                share[run] = model.diagnostics.refined / len(tiled[factor])
        for run in runs:
            factor, tol = run
            e, part, finest = result[run]
            label = f"x{factor} " + ("fixed" if tol is None else f"tol {tol:g}")
            print(f"{case if run == runs[0] else '':<14}{label:<18}{e:>10.2e}{part:>8.1%}"
                  f"{finest:>8}{best[run] * 1e3:>10.1f}{best[run] / best[runs[0]]:>8.2f}{share[run]:>8.1%}", flush=True)


if __name__ == "__main__":
    main()
