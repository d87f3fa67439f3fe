"""Long render: a guitar DI through netlists/ts808_clipping.cir at --oversample 8, as `circuitsim simulate` runs it.

Two measurements in one run, on the same input file:

1. the CLI itself under ``/usr/bin/time -v`` (``circuitsim simulate NETLIST in.wav -o out.wav
   --oversample 8 --overwrite -q``, one thread): wall time, real-time factor (audio seconds per
   wall second), peak resident memory, user and system time — start-up and the cached kernel
   load included;
2. the resampler's share: the same streaming chain in this process (WAV blocks in,
   :func:`circuitsim.api.process_stream`, float WAV out), with the time spent inside the up-
   and down-sampler's ``process``/``flush`` accumulated, against the chain's wall time.

The input is plucked notes (Karplus-Strong, 0.3 V peak after ``--input-volts 1``) at 44.1 kHz,
16-bit mono, ``--minutes`` long (default 10).

    python benchmarks/bench_render.py [--minutes 10] [--write]   # --write updates BENCHMARKS.md's section
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from benchmarks.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NETLIST = ROOT / "netlists" / "ts808_clipping.cir"
FS = 44100
UP = 8
SECTION = "## Long render"


def make_input(path: Path, minutes: float) -> None:
    """``minutes`` of plucked notes, 0.3 full scale peak, 16-bit PCM at 44.1 kHz, written block by block."""
    from circuitsim.signals import karplus_strong

    notes = [82.4, 110.0, 146.8, 196.0, 246.9, 329.6]
    n_total = int(minutes * 60 * FS)
    with sf.SoundFile(str(path), "w", FS, 1, subtype="PCM_16", format="WAV") as f:
        k = 0
        while k < n_total:
            note = karplus_strong(notes[(k // FS) % len(notes)], 1.0, FS, seed=k // FS)
            note = 0.3 * note / np.max(np.abs(note))
            f.write(note[: n_total - k])
            k += len(note)


def run_cli(inp: Path, out: Path) -> dict[str, float]:
    """``/usr/bin/time -v circuitsim simulate``: wall s, user s, sys s, peak RSS MB."""
    exe = shutil.which("circuitsim") or "circuitsim"
    cmd = ["/usr/bin/time", "-v", exe, "simulate", str(NETLIST), str(inp), "-o", str(out), "--oversample",
           str(UP), "--overwrite", "-q"]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"circuitsim simulate failed: {proc.stderr.strip().splitlines()[-1:]}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}:\s*(.+)", proc.stderr).group(1).strip()

    parts = [float(p) for p in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    wall = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return {"wall": wall, "user": float(field("User time (seconds)")), "sys": float(field("System time (seconds)")),
            "rss_mb": float(field("Maximum resident set size (kbytes)")) / 1024}


def run_instrumented(inp: Path, out: Path) -> dict[str, float]:
    """The CLI's streaming chain in-process, timing the resampler calls: chain wall s, resampler s."""
    import inspect

    import torch

    import circuitsim.audio as audio
    from circuitsim.api import load, process_stream

    # as `circuitsim simulate` calls it (the resamplers take the signal as its first value outside it)
    kwargs = {"hold_edges": True} if "hold_edges" in inspect.signature(process_stream).parameters else {}

    torch.set_num_threads(1)
    spent = [0.0]

    class Timed(audio.StreamResampler):
        def process(self, block: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            try:
                return super().process(block)
            finally:
                spent[0] += time.perf_counter() - t0

        def flush(self) -> np.ndarray:
            t0 = time.perf_counter()
            try:
                return super().flush()
            finally:
                spent[0] += time.perf_counter() - t0

    model = load(NETLIST, "dk", FS * UP)
    with torch.no_grad():
        model(torch.zeros(1, 1000, dtype=torch.float64))  # load the cached kernel before timing
    original = audio.StreamResampler
    audio.StreamResampler = Timed  # process_stream imports it from circuitsim.audio at call time
    try:
        t0 = time.perf_counter()
        _, _, blocks = audio.wav_blocks(inp)
        with audio.WavWriter(out, FS, overwrite=True) as w:
            for y in process_stream(model, blocks, UP, **kwargs):
                w.write(y)
        wall = time.perf_counter() - t0
    finally:
        audio.StreamResampler = original
    return {"wall": wall, "resampler": spent[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the input, minutes of 44.1 kHz audio")
    ap.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md (its own section)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        inp, out = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        make_input(inp, args.minutes)
        seconds = args.minutes * 60
        make_input(Path(tmp) / "warm.wav", 1 / 60)
        run_cli(Path(tmp) / "warm.wav", out)  # compile or load the kernel into the cache first
        cli = run_cli(inp, out)
        ins = run_instrumented(inp, Path(tmp) / "out2.wav")
        a, b = sf.read(str(out), dtype="float64")[0], sf.read(str(Path(tmp) / "out2.wav"), dtype="float64")[0]
        diff = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    n_sim = seconds * FS * UP
    rows = [
        ("input", f"{args.minutes:g} min of 44.1 kHz 16-bit plucked notes ({seconds * FS / 1e6:.1f} M samples, "
                  f"{n_sim / 1e6:.0f} M simulated at {FS * UP} Hz)"),
        ("CLI wall time (`/usr/bin/time -v`)",
         f"{cli['wall']:.1f} s (user {cli['user']:.1f} s, sys {cli['sys']:.1f} s)"),
        ("CLI real-time factor", f"{seconds / cli['wall']:.1f}x"),
        ("CLI real-time factor on its CPU time (user + sys: one core's worth, whatever the load)",
         f"{seconds / (cli['user'] + cli['sys']):.1f}x"),
        ("CLI peak resident memory", f"{cli['rss_mb']:.0f} MB"),
        ("in-process chain (WAV in, resample, DK, resample, WAV out)",
         f"{ins['wall']:.1f} s, {seconds / ins['wall']:.1f}x real time, {1e9 * ins['wall'] / n_sim:.0f} ns per "
         "simulated sample"),
        ("resampler (up + down, libsoxr VHQ)",
         f"{ins['resampler']:.2f} s = {100 * ins['resampler'] / ins['wall']:.1f} % of the chain, "
         f"{1e9 * ins['resampler'] / n_sim:.1f} ns per simulated sample"),
        ("largest difference CLI output vs in-process output (relative to the peak)", f"{diff:.1e}"),
    ]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if args.write:
        text = (
            f"{SECTION} ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `python benchmarks/bench_render.py --write --minutes {args.minutes:g}` — "
            "`circuitsim simulate netlists/ts808_clipping.cir in.wav -o out.wav --oversample 8` under "
            "`/usr/bin/time -v`, then the same chain in-process with the resampler's calls timed.  \n"
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread "
            f"(NUMBA_NUM_THREADS=1), load average {os.getloadavg()[0]:.1f} at the end (shared with other jobs).\n\n"
            + table
            + "\n\nIssue 12's targets: >= 15x real time on one core, bounded memory, resampler <= 25 % of the wall "
            "time. Before libsoxr the polyphase filter alone cost ~520 ns per simulated sample (4.2x real time "
            "for the whole render).\n"
        )
        print(f"\nwrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
