"""How long the plain-torch MNA reference takes per second of 48 kHz audio, for each reference netlist.

MNA runs its Newton per sample in Python/torch (it is the correctness and gradient
reference, not the fast path), so the time is measured on a short excerpt and scaled to
one second (the cost per sample is constant).  DK on the same input is shown beside it.

    python benchmarks/bench_mna.py [--seconds 0.05]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from circuitsim.api import load  # noqa: E402
from circuitsim.signals import karplus_strong  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FS = 48000.0


def per_second(model, x: torch.Tensor) -> float:
    with torch.no_grad():
        model(x[:200])  # warm-up (DC point, compiled kernels)
        t0 = time.perf_counter()
        model(x)
        return (time.perf_counter() - t0) * FS / x.shape[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.05)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.as_tensor(0.3 * karplus_strong(110.0, args.seconds, FS, seed=1))
    print(f"Measured on {args.seconds:g} s of a pluck, scaled to 1 s.\n")
    print("| netlist | MNA: seconds per 1 s of 48 kHz audio | DK: seconds per 1 s |")
    print("|---|---|---|")
    for path in sorted((ROOT / "netlists").glob("*.cir")):
        mna = per_second(load(path, "mna", FS), x)
        dk = per_second(load(path, "dk", FS), x)
        print(f"| {path.stem} | {mna:.1f} | {dk:.4f} |", flush=True)


if __name__ == "__main__":
    main()
