"""First-use compile time of every reference netlist: code generation + numba compilation, from an empty cache.

For each netlist, a fresh process with its own empty kernel cache (``CIRCUITSIM_CACHE``) loads the
circuit with ``--method`` (default dk) and runs 10 ms of input at 384 kHz twice: forward only, then
forward + backward with every component value learnable.  Reported per circuit:

- ``first forward`` / ``first forward+backward``: wall seconds of the first calls (what a user waits
  for on a circuit's first run: sympy code generation, numba compilation of the generated module);
- ``warm``: the same calls again in the same process (the simulation itself), so the difference is
  the compile time;
- ``cached``: a second process on the now-filled cache (numba's on-disk cache, no compilation);
- the nonlinear port and device-output counts (how big the generated module is);
- the same in CPU seconds of the child (``time.process_time``: user + system, all threads), the steadier
  figure on a loaded machine, with ``load`` (netlist, matrices, the DC operating point: it compiles the
  device evaluation that the forward's start then shares) and the child's whole CPU time
  (``resource.getrusage(RUSAGE_CHILDREN)``, interpreter start and imports included).

Issue 12's target: each reference circuit compiles in <= 15 s, and compile time grows gently with
circuit size.

    python benchmarks/bench_compile.py [--method dk] [--netlists PATH ...] [--root CHECKOUT] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## First-use compile time"

_CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
t0 = time.perf_counter()
from circuitsim.api import load
path, method = sys.argv[1], sys.argv[2]
c0 = time.process_time()
model = load(path, method=method, sample_rate=384000.0)
t_load = time.perf_counter() - t0
c_load = time.process_time() - c0
x = torch.tensor(0.3 * np.sin(2 * np.pi * 1000 * np.arange(3840) / 384000.0))[None, :]

def fwd():
    with torch.no_grad():
        model(x)

def fwd_bwd():
    params = [p for p in model.parameters() if p.requires_grad]
    y = model(x)
    (y ** 2).mean().backward()
    for p in params:
        p.grad = None

out = {"load": t_load, "cpu_load": c_load}
for key, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
    t, c = time.perf_counter(), time.process_time(); fn()
    out[key], out["cpu_" + key] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time(); fn()
    out[key + "_warm"], out["cpu_" + key + "_warm"] = time.perf_counter() - t, time.process_time() - c
nl = getattr(getattr(model, "topology", None), "nonlinearity", None)
out["ports"] = getattr(nl, "n_ports", 0)
out["outputs"] = getattr(nl, "n_outputs", 0)
print("RESULT " + json.dumps(out))
"""


def run_child(path: Path, method: str, cache: Path, root: Path = ROOT) -> dict:
    """One fresh process on ``cache``: the timings of :data:`_CHILD` (seconds), and ``cpu_process``: the
    child's whole user + system CPU time.  ``root``: the checkout whose ``circuitsim`` it imports."""
    env = {**os.environ, "CIRCUITSIM_CACHE": str(cache), "NUMBA_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # cwd = root: ``python -c`` puts the current directory ahead of PYTHONPATH on sys.path
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path.resolve()), method], env=env, cwd=str(root),
                          capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-2:]
        raise RuntimeError(f"{path.name}: child failed (exit {proc.returncode}): {' | '.join(tail)}")
    out = json.loads(line[len("RESULT "):])
    out["cpu_process"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="dk", help="formulation (dk, wdf, phs)")
    ap.add_argument("--netlists", nargs="*", type=Path, default=None, help="default: every netlists/*.cir")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md's section")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout the children import (an A/B against another "
                    "branch's worktree); default this one")
    args = ap.parse_args(argv)
    paths = args.netlists or sorted((ROOT / "netlists").glob("*.cir"))
    head = ("| netlist | ports / outputs | first forward s | first fwd+bwd s | compile s (first - warm) "
            "| cached process: forward s | CPU s: load / first forward / first fwd+bwd / compile | CPU s: process |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for path in paths:
        with tempfile.TemporaryDirectory(prefix="bench_compile_") as tmp:
            cold = run_child(path, args.method, Path(tmp), args.root)
            warm = run_child(path, args.method, Path(tmp), args.root)
        compile_s = sum(cold[k] - cold[k + "_warm"] for k in ("forward", "forward_backward"))
        compile_cpu = sum(cold["cpu_" + k] - cold["cpu_" + k + "_warm"] for k in ("forward", "forward_backward"))
        row = (f"| {path.stem} | {cold['ports']} / {cold['outputs']} | {cold['forward']:.1f} "
               f"| {cold['forward_backward']:.1f} | {compile_s:.1f} | {warm['forward']:.2f} "
               f"| {cold['cpu_load']:.1f} / {cold['cpu_forward']:.1f} / {cold['cpu_forward_backward']:.1f} / "
               f"{compile_cpu:.1f} | {cold['cpu_process']:.1f} |")
        print(row, flush=True)
        lines.append(row)
    load = os.getloadavg()[0]
    command = f"python benchmarks/bench_compile.py --method {args.method} --write"
    text = (f"{SECTION} ({args.method})\n\nCommand: `{command}`  \n"
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, one thread, load average {load:.1f} at the end; "
            f"Python {platform.python_version()}.  Each netlist in a fresh process with an empty kernel cache, 10 ms "
            "at 384 kHz; the compile column is the first calls' time minus the same calls warm; CPU: the "
            "child's process time (user + system).\n\n"
            + "\n".join(lines) + "\n\nIssue 12's target: <= 15 s per reference circuit.\n")
    print()
    print(text)
    if args.write:
        write_section(f"{SECTION} ({args.method})", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
