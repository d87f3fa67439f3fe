"""The biggest public pedal netlist: first compile, forward at 384 kHz, and ngspice's own time on it.

``tests/data/wild/bigmuff/BigMuff-Rams-Head.cir`` (QuickButterfly4571/diypedals-schematic-shares): a KiCad export
of two Big Muff Ram's Head channels, 12 NPN transistors, 12 1N914 diodes and 9 XSPICE pots, which its author wrapped
in a port-less ``.subckt`` holding its own supply and ``SIN(0 100m 146)`` input.  It is instanced as the
repository's contrast.cir does (``xbmf BigMuff-Rams-Head``), plus an ideal buffer ``Eout out 0`` on the channel
output ``xbmf.rams_head_out`` so that ngspice saves ``v(out)`` for benchmarks/bench_dk.py's :func:`run_ngspice`.

- **formulation**: ``--method`` (default ``auto``: what ``circuitsim.load`` chooses, ``circuitsim.api.choose_method``;
  here ``sparse``, DK's system with the sparse Newton solve of circuitsim/formulations/sparse.py), the choice and,
  for ``sparse``, the size of the sparse solve (unknowns, independent blocks, LU fill, multiply-adds per
  factorisation);
- **first compile**: ``load`` + the first forward call with an empty kernel cache (``CIRCUITSIM_CACHE`` in a
  temporary folder): sympy code generation and numba compilation, in seconds;
- **forward**: ``--seconds`` of that sine at 48 kHz x 8 driving ``xbmf.V2``, no gradients, best of ``--repeats``;
- **ngspice**: ``ngspice -b`` on the same deck with the published ``SIN`` source, TMAX = 1/384 kHz and bench_dk's
  matched-accuracy options; its own "Transient analysis time" (``.options acct``), best of ``--spice-repeats``;
- the speed ratio (ngspice time / forward time; and, since a shared machine stretches both wall clocks, the ratio of
  the two processes' CPU times) and the ESR of the output against ngspice's at the sample instants;
- for ``sparse``: the largest difference from the same model with ``sparse_solve = False`` (every sample solved by
  the core's dense Newton on DK's exact ``I - K J``, as DK does), relative to the output's range, and that run's
  time.  (DK's own module, and ``method="mna"``, whose Newton evaluates the devices through it, take half an hour
  to compile here.)

DK's own compile takes half an hour on this circuit (``--method dk``), which is why it is a benchmark and not a test
(the test suite checks its DC point against ngspice, tests/test_wild_netlists.py).

    python benchmarks/bench_big.py [--method auto] [--seconds 0.1] [--repeats 3] [--spice-repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_dk import FS, TOLS, run_ngspice, sine  # noqa: E402
from benchmarks.bench_kernel import _best as timed  # noqa: E402  (best of N wall-clock runs)
from circuitsim.api import load  # noqa: E402
from circuitsim.netlist import NetlistWarning  # noqa: E402
from circuitsim.spice import _to_samples  # noqa: E402
from circuitsim.validate import esr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEDAL = ROOT / "tests" / "data" / "wild" / "bigmuff" / "BigMuff-Rams-Head.cir"
AMPLITUDE, FREQ = 0.1, 146.0  # the file's own V2: SIN( 0 100m 146 0 0 0 ), volts and hertz


def deck(n: int) -> str:
    """The pedal instanced as contrast.cir does, with ngspice's matched-accuracy transient over ``n`` samples."""
    h = 1.0 / FS
    opts = " ".join(f"{k}={v!r}" for k, v in TOLS.items())
    return (f"Big Muff Ram's Head, instanced as its repository's contrast.cir does\n.include {PEDAL}\n"
            f"xbmf BigMuff-Rams-Head\nEout out 0 xbmf.rams_head_out 0 1\n"
            f".options {opts} acct\n.save v(out)\n.tran {h!r} {(n - 1) * h!r} 0 {h!r}\n.end\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.1, help="signal length (s)")
    ap.add_argument("--repeats", type=int, default=3, help="DK forward runs (best is reported)")
    ap.add_argument("--spice-repeats", type=int, default=3, help="ngspice runs (best is reported)")
    ap.add_argument("--method", default="auto", help="formulation (default: circuitsim.load's automatic choice)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = sine(args.seconds, FS, FREQ, AMPLITUDE)
    with tempfile.TemporaryDirectory(prefix="bench_big_") as tmp:
        work = Path(tmp)
        path = work / "bigmuff_top.cir"
        path.write_text(deck(len(x)))
        os.environ["CIRCUITSIM_CACHE"] = str(work / "cache")  # an empty kernel cache: the first compile
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NetlistWarning)  # R41/R67 '1-3k', read as ngspice does
            model = load(path, args.method, FS, input_source="xbmf.V2", output_node="out")
        print(f"method {model.method} ({getattr(model, 'choice', 'given')})", flush=True)
        plan = getattr(model, "plan", None)
        if plan is not None:
            n = len(plan.unknowns)
            print(f"sparse solve: {n} unknowns in {plan.blocks} independent blocks, LU fill {plan.fill} of {n * n}, "
                  f"{plan.flops} multiply-adds per factorisation; {model.topology.nonlinearity.n_ports} ports, "
                  f"{model.topology.size} MNA unknowns")
        load_s = time.perf_counter() - t0
        u = torch.as_tensor(x)
        with torch.no_grad():
            model(u[:64])
        compile_s, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"first compile (load + first call, empty cache): {compile_s:.1f} s (load with the sympy device code "
              f"{load_s:.1f} s, numba {compile_s - load_s:.1f} s; CPU time {compile_cpu:.1f} s)", flush=True)

        def forward() -> np.ndarray:
            with torch.no_grad():
                return model(u).numpy()

        fwd_s = timed(forward, args.repeats)
        c0 = time.process_time()
        y = forward()
        fwd_cpu = time.process_time() - c0
        print(f"forward: {fwd_s:.3f} s for {args.seconds} s at {FS:.0f} Hz ({1e9 * fwd_s / len(x):.0f} ns/sample, "
              f"{args.seconds / fwd_s:.2f}x real time; CPU time of one run {1e9 * fwd_cpu / len(x):.0f} ns/sample); "
              f"Newton: {model.diagnostics}", flush=True)
        yd = None
        if plan is not None:
            model.sparse_solve = False
            dense_s = timed(forward, 1)
            yd = forward()
            model.sparse_solve = True
            rel = float(np.abs(y - yd).max() / np.ptp(yd))
            print(f"against the core's dense Newton (sparse_solve = False, {1e9 * dense_s / len(x):.0f} ns/sample): "
                  f"max |difference| / range = {rel:.2e}", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        acct, wall, t, v = run_ngspice(path.read_text(), work, args.spice_repeats)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spice_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / args.spice_repeats
    ref = _to_samples(t, v, FS, len(x), "cubic")
    print(f"ngspice: transient analysis {acct:.3f} s (process {wall:.3f} s; process CPU time {spice_cpu:.3f} s, "
          f"mean of {args.spice_repeats})")
    print(f"ratio ngspice / {model.method}: {acct / fwd_s:.2f}x (CPU time against CPU time: "
          f"{spice_cpu / fwd_cpu:.2f}x);  ESR against ngspice: {esr(y, ref):.2e}"
          + ("" if yd is None else f" (dense Newton: {esr(yd, ref):.2e})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
