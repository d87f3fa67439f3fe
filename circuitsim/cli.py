"""Command line: ``circuitsim simulate|validate ...`` (design.md §6).  Never shows a traceback for bad input."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _parse_set(items: Sequence[str] | None) -> dict[str, float]:
    from circuitsim.netlist.units import parse_number

    out: dict[str, float] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects NAME=VALUE, got '{item}'")
        name, text = item.split("=", 1)
        value = parse_number(text.strip())
        if value is None:
            raise ValueError(f"--set {name}: '{text}' is not a number")
        out[name.strip()] = value
    return out


def _add_circuit_options(p: argparse.ArgumentParser) -> None:
    from circuitsim.api import DEFAULT_METHOD, METHODS

    p.add_argument("netlist", type=Path, help="SPICE netlist (ngspice dialect)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(METHODS), help="formulation")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="set a .param value (repeatable)")
    p.add_argument("--input-source", default="VIN", help="independent voltage source driven by the input")
    p.add_argument("--output-node", default="out", help="node whose voltage is the output")


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from circuitsim.api import load, process_stream
    from circuitsim.audio import WavWriter, wav_blocks

    if args.oversample < 1:
        raise ValueError("--oversample must be a positive integer")
    frames, fs, blocks = wav_blocks(args.input)
    out = args.output or args.input.with_name(f"{args.input.stem}.{args.netlist.stem}.wav")
    model = load(args.netlist, args.method, fs * args.oversample, params=_parse_set(args.set),
                 input_source=args.input_source, output_node=args.output_node)
    peak, written = 0.0, 0
    with WavWriter(out, fs, overwrite=args.overwrite) as writer, tqdm(
        total=frames, unit="sample", unit_scale=True, disable=args.quiet, desc=f"simulate ({args.method})"
    ) as bar:

        def scaled():
            for block in blocks:
                yield block * args.input_volts
                bar.update(len(block))

        for y in process_stream(model, scaled(), args.oversample):
            writer.write(y)
            written += len(y)
            peak = max(peak, float(np.max(np.abs(y)))) if len(y) else peak
    if not args.quiet:
        print(f"wrote {out}: {written} samples at {fs} Hz, peak {peak:.4g} V ({args.method})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from circuitsim.validate import validate

    report = validate(
        args.netlist,
        method=args.method,
        sample_rate=args.sample_rate,
        oversample=args.oversample,
        duration=args.duration,
        params=_parse_set(args.set),
        input_source=args.input_source,
        output_node=args.output_node,
    )
    print(report.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitsim", description="Differentiable white-box audio circuit simulator")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="render a WAV file through a circuit")
    _add_circuit_options(p)
    p.add_argument("input", type=Path, help="mono WAV (any rate, any bit depth)")
    p.add_argument("-o", "--output", type=Path, help="output WAV (float, volts); default IN.NETLIST.wav")
    p.add_argument("--oversample", type=int, default=1, help="simulate at N times the input rate")
    p.add_argument("--input-volts", type=float, default=1.0, help="volts per full-scale input sample")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("validate", help="compare against ngspice on the standard signals")
    _add_circuit_options(p)
    p.add_argument("--sample-rate", type=float, default=48000.0, help="audio rate in hertz")
    p.add_argument("--oversample", type=int, default=8, help="simulation rate = sample rate x N")
    p.add_argument("--duration", type=float, default=0.02, help="seconds of each standard signal")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from circuitsim.audio import AudioError
    from circuitsim.netlist import NetlistError
    from circuitsim.solvers.newton import NewtonError

    expected: tuple[type[BaseException], ...] = (NetlistError, AudioError, NewtonError, ValueError, KeyError, OSError)
    try:
        from circuitsim.spice import SpiceError

        expected += (SpiceError,)
    except ImportError:  # pragma: no cover - PySpice missing
        pass
    try:
        return args.func(args)
    except expected as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"circuitsim: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
