"""STN acceptance (issue 10): distil, then accuracy, stability and speed against the white-box DK model.

For each circuit, in one run (torch on one thread):

- distillation with ``--minutes`` (default 5) of wall-clock budget, teacher data included: the time
  and the training steps it took (``circuitsim.distill``; or ``--weights-dir`` to reuse files);
- held-out ESR of the STN at 48 kHz against DK at 48 kHz x 8 decimated (``render(..., oversample=8)``)
  on guitar-like phrases not in the training excitation (``guitar_phrase``, seed 2024), at 0 dB and
  -12 dB re ``--input-volts``; the TS-808 at drive 0.5 (never in training: the grid is 0, 0.2, ..., 1)
  and at two training settings;
- stability: 60 s of a guitar phrase at +12 dB above the largest training level, then 1 s of silence:
  finite, the peak against DK's peak on the same 60 s, and the distance from the DC point at the end;
- speed on the same 10 s of audio, best of ``--repeats``: STN (compiled loop, 48 kHz) against DK at
  48 kHz x 8 as a user runs it (``render(..., oversample=8)``: up-sampling, kernel, decimation) and
  kernel-only (DK on pre-up-sampled input, STN ``run_compiled``).

    python benchmarks/bench_stn.py [--minutes 5] [--circuits diode_clipper ts808_clipping] [--weights-dir DIR]
                                   [--activation tanh|rational] [--hidden H] [--lookahead A]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import timeit
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import circuitsim  # noqa: E402
from circuitsim.api import load, process_stream, render  # noqa: E402
from circuitsim.audio import oversample  # noqa: E402
from circuitsim.stn import distill  # noqa: E402
from circuitsim.stn.excitation import guitar_phrase  # noqa: E402
from circuitsim.stn.inference import run_compiled  # noqa: E402
from circuitsim.validate import esr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FS = 48000
CASES = {
    "diode_clipper": {"knobs": None, "settings": [{}]},
    "ts808_clipping": {"knobs": "drive", "settings": [{"drive": 0.5}, {"drive": 0.2}, {"drive": 1.0}]},
}


def _best(fn, repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``fn()``, seconds."""
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def _dk(dk, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """DK at 8x as a user renders it, the resamplers holding the edges (the TS-808 sits at 4.5 V)."""
    return np.concatenate(list(process_stream(dk, [x], 8, hold_edges=True)))


def _set(model, values: dict) -> None:  # noqa: ANN001
    for k, v in values.items():
        model.set_value(k, v)


def run_case(name: str, args: argparse.Namespace) -> dict:
    net = ROOT / "netlists" / f"{name}.cir"
    case = CASES[name]
    path = Path(args.weights_dir or "/tmp") / f"{name}.stn"
    out: dict = {"name": name}
    if args.weights_dir and path.exists():
        f = circuitsim.stn.STNFile.load(path)
    else:
        t = time.perf_counter()
        chosen = {k: v for k, v in (("activation", args.activation), ("hidden", args.hidden),
                                    ("lookahead", args.lookahead)) if v is not None}  # else distill's defaults
        f = distill(net, path, minutes=args.minutes, knobs=case["knobs"], input_volts=args.input_volts,
                    overwrite=True, progress=not args.quiet, **chosen)
        out["distill_s"] = time.perf_counter() - t
    out["training"] = f.metadata["training"]
    stn = load(net, "stn", FS, weights=path)
    dk = load(net, "dk", 8 * FS)
    rows = []
    for values in case["settings"]:
        _set(stn, values)
        _set(dk, values)
        for db in (0.0, -12.0):
            x = guitar_phrase(args.seconds, FS, args.input_volts * 10 ** (db / 20), seed=2024)
            rows.append((values, db, esr(render(stn, x), _dk(dk, x))))
    out["esr"] = rows
    # stability: 60 s at +12 dB, then silence
    values = case["settings"][0]
    _set(stn, values)
    _set(dk, values)
    loud = guitar_phrase(60.0, FS, args.input_volts * 4.0, seed=99)
    x = np.concatenate([loud, np.zeros(FS)])
    y = render(stn, x)
    y_dk = _dk(dk, loud)
    _, y_dc = stn.dc_point()
    out["stability"] = {"finite": bool(np.isfinite(y).all()), "peak": float(np.max(np.abs(y - y_dc))),
                        "dk_peak": float(np.max(np.abs(y_dk - y_dk[0]))), "esr_60s": esr(y[: len(loud)], y_dk),
                        "end_from_dc": float(np.max(np.abs(y[-FS // 10 :] - y_dc)))}
    # speed on the same audio
    torch.set_num_threads(1)
    x = guitar_phrase(args.speed_seconds, FS, args.input_volts, seed=7)
    xo = torch.as_tensor(oversample(x, 8))
    render(stn, x[:1000])
    render(dk, x[:1000], oversample=8)
    t_stn = _best(lambda: render(stn, x), args.repeats)
    t_dk = _best(lambda: render(dk, x, oversample=8), args.repeats)

    def dk_kernel() -> None:
        with torch.no_grad():
            dk(xo)

    arrays = stn.net.arrays()
    u = np.pad(x[None] / stn.norm.u_scale, ((0, 0), (1, stn.net.lookahead)))
    k = stn.knobs().numpy()
    t_dk_k = _best(dk_kernel, args.repeats)
    t_stn_k = _best(lambda: run_compiled(arrays, np.zeros((1, len(stn.state_names))), u, k, stn.activation),
                    args.repeats)
    out["speed"] = {"seconds": args.speed_seconds, "stn_s": t_stn, "dk_s": t_dk, "stn_kernel_s": t_stn_k,
                    "dk_kernel_s": t_dk_k}
    return out


def report(r: dict) -> str:
    tr = r["training"]
    lines = [f"### {r['name']}", ""]
    lines.append(f"- distillation: {r.get('distill_s', tr['wall_s']):.0f} s wall ({tr['teacher_s']:.0f} s teacher "
                 f"data, {tr['stage1_steps']} teacher-forcing + {tr['stage2_steps']} recursive steps, {tr['device']}, "
                 f"validation ESR {tr['validation_esr']:.2e}, kept: {tr['kept']})")
    for values, db, e in r["esr"]:
        where = ", ".join(f"{k}={v:g}" for k, v in values.items()) or "-"
        lines.append(f"- held-out ESR {where} at {db:+.0f} dB: {e:.2e}")
    s = r["stability"]
    lines.append(f"- stability (60 s at +12 dB, then 1 s silence): finite={s['finite']}, peak {s['peak']:.3g} V "
                 f"(DK {s['dk_peak']:.3g} V), ESR over the 60 s {s['esr_60s']:.2e}, end |y - y_dc| "
                 f"{s['end_from_dc']:.1e} V")
    sp = r["speed"]
    lines.append(f"- speed on {sp['seconds']:g} s of 48 kHz audio: STN {sp['stn_s'] * 1e3:.0f} ms, DK x8 with "
                 f"resampling {sp['dk_s'] * 1e3:.0f} ms -> {sp['dk_s'] / sp['stn_s']:.1f}x; kernel only: STN "
                 f"{sp['stn_kernel_s'] * 1e3:.0f} ms, DK {sp['dk_kernel_s'] * 1e3:.0f} ms -> "
                 f"{sp['dk_kernel_s'] / sp['stn_kernel_s']:.1f}x")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--circuits", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--minutes", type=float, default=5.0, help="distillation budget per circuit")
    p.add_argument("--input-volts", type=float, default=1.0, help="largest training peak (0 dB)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each held-out phrase")
    p.add_argument("--speed-seconds", type=float, default=10.0, help="audio for the speed comparison")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--activation", default=None, choices=["tanh", "rational"], help="activation (default: distill's)")
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default: distill's)")
    p.add_argument("--lookahead", type=int, default=None, help="input samples read ahead (default: distill's)")
    p.add_argument("--weights-dir", type=Path, help="reuse NAME.stn files found here (else distil into it)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    for name in args.circuits:
        print(report(run_case(name, args)), flush=True)
        print()


if __name__ == "__main__":
    main()
