"""DK forward and forward+backward ns/sample of whichever circuitsim is on the path: for A/B runs of two checkouts.

0.5 s of a 1 kHz, 0.5 V sine at 384 kHz, one thread, best of N in CPU time of the process (one
thread: the wall time on an idle machine, and less disturbed by other jobs on a shared one); every
component value learnable for the backward (loss mean(y^2)).  Run it alternately against an earlier checkout, e.g.::

    git worktree add /tmp/base 3152f26
    for i in 1 2; do
        PYTHONPATH=/tmp/base python benchmarks/bench_dk_checkout.py 5 diode_clipper ts808_clipping ...
        PYTHONPATH=.         python benchmarks/bench_dk_checkout.py 5 diode_clipper ts808_clipping ...
    done

The netlists are always this checkout's (``netlists/``), so both sides simulate the same circuits.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ["NUMBA_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from circuitsim.api import load  # noqa: E402

NETLISTS = Path(__file__).resolve().parents[1] / "netlists"
FS = 384000


def main(repeats: int, names: list[str]) -> None:
    torch.set_num_threads(1)
    x = torch.as_tensor(0.5 * np.sin(2 * np.pi * 1000 * np.arange(FS // 2) / FS)).unsqueeze(0)
    for name in names:
        model = load(NETLISTS / f"{name}.cir", "dk", FS)
        with torch.no_grad():
            model(x[:, :2000])  # compile or load the kernel
        best_f = best_b = float("inf")
        for _ in range(repeats):
            t = time.process_time()
            with torch.no_grad():
                model(x)
            best_f = min(best_f, time.process_time() - t)
            t = time.process_time()
            (model(x) ** 2).mean().backward()
            best_b = min(best_b, time.process_time() - t)
            model.zero_grad()
        n = x.shape[1]
        print(f"{name} fwd {1e9 * best_f / n:.1f} fwdbwd {1e9 * best_b / n:.1f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
