"""Command line: ``circuitsim simulate|validate|fit|analyze ...`` (README, "Using it"); no traceback for bad input."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from circuitsim.errors import UsageError


def _parse_set(items: Sequence[str] | None) -> dict[str, float]:
    from circuitsim.netlist.units import parse_number

    out: dict[str, float] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set expects NAME=VALUE, got '{item}'")
        name, text = item.split("=", 1)
        value = parse_number(text.strip())
        if value is None:
            raise UsageError(f"--set {name}: '{text}' is not a number")
        out[name.strip()] = value
    return out


def _add_circuit_options(p: argparse.ArgumentParser) -> None:
    from circuitsim.api import DEFAULT_METHOD, METHODS

    p.add_argument("netlist", type=Path, help="SPICE netlist (ngspice, LTspice or PSpice dialect)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=["auto", *sorted(METHODS)],
                   help="formulation (default auto: dk, or sparse for circuits with many transistors and diodes, "
                        "or mna where DK's M = G + 2/T Cm is singular)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="set a .param value (repeatable)")
    p.add_argument("--input-source", default="VIN",
                   help="independent voltage source driven by the input (default VIN, else the wavefile= source)")
    p.add_argument("--dialect", choices=["ngspice", "ltspice", "pspice"], default=None,
                   help="netlist dialect (default: ngspice, or ltspice when the text has .backanno, wavefile= or "
                        "pwrs(); docs/netlists.md)")
    p.add_argument("--output-node", default="out", help="node whose voltage is the output")


def _add_local_error_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-local-error", type=float, default=None, metavar="E",
                   help="(dk, sparse) split samples whose estimated local truncation error, relative to the range "
                        "of each charge and of the output, exceeds E (default: off, the fixed step; "
                        "docs/validation.md, 'Substepping')")


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from circuitsim.analysis.output import (
        default_oversample,
        is_nonlinear,
        latency_ms,
        listenable,
        normalise,
        playback_note,
    )
    from circuitsim.api import load, load_circuit, process_stream
    from circuitsim.audio import AudioExistsError, WavWriter, wav_blocks, write_wav

    params = _parse_set(args.set)
    frames, fs, blocks = wav_blocks(args.input)
    out = args.output or args.input.with_name(f"{args.input.stem}.{args.netlist.stem}.wav")
    if out.exists() and not args.overwrite:
        raise AudioExistsError(f"{out}: already exists (use --overwrite to replace it)")
    oversample = args.oversample
    if oversample is None and args.method == "stn":  # the STN runs at the WAV's rate (docs/stn.md)
        oversample = 1
    if oversample is None:  # 1x for linear circuits, 8x against aliasing for nonlinear ones
        circuit = load_circuit(args.netlist, params, args.dialect)
        nonlinear, oversample = is_nonlinear(circuit), default_oversample(circuit)
        if not args.quiet:
            kind = "nonlinear" if nonlinear else "linear"
            print(f"oversampling {oversample}x ({kind} circuit; --oversample N to change), "
                  f"filter latency {latency_ms(oversample, fs):.2f} ms")
    if oversample < 1:
        raise UsageError("--oversample must be a positive integer")
    model = load(args.netlist, args.method, fs * oversample, params=params, dialect=args.dialect,
                 input_source=args.input_source, output_node=args.output_node, weights=args.weights,
                 max_local_error=args.max_local_error)
    energy_parts = _energy_hook(args, model)
    total = peak = 0.0
    written = 0
    buffered: list[np.ndarray] = []
    with tqdm(total=frames, unit="sample", unit_scale=True, disable=args.quiet,
              desc=f"simulate ({model.method})") as bar:

        def scaled():
            for block in blocks:
                yield block * args.input_volts
                bar.update(len(block))

        ys = listenable(process_stream(model, scaled(), oversample, hold_edges=True), fs, args.ac_couple, args.gain_db)
        if args.normalize is None:
            with WavWriter(out, fs, overwrite=args.overwrite) as writer:
                for y in ys:
                    writer.write(y)
                    written, total = written + len(y), total + float(np.sum(y))
                    peak = max(peak, float(np.max(np.abs(y)))) if len(y) else peak
        else:  # the peak is known only at the end: the whole output is buffered in memory
            buffered = [y for y in ys]
    if energy_parts is not None:
        _write_energy(args, energy_parts)
    if args.normalize is not None:
        y, gain = normalise(np.concatenate(buffered), args.normalize)
        write_wav(out, y, fs, overwrite=args.overwrite)
        written, total, peak = len(y), float(np.sum(y)), float(np.max(np.abs(y)))
        if not args.quiet:
            print(f"normalised the peak to {args.normalize:g} dBFS (gain {gain:+.2f} dB)")
    if not args.quiet:
        mean = total / max(written, 1)
        print(f"wrote {out}: {written} samples at {fs} Hz, peak {peak:.4g}, mean {mean:.3g} "
              f"({getattr(model, 'choice', model.method)})")
        note = playback_note(mean, peak, args.ac_couple is not None)
        if note:
            print(note)
        substepped = getattr(model.diagnostics, "substepped_total", 0)  # DK: docs/validation.md, "Substepping"
        if substepped:
            print(f"note: Newton needed substeps on {substepped} samples at {fs * oversample:g} Hz "
                  "(docs/validation.md, 'Substepping')")
    return 0


def _energy_hook(args: argparse.Namespace, model) -> list | None:  # noqa: ANN001
    """With --energy-report / --energy-plot, collect the PH model's per-sample energy rows."""
    if args.energy_report is None and args.energy_plot is None:
        return None
    if not hasattr(model, "energy_sink"):
        raise UsageError("--energy-report and --energy-plot need --method phs")
    for path in (args.energy_report, args.energy_plot):
        if path is not None and path.exists() and not args.overwrite:
            raise UsageError(f"{path}: already exists (use --overwrite to replace it)")
    parts: list = []
    model.energy_sink = parts.append
    return parts


