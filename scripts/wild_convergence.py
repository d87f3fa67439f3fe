"""Where a wild netlist's ESR against ngspice exceeds 1e-5 at 48 kHz x 8, and why (docs/validation.md).

For each standard signal (10 ms) it prints DK's ESR against ngspice at 48 kHz x 8, x 16 and x 32 (the
reference at TMAX = 1/(16 fs) of each rate), and at x 8 also: how far the reference itself moves when
TMAX is 1/(64 fs) or reltol a tenth (1e-7 by default) -- the ESR of one reference against the other, and
DK's ESR against that reference -- and the ESR at a tenth of the signal level.  A reference that moves
by much less than the ESR is not the cause; an ESR that falls 16x per doubling of the rate is a
second-order method's own error; one that does not fall with the level is not clipping.

    python scripts/wild_convergence.py tests/data/wild/kicad_legacy_pspice.spice V2 VOUT
    python scripts/wild_convergence.py tests/data/wild/mkiicp_full.net V1 wout --abstol 1e-9 --vntol 1e-6
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from circuitsim.api import load
from circuitsim.signals import standard_signals
from circuitsim.spice import SpiceError, simulate_ngspice
from circuitsim.validate import esr


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("netlist", type=Path)
    ap.add_argument("source")
    ap.add_argument("output")
    ap.add_argument("--factors", default="8,16,32", help="oversampling factors of 48 kHz")
    ap.add_argument("--signals", default="sine,sweep,pluck_50mV,pluck_300mV,pluck_1V")
    ap.add_argument("--abstol", type=float, default=1e-15, help="ngspice ABSTOL (amperes)")
    ap.add_argument("--vntol", type=float, default=1e-9, help="ngspice VNTOL (volts)")
    ap.add_argument("--reltol", type=float, default=1e-6, help="ngspice RELTOL")
    ap.add_argument("--duration", type=float, default=0.01, help="seconds per signal")
    ap.add_argument("--method", default="dk", help="formulation (auto: MNA where DK's M is singular)")
    args = ap.parse_args(argv)
    tols = {"abstol": args.abstol, "vntol": args.vntol, "reltol": args.reltol}
    factors = [int(f) for f in args.factors.split(",")]
    warnings.simplefilter("ignore")
    for k, factor in enumerate(factors):
        fs = 48000.0 * factor
        model = load(args.netlist, args.method, fs, input_source=args.source, output_node=args.output)
        signals = standard_signals(fs, args.duration)
        for name in args.signals.split(","):
            x = signals[name]
            ref = simulate_ngspice(args.netlist, x, fs, args.source, args.output, tmax=1 / (16 * fs), **tols)
            y = _run(model, x)
            line = f"x{factor:<3} {name:<12} ESR {esr(y, ref):.3e}"
            if k == 0:
                for label, kw in (("TMAX/4", {"tmax": 1 / (64 * fs)}), ("reltol/10", {"tmax": 1 / (16 * fs),
                                                                                     "reltol": args.reltol / 10})):
                    try:
                        other = simulate_ngspice(args.netlist, x, fs, args.source, args.output, **{**tols, **kw})
                        line += f"  reference moves at {label}: {esr(ref, other):.1e}"
                        line += f" (ESR against it {esr(y, other):.3e})"
                    except SpiceError as e:
                        line += f"  ngspice at {label}: {str(e).split(':')[-1].strip()[:40]}"
                small = simulate_ngspice(args.netlist, 0.1 * x, fs, args.source, args.output, tmax=1 / (16 * fs),
                                         **tols)
                line += f"  ESR at 1/10 the level {esr(_run(model, 0.1 * x), small):.3e}"
            print(line, flush=True)


def _run(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


if __name__ == "__main__":
    main()
