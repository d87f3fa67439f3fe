"""Fit the whole Tube Screamer (netlists/ts808.cir) to a recording made at known values, then check them.

    python examples/fit_ts808.py [--workdir DIR] [--seconds S] [--circuitsim]

1. A "pedal" with known values different from the netlist's (R4, C3, C5 and the 1N914's IS
   changed) renders the first seconds of examples/demo_input.wav: with ngspice when it is
   installed (48 kHz x 8, then decimated to 48 kHz as `circuitsim simulate --oversample 8`
   does), else with circuitsim itself (`--circuitsim` forces that).
2. DIR/pair.wav gets the input (channel 0) and that recording (channel 1), in volts.
3. `circuitsim fit netlists/ts808.cir --data DIR/pair.wav --learn R4,C3,C5,D1N914.IS --oversample 8`
   starts from the netlist's values and writes DIR/ts808.fitted.cir and its report;
   the script prints the fitted values against the known ones.
docs/fitting.md ("The whole TS-808") shows a run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from circuitsim.audio import decimate, oversample, read_wav, write_wav
from circuitsim.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
NETLIST = ROOT / "netlists" / "ts808.cir"
# the "real pedal": (the netlist's text, the recording's text, the recording's value in SI units)
TRUE = {"R4": ("R4 n g 4.7k", "R4 n g 5.6k", 5.6e3), "C3": ("C3 g 0 47n", "C3 g 0 39n", 39e-9),
        "C5": ("C5 t1 0 220n", "C5 t1 0 180n", 180e-9), "D1N914.IS": ("Is=2.52n", "Is=4n", 4e-9)}
LEARN = "R4,C3,C5,D1N914.IS"
FS, UP = 48000, 8


def true_netlist(path: Path) -> Path:
    """netlists/ts808.cir with the TRUE values written in (same text otherwise)."""
    text = NETLIST.read_text()
    for old, new, _ in TRUE.values():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def record(x: np.ndarray, use_ngspice: bool, workdir: Path) -> np.ndarray:
    """The output (volts at FS) of the pedal with the TRUE values for input volts ``x``."""
    net = true_netlist(workdir / "ts808_true.cir")
    if use_ngspice:
        from circuitsim.spice import simulate_ngspice

        return decimate(simulate_ngspice(net, oversample(x, UP), FS * UP), UP)
    from circuitsim.api import simulate

    return simulate(net, x, FS, oversample=UP)


def fitted_values(path: Path) -> dict[str, float]:
    """Read the fitted values back from the rewritten netlist text."""
    from circuitsim.api import load_circuit

    c = load_circuit(path)
    return {name: c.params[name].value for name in TRUE}


def make_pair_and_fit(work: Path, seconds: float, use_ngspice: bool) -> tuple[dict[str, float], Path]:
    """Record ``seconds`` of the demo input through the TRUE pedal into ``work``/pair.wav and fit it.

    Returns the fitted values (by name) and the fitted netlist's path.
    """
    work.mkdir(parents=True, exist_ok=True)
    x, fs = read_wav(ROOT / "examples" / "demo_input.wav")
    assert fs == FS
    x = x[: int(seconds * FS)]
    y = record(x, use_ngspice, work)
    pair = work / "pair.wav"
    write_wav(pair, np.column_stack([x, y]), FS, overwrite=True, subtype="DOUBLE")
    print(f"recorded {len(x) / FS:g} s with {'ngspice' if use_ngspice else 'circuitsim'}: {pair}")
    out = work / "ts808.fitted.cir"
    rc = cli(["fit", str(NETLIST), "--data", str(pair), "--learn", LEARN, "--oversample", str(UP),
              "-o", str(out), "--overwrite", "-q"])
    if rc != 0:
        raise SystemExit(rc)
    return fitted_values(out), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="where pair.wav and the fit go (default: a temp dir)")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds of the demo input to use")
    ap.add_argument("--circuitsim", action="store_true", help="make the recording with circuitsim, not ngspice")
    args = ap.parse_args()
    from circuitsim.spice import ngspice_available

    use_ngspice = ngspice_available() and not args.circuitsim
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fit_ts808_"))
    got, out = make_pair_and_fit(work, args.seconds, use_ngspice)
    start = fitted_values(NETLIST)
    print(f"\n{'value':<12}{'netlist':>12}{'true':>12}{'fitted':>12}{'error':>10}")
    for name, (_, _, true) in TRUE.items():
        err = got[name] / true - 1
        print(f"{name:<12}{start[name]:>12.4g}{true:>12.4g}{got[name]:>12.4g}{100 * err:>9.3f}%")
    print(f"\nwrote {out} and {out.with_name(out.stem + '.report')}/report.txt")


if __name__ == "__main__":
    main()