def _write_energy(args: argparse.Namespace, parts: list) -> None:
    from circuitsim.formulations.phs import EnergyReport

    report = EnergyReport.concat(parts)
    if args.energy_report is not None:
        report.write_csv(args.energy_report)
    if args.energy_plot is not None:
        report.plot(args.energy_plot)
    if not args.quiet:
        print(f"energy: {len(report.time_s)} samples, largest power-balance residual "
              f"{abs(report.residual_W).max():.3g} W")


def cmd_distill(args: argparse.Namespace) -> int:
    from circuitsim.stn import distill

    out = args.output or args.netlist.with_suffix(".stn")
    result = distill(args.netlist, out, sample_rate=args.sample_rate, input_volts=args.input_volts, knobs=args.knobs,
                     params=_parse_set(args.set), minutes=args.minutes, hidden=args.hidden, device=args.device,
                     seconds=args.seconds, activation=args.activation, lookahead=args.lookahead,
                     input_source=args.input_source, output_node=args.output_node, progress=not args.quiet,
                     overwrite=args.overwrite)
    if not args.quiet:
        t = result.metadata["training"]
        note = " (interrupted: best model so far)" if t["interrupted"] else ""
        meta = result.metadata
        print(f"wrote {out}: {len(meta['states'])} states, knobs {list(meta['knobs']) or 'none'}, "
              f"validation ESR {t['validation_esr']:.3g}, {t['wall_s']:.0f} s on {t['device']}{note}")
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
        dialect=args.dialect,
        reference_abstol=args.abstol,
        max_local_error=args.max_local_error,
    )
    print(report.table())
    if args.plot is not None:
        report.plot(args.plot)
        print(f"\nwrote {args.plot}")
    return 0


class _Sequence(argparse.Action):
    """``--data PATH``: remember the path with how many ``--set`` items came before it."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((Path(values), len(getattr(namespace, "set", None) or [])))
        setattr(namespace, self.dest, items)


def _check_writable(model, learn: Sequence[str] | None, freeze: Sequence[str]) -> None:  # noqa: ANN001
    """Raise a one-line ValueError for a value to learn that cannot be written back into the main netlist."""
    from circuitsim.fit.trainer import _canonical, default_learnable

    frozen = {_canonical(model, n.strip()) for n in freeze}
    names = [_canonical(model, n.strip()) for n in (default_learnable(model) if learn is None else learn)]
    main_file = model.circuit.netlist.path
    for name in names:
        if name in frozen:
            continue
        span = model.circuit.params[name].span
        if span is None:
            raise UsageError(f"'{name}' has no literal in the netlist text to rewrite; freeze it (--freeze {name})")
        if span.file != main_file:
            raise UsageError(f"'{name}' is defined in the include file {span.file}, which fit cannot rewrite; "
                             f"freeze it (--freeze {name}) or copy its definition into {main_file}")


def cmd_fit(args: argparse.Namespace) -> int:
    from circuitsim.api import load
    from circuitsim.fit import fit, load_input_target, load_pair, write_report
    from circuitsim.fit.losses import check_emphasis
    from circuitsim.netlist.writer import rewrite_values

    if args.oversample < 1:
        raise UsageError("--oversample must be a positive integer")
    check_emphasis(args.pre_emphasis)  # a bad --pre-emphasis fails before any file is read
    if args.dc_weight < 0 or args.stft_weight < 0:
        raise UsageError("--dc-weight and --stft-weight must be >= 0")
    if args.stft_weight and args.optimizer == "lm":
        raise UsageError("--stft-weight needs --optimizer adam (the STFT loss is not a sum of squares for LM)")
    out = args.output or args.netlist.with_name(f"{args.netlist.stem}.fitted.cir")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; use --overwrite to replace it")
    # a --set after a --data gives that recording's knobs; one before every --data applies to all
    sets = args.set or []
    marks = args.sequence or []
    first = marks[0][1] if marks else len(sets)
    common = _parse_set(sets[:first])
    groups = []
    for i, (path, start) in enumerate(marks):
        stop = marks[i + 1][1] if i + 1 < len(marks) else len(sets)
        groups.append((path, {**common, **_parse_set(sets[start:stop])}))
    opts = dict(input_volts=args.input_volts, target_volts=args.target_volts, holdout=args.holdout)
    if args.input or args.target:
        if not (args.input and args.target):
            raise UsageError("--input and --target go together")
        data = [load_input_target(args.input, args.target, common, **opts)]
    else:
        data = []
    data += [load_pair(path, params, **opts) for path, params in groups]
    if not data:
        raise UsageError("no recordings: give --data PAIR.wav or --input IN.wav --target OUT.wav")
    fs = data[0].sample_rate
    if any(d.sample_rate != fs for d in data):
        raise UsageError("all recordings must have the same sample rate")
    model = load(args.netlist, args.method, fs * args.oversample, params=data[0].params, dialect=args.dialect,
                 input_source=args.input_source, output_node=args.output_node)
    learn = None if args.learn in (None, "all") else [n for n in args.learn.split(",") if n.strip()]
    freeze = [n for n in (args.freeze or "").split(",") if n.strip()]
    for name in [*(learn or []), *freeze]:
        model.parameter(name.strip())  # one-line error naming the bad value
    _check_writable(model, learn, freeze)  # refuse before fitting, not after
    seg = int(round(args.segment_ms * 1e-3 * fs)) if args.segment_ms else None
    burn = int(round(args.burn_in_ms * 1e-3 * fs))
    result = fit(model, data, [n.strip() for n in learn] if learn else None, freeze=[n.strip() for n in freeze],
                 optimizer=args.optimizer, steps=args.steps, lr=args.lr, oversample=args.oversample, segment=seg,
                 burn_in=burn, emphasis=check_emphasis(args.pre_emphasis), dc_weight=args.dc_weight,
                 stft_weight=args.stft_weight, learn_gain=args.learn_gain, progress=not args.quiet)
    spans = {model.circuit.params[name].span: result.fitted[name] for name in result.names}
    out.write_text(rewrite_values(model.circuit.netlist, spans)[model.circuit.netlist.path])
    report_dir = args.report_dir or out.with_name(f"{out.stem}.report")
    text = write_report(result, report_dir)
    if not args.quiet:
        print(text, end="")
        print(f"wrote {out} and {report_dir}/report.txt, comparison.png")
    return 0


def _latency_text() -> str:
    from circuitsim.analysis.output import latency_ms

    return ", ".join(f"{latency_ms(n):.2f} ms at {n}x" for n in (2, 8, 16)) + " at 48 kHz (measured)"


def cmd_analyze(args: argparse.Namespace) -> int:
    """Frequency response vs ngspice, and for nonlinear circuits distortion and aliasing (docs/analysis.md)."""
    from circuitsim.analysis.report import analyze

    out = args.output or Path(f"{args.netlist.stem}.analysis")  # in the working directory, not beside the netlist
    result = analyze(args.netlist, out, params=_parse_set(args.set), input_source=args.input_source,
                     output_node=args.output_node, ac_csv=args.ac_csv, sweep=args.sweep, ess=args.ess,
                     aliasing=not args.no_aliasing, ngspice=not args.no_ngspice)
    if not args.quiet:
        print(result.text(), end="")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    """Print how a formulation sees the circuit: the WDF adaptor tree, or the state, port and nonlinearity sizes."""
    from circuitsim.api import load

    model = load(args.netlist, args.method, args.sample_rate, params=_parse_set(args.set),
                 input_source=args.input_source, output_node=args.output_node)
    topo, nl = model.topology, model.topology.nonlinearity
    n_charge = sum(1 for _, q in topo.outputs if q)
    lines = [f"{args.netlist} ({args.method}, {args.sample_rate:g} Hz)"]
    if hasattr(model, "describe"):
        lines.append(model.describe())
    if hasattr(model, "dk"):
        lines.append(f"states: {model.dk()[1].A.shape[0]}")
    lines.append(f"MNA unknowns: {topo.size}; sources: {len(topo.sources)}")
    lines.append(f"nonlinearity: {nl.n_ports} ports, {nl.n_outputs} outputs ({nl.n_outputs - n_charge} currents, "
                 f"{n_charge} charges), {topo.theta_size} device parameters")
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from circuitsim import __version__
    from circuitsim.analysis.output import DEFAULT_AC_COUPLE_HZ, DEFAULT_NORMALIZE_DBFS

    parser = argparse.ArgumentParser(prog="circuitsim", description="Differentiable white-box audio circuit simulator")
    parser.add_argument("--version", action="version", version=f"circuitsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="render a WAV file through a circuit")
    _add_circuit_options(p)
    p.add_argument("input", type=Path, help="mono WAV (any rate, any bit depth)")
    p.add_argument("-o", "--output", type=Path, help="output WAV (float, volts); default IN.NETLIST.wav")
    p.add_argument("--oversample", type=int, default=None,
                   help="simulate at N times the input rate (default: 1 for linear circuits, 8 for nonlinear "
                        f"ones); the up/down-sampling filters' latency is {_latency_text()}")
    _add_local_error_option(p)
    p.add_argument("--input-volts", type=float, default=1.0, help="volts per full-scale input sample")
    p.add_argument("--ac-couple", type=float, nargs="?", const=DEFAULT_AC_COUPLE_HZ, default=None, metavar="HZ",
                   help=f"remove DC with a first-order high-pass at HZ (default {DEFAULT_AC_COUPLE_HZ:g} Hz), "
                        "starting from the output's initial value (no thump)")
    p.add_argument("--gain-db", type=float, default=0.0, metavar="G", help="multiply the output by G dB")
    p.add_argument("--normalize", type=float, nargs="?", const=DEFAULT_NORMALIZE_DBFS, default=None,
                   metavar="DBFS", help=f"scale the peak to DBFS (default {DEFAULT_NORMALIZE_DBFS:g}), after "
                   "--ac-couple and --gain-db; buffers the whole output in memory")
    p.add_argument("--energy-report", type=Path, metavar="FILE.csv",
                   help="--method phs: one row per simulated sample, time_s,stored_J,dissipated_W,ports_W,residual_W")
    p.add_argument("--energy-plot", type=Path, metavar="FILE.png", help="--method phs: plot the energy balance")
    p.add_argument("--weights", type=Path, metavar="MODEL.stn",
                   help="--method stn: the network made by 'circuitsim distill' (docs/stn.md)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("distill", help="train a neural state-space model (STN) on the circuit's DK model")
    p.add_argument("netlist", type=Path, help="SPICE netlist")
    p.add_argument("-o", "--output", type=Path, help="the .stn file (default NETLIST.stn)")
    p.add_argument("--input-volts", type=float, default=1.0,
                   help="largest training peak at the input source, volts (levels -40..0 dB re it)")
    p.add_argument("--knobs", metavar="NAME[=LO:HI][,...]", help="controls the network is conditioned on "
                   "(.param names; range default 0:1)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="hold a .param value fixed (repeatable)")
    p.add_argument("--sample-rate", type=float, default=48000.0, help="rate the STN runs at, hertz (teacher: 8x)")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget (wall clock, teacher data included)")
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default 4 + 4 per state, at most 16)")
    p.add_argument("--activation", choices=["tanh", "rational"], default="rational",
                   help="MLP activation: the Padé approximant of tanh (default, faster compiled inference) or tanh "
                        "(docs/stn.md)")
    p.add_argument("--lookahead", type=int, default=2, metavar="N",
                   help="input samples the network reads ahead: its latency in samples (default 2; docs/stn.md)")
    p.add_argument("--seconds", type=float, default=None,
                   help="teacher audio per knob setting, seconds (default 24 s shared over the settings, >= 4 s)")
    p.add_argument("--device", default=None, help="torch device for training (default cuda when present, else cpu)")
    p.add_argument("--input-source", default="VIN", help="independent voltage source driven by the input")
    p.add_argument("--output-node", default="out", help="node whose voltage is the output")
    p.add_argument("--overwrite", action="store_true", help="replace the .stn file if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("validate", help="compare against ngspice on the standard signals")
    _add_circuit_options(p)
    p.add_argument("--sample-rate", type=float, default=48000.0, help="audio rate in hertz")
    p.add_argument("--oversample", type=int, default=8, help="simulation rate = sample rate x N")
    p.add_argument("--duration", type=float, default=0.02, help="seconds of each standard signal")
    p.add_argument("--plot", type=Path, help="also save the waveforms and differences as a PNG")
    p.add_argument("--abstol", type=float, default=1e-15, metavar="A",
                   help="ngspice's ABSTOL (amperes) for the reference; 1e-12 where it reports timestep too small")
    _add_local_error_option(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("fit", help="learn component values from input/output recordings")
    _add_circuit_options(p)
    p.add_argument("--data", dest="sequence", action=_Sequence, metavar="PAIR.wav",
                   help="stereo WAV: channel 0 input, channel 1 recorded output (repeatable; a --set after it "
                        "gives that recording's knob settings)")
    p.add_argument("--input", type=Path, help="input WAV (two-file form, with --target)")
    p.add_argument("--target", type=Path, help="recorded output WAV (two-file form)")
    p.add_argument("--learn", help="comma-separated values to learn, or 'all' (default: R, L, C, IS, N, BF)")
    p.add_argument("--freeze", help="comma-separated values to keep as written")
    p.add_argument("--input-volts", type=float, default=1.0, help="volts per full-scale input sample")
    p.add_argument("--target-volts", type=float, default=1.0, help="volts per full-scale recorded sample")
    p.add_argument("--oversample", type=int, default=1, help="simulate at N times the recording rate")
    p.add_argument("--optimizer", choices=["lm", "adam"], default="lm", help="Levenberg-Marquardt or Adam")
    p.add_argument("--steps", type=int, default=200, help="LM evaluations / Adam steps")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (log-value space)")
    p.add_argument("--segment-ms", type=float, default=0.0, help="train on segments of this length (0: whole)")
    p.add_argument("--burn-in-ms", type=float, default=0.0, help="unscored start of every segment")
    p.add_argument("--pre-emphasis", default="0", metavar="COEFF|aw",
                   help="pre-emphasis of the loss: first-order coefficient (0.85 typical) or 'aw' (A-weighting)")
    p.add_argument("--dc-weight", type=float, default=0.0, metavar="W",
                   help="weight of the DC (mean) error term of the loss (0: none)")
    p.add_argument("--stft-weight", type=float, default=0.0, metavar="W",
                   help="weight of the multi-resolution STFT loss term (needs --optimizer adam)")
    p.add_argument("--learn-gain", action="store_true",
                   help="also learn one output gain for recordings of unknown level (reported, not written)")
    p.add_argument("--holdout", type=float, default=0.2, help="held-out fraction at the end of every recording")
    p.add_argument("-o", "--output", type=Path, help="fitted netlist (default NETLIST.fitted.cir)")
    p.add_argument("--report-dir", type=Path, help="report folder (default OUTPUT.report)")
    p.add_argument("--overwrite", action="store_true", help="replace the fitted netlist if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or report on stdout")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("describe", help="show the formulation's structure (WDF tree; DK sizes)")
    _add_circuit_options(p)
    p.add_argument("--sample-rate", type=float, default=48000.0, help="sample rate in hertz (port resistances)")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("analyze", help="frequency response (vs ngspice .ac), distortion and aliasing")
    p.add_argument("netlist", type=Path, help="SPICE netlist (ngspice dialect)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="set a .param value (repeatable)")
    p.add_argument("--input-source", default="VIN", help="independent voltage source driven by the input")
    p.add_argument("--output-node", default="out", help="node whose voltage is the output")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="folder for the PNG and CSV files "
                   "(default ./NETLIST.analysis)")
    p.add_argument("--ac-csv", type=Path, metavar="FILE",
                   help="write the response as frequency_hz,magnitude_db,phase_deg (211 log-spaced, 20 Hz-20 kHz)")
    p.add_argument("--sweep", metavar="KNOB=a:b:n", help="also the response at n knob values from a to b")
    p.add_argument("--ess", action="store_true", help="harmonic responses H1..H5 by exponential sine sweep")
    p.add_argument("--no-aliasing", action="store_true", help="skip the aliasing report (1x..16x renders)")
    p.add_argument("--no-ngspice", action="store_true", help="do not compare with ngspice .ac")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stdout")
    p.set_defaults(func=cmd_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``circuitsim`` command; returns the exit status (0 ok, 2 bad input, 3 internal error, 130 Ctrl-C).

    Problems with the user's input are :class:`circuitsim.errors.CircuitsimError` (netlist, WAV,
    option values, unknown names, Newton failures, ngspice) or operating-system errors on a named
    file; they are printed as one line.  Anything else is a bug in circuitsim: its traceback is
    shown with a request to report it, so an internal error never looks like bad input.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from circuitsim.errors import CircuitsimError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.func(args)
    except CircuitsimError as exc:
        print(f"circuitsim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            return _internal_error()
        print(f"circuitsim: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitsim: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - everything else is a bug: show it as one
        return _internal_error()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Netlist warnings and notes as one line each (``circuitsim: note: t.cir:2: reading as ltspice ...``)."""
    from circuitsim.netlist import NetlistWarning
    from circuitsim.netlist.errors import DialectNote

    if issubclass(category, DialectNote):
        print(f"circuitsim: note: {message}", file=sys.stderr)
    elif issubclass(category, NetlistWarning):
        print(f"circuitsim: warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


_SHOW_WARNING = warnings.showwarning


def _internal_error() -> int:
    import traceback

    traceback.print_exc()
    print("circuitsim: internal error (a bug in circuitsim, not in your input): please report it with the "
          "command line and the traceback above", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
