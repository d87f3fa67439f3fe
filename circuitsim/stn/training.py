"""Distillation: teacher data, then the two training stages of the STN (docs/stn.md).

1. Teacher forcing (Parker, Esqueda & Bergner, DAFx-19; docs/stn.md (S4)): every recorded step
   ``(x[n-1], u[n], k) -> x[n] − x[n-1]`` is an independent regression sample, so the stage is
   parallel over time with any batch size; the linear skip and the readout start from least squares.
2. Recursive fine-tuning against exposure bias: the recursion runs freely over short windows
   (truncated back-propagation through time) from the teacher's state at the window start; the loss
   is the normalised state and output error.  The model kept is the one with the lowest output
   ESR on validation segments (other seeds), run through the compiled loop from the DC point.

The budget (``minutes``) covers everything from the first teacher sample to the saved file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitsim.circuit.circuit import ParamKind
from circuitsim.errors import UsageError
from circuitsim.stn.excitation import training_segments
from circuitsim.stn.fileformat import STNFile, netlist_hash
from circuitsim.stn.inference import run_compiled
from circuitsim.stn.model import ACTIVATIONS, Normalisation, STNNet
from circuitsim.stn.teacher import Recording, Teacher, knob_grid

LEVELS_DB = (-40.0, 0.0)
TEACHER_OVERSAMPLE = 8
TRIM = 64  # samples dropped at the end of every segment (decimation filter reaching past the end)
LR1, LR2 = 1e-2, 1e-3  # peak learning rates of stage 1 (teacher forcing) and stage 2 (recursive), cosine to 2 %
STAGE1_SHARE = 0.6  # share of the training time given to stage 1 (its steps are ~40x cheaper; docs/stn.md)
WINDOW, WINDOWS = 256, 64  # stage 2: samples per free-running window, windows per step


@dataclass
class _Data:
    x: np.ndarray  # (B, T, ns) normalised states
    u: np.ndarray  # (B, T) normalised input
    y: np.ndarray  # (B, T) output deviation (volts)
    k: np.ndarray  # (B, nk) normalised knobs


KnobSpec = str | Sequence[str] | Mapping[str, tuple[float, float]] | None


def parse_knobs(knobs: KnobSpec) -> dict[str, tuple[float, float]]:
    """``"drive"`` / ``"drive=0:1,tone"`` / a list / a mapping -> ``{name: (lo, hi)}`` (default range 0..1)."""
    if knobs is None:
        return {}
    if isinstance(knobs, Mapping):
        return {k: (float(v[0]), float(v[1])) for k, v in knobs.items()}
    items = [s for s in (knobs.split(",") if isinstance(knobs, str) else knobs) if s.strip()]
    out = {}
    for item in items:
        name, _, rng = item.strip().partition("=")
        lo, hi = 0.0, 1.0
        if rng:
            try:
                lo, hi = (float(t) for t in rng.split(":"))
            except ValueError:
                raise UsageError(f"--knobs {item}: the range must be LO:HI, e.g. {name}=0:1") from None
        if not hi > lo:
            raise UsageError(f"--knobs {item}: the range needs LO < HI")
        out[name.strip()] = (lo, hi)
    return out


def _normalise(recs: list[Recording], settings: list[dict[str, float]], norm: Normalisation) -> _Data:
    x = np.concatenate([(r.x - r.x_dc) / norm.s_x for r in recs])
    u = np.concatenate([r.u / norm.u_scale for r in recs])
    y = np.concatenate([r.y - r.y_dc for r in recs])
    kv = [np.array(list(s.values()), dtype=np.float64) for s in settings]
    k = np.concatenate([np.tile((v - norm.k_mid) / norm.k_half, (len(r.u), 1)) for v, r in zip(kv, recs)])
    return _Data(x[:, :-TRIM], u[:, :-TRIM], y[:, :-TRIM], k.reshape(len(u), -1))


def _val_esr(arrays: dict[str, np.ndarray], val: _Data, activation: str, lookahead: int) -> float:
    """Output ESR of the free-running compiled model from the DC point, summed per knob setting then averaged."""
    out = []
    for kv in np.unique(val.k, axis=0):
        rows = np.all(val.k == kv, axis=1)
        u = np.pad(val.u[rows], ((0, 0), (1, lookahead)))  # 0 V before the start and after the end
        y, _ = run_compiled(arrays, np.zeros((rows.sum(), val.x.shape[2])), u, kv, activation)
        out.append(np.sum((y - val.y[rows]) ** 2) / max(np.sum(val.y[rows] ** 2), 1e-300))
    return float(np.mean(out)) if all(np.isfinite(out)) else math.inf


def distill(
    netlist: str | Path,
    output: str | Path | None = None,
    *,
    sample_rate: float = 48000.0,
    input_volts: float = 1.0,
    knobs: KnobSpec = None,
    params: Mapping[str, float] | None = None,
    minutes: float = 5.0,
    hidden: int | None = None,
    settings: int | None = None,
    seconds: float | None = None,
    input_source: str = "VIN",
    output_node: str = "out",
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    max_steps: tuple[int, int] | None = None,
    activation: str = "rational",
    lookahead: int = 2,
) -> STNFile:
    """Distil an STN from the netlist's DK model; returns it (and writes ``output`` when given).

    ``sample_rate``: the STN rate (hertz; the teacher runs at 8x).  ``input_volts``: the largest
    training peak at the input (levels ``-40..0`` dB re it).  ``knobs``: ``.param`` names the
    network is conditioned on, with their ranges (default 0..1).  ``params``: ``.param`` values held
    fixed.  ``minutes``: wall-clock budget of the whole distillation.  ``hidden``: MLP width
    (default 4 + 4 per state, at most 16).  ``settings``: knob settings (default 6 for one knob);
    ``seconds``: teacher audio per setting (default 24 s shared over the settings, at least 4 s).
    ``device``: torch device (default CUDA when present, else CPU).  ``max_steps``: (teacher-forcing,
    recursive) step limits, reached before the budget on a fast machine (reproducible runs; the
    learning-rate schedules then follow the steps).  ``activation``: ``"rational"`` (default: the [7/6]
    Padé approximant of tanh, faster in the compiled loop; docs/stn.md) or ``"tanh"``.  ``lookahead``:
    input samples the network reads ahead (default 2; its latency in samples).  Ctrl-C during training
    keeps the best model so far.
    """
    from tqdm import tqdm

    t0 = time.monotonic()
    budget = float(minutes) * 60.0
    if not budget > 0:
        raise UsageError("--minutes must be positive")
    if not input_volts > 0:
        raise UsageError("--input-volts must be positive")
    if output is not None:
        out_path = Path(output) if Path(output).suffix else Path(output).with_suffix(".stn")
        if out_path.exists() and not overwrite:
            raise UsageError(f"{out_path} exists; use --overwrite to replace it")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ranges = parse_knobs(knobs)
    params = dict(params or {})
    teacher = Teacher(netlist, sample_rate, TEACHER_OVERSAMPLE, params=params, input_source=input_source,
                      output_node=output_node)
    mod = teacher.module
    names = {}
    for k in ranges:
        p = mod.circuit.params.get(next((n for n in mod.circuit.params if n.lower() == k.lower()), k))
        if p is None or p.kind != ParamKind.CONTROL:
            controls = [n for n, q in mod.circuit.params.items() if q.kind == ParamKind.CONTROL]
            raise UsageError(f"--knobs {k}: not a .param of the netlist (knobs: {', '.join(controls) or 'none'})")
        if any(n.lower() == k.lower() for n in params):
            raise UsageError(f"{k} is both a knob (--knobs) and held fixed (--set)")
        names[k] = p.name
    ranges = {names[k]: v for k, v in ranges.items()}
    knob_names = list(ranges)
    ns = len(teacher.state_names)
    hidden = int(hidden or min(4 + 4 * ns, 16))  # 8 for one state, 16 for the TS-808's three (docs/stn.md)
    n_set = int(settings or (1 if not knob_names else 6 if len(knob_names) == 1 else 4 * 2 ** len(knob_names)))
    per = float(seconds or max(24.0 / n_set, 4.0))
    seg_s = 0.5
    grid = knob_grid(ranges, n_set, seed) if knob_names else [{}]

    # ---------------------------------------------------------------- teacher data
    recs, vrecs = [], []
    bar = tqdm(total=len(grid), desc="teacher (dk x8)", disable=not progress, unit="setting")
    for i, setting in enumerate(grid):
        teacher.set_knobs(setting)
        u, _ = training_segments(max(int(round(per / seg_s)), 5), seg_s, sample_rate, input_volts, seed=seed + i,
                                 level_db=LEVELS_DB)
        recs.append(teacher.record(u))
        uv, _ = training_segments(5, seg_s, sample_rate, input_volts, seed=seed + 7919 + i, level_db=LEVELS_DB)
        vrecs.append(teacher.record(uv))
        bar.update(1)
    bar.close()
    t_teacher = time.monotonic() - t0

    dev_x = np.concatenate([(r.x - r.x_dc).reshape(-1, ns) for r in recs])
    dx = np.concatenate([np.diff(r.x, axis=1).reshape(-1, ns) for r in recs])
    lo = np.array([ranges[k][0] for k in knob_names])
    hi = np.array([ranges[k][1] for k in knob_names])
    norm = Normalisation(
        s_x=np.maximum(dev_x.std(0), 1e-12), s_dx=np.maximum(dx.std(0), 1e-15),
        s_y=float(np.concatenate([(r.y - r.y_dc).ravel() for r in recs]).std()) or 1.0,
        u_scale=float(input_volts), k_mid=(lo + hi) / 2, k_half=(hi - lo) / 2,
    )
    norm.x_lim = 1.5 * np.max(np.abs(dev_x), axis=0) / norm.s_x
    data = _normalise(recs, grid, norm)
    val = _normalise(vrecs, grid, norm)
    if activation not in ACTIVATIONS:
        raise UsageError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
    # trained with torch.tanh whatever the activation: the Padé approximant is within 1e-4 of it but
    # costs ~12 elementwise torch ops (4x slower steps); validation and the kept model use `activation`
    net = STNNet(ns, len(knob_names), hidden, norm, activation="tanh", lookahead=lookahead).to(dev)
    nu = net.nu

    # teacher-forcing samples: z = [x̃[n-1], ũ[n-1], ..., ũ[n+a], k̃] -> (x[n] − x[n-1]) / s_Δ, n = 1 .. T-1-a
    B, T = data.u.shape
    m = T - nu + 1
    z = np.concatenate([data.x[:, :m]] + [data.u[:, q : q + m, None] for q in range(nu)] +
                       [np.repeat(data.k[:, None], m, axis=1)], axis=2)
    z = z.reshape(-1, ns + nu + len(knob_names))
    target = (np.diff(data.x, axis=1)[:, :m] * (norm.s_x / norm.s_dx)).reshape(-1, ns)
    # least squares: linear skip L (on [x̃, ũ]; its k-part cancels against g(z_dc)) and the readout
    L = np.linalg.lstsq(z[:, : ns + nu], target, rcond=None)[0].T
    feats = np.concatenate([np.concatenate([data.x, data.u[..., None]], axis=2)] +
                           [np.concatenate([data.x, data.u[..., None]], axis=2) * data.k[:, None, j : j + 1]
                            for j in range(len(knob_names))], axis=2).reshape(-1, (ns + 1) * (1 + len(knob_names)))
    r = np.linalg.lstsq(feats, data.y.reshape(-1), rcond=None)[0].reshape(1 + len(knob_names), ns + 1)
    with torch.no_grad():
        net.L[:, : ns + nu] = torch.as_tensor(L, dtype=net.L.dtype)
        net.ra.copy_(torch.as_tensor(r[0]))
        if knob_names:
            net.rB.copy_(torch.as_tensor(r[1:].T))
    zt = torch.as_tensor(z, dtype=torch.float32, device=dev)
    tt = torch.as_tensor(target, dtype=torch.float32, device=dev)

    left = budget - (time.monotonic() - t0) - 5.0  # keep a few seconds for the file
    if left <= 10:
        raise UsageError(f"--minutes {minutes:g} leaves no time to train after {t_teacher:.0f} s of teacher data")
    t1_end = time.monotonic() + STAGE1_SHARE * left
    t2_end = time.monotonic() + left
    best = {"esr": _val_esr(net.arrays(), val, activation, lookahead), "arrays": net.arrays(), "stage": "least squares"}
    log = {"teacher_s": t_teacher, "stage1_steps": 0, "stage2_steps": 0}
    interrupted = False
    lim1, lim2 = (int(max_steps[0]), int(max_steps[1])) if max_steps else (1 << 62, 1 << 62)
    if max_steps:  # the budget is an upper bound then: share it by the step counts' typical costs
        t1_end = time.monotonic() + left * min(0.7, lim1 / max(lim1 + 40 * lim2, 1))
    bar = tqdm(total=int(left), desc="distil", unit="s", disable=not progress,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}")
    tick = time.monotonic()

    def advance(**post: float) -> None:
        nonlocal tick
        now = time.monotonic()
        bar.update(now - tick)
        tick = now
        bar.set_postfix({k: f"{v:.3g}" for k, v in post.items()}, refresh=False)

    def keep(stage: str) -> float:
        e = _val_esr(net.arrays(), val, activation, lookahead)
        if e < best["esr"]:
            best.update(esr=e, arrays=net.arrays(), stage=stage)
        return e

    gen = torch.Generator(device=dev).manual_seed(seed)
    try:
        # ------------------------------------------------------------ stage 1: teacher forcing
        opt = torch.optim.Adam(net.parameters(), lr=LR1)
        batch = 4096
        n = len(zt)
        step = 0
        start1 = time.monotonic()
        span1 = max(t1_end - start1, 1e-3)
        while time.monotonic() < t1_end and step < lim1:
            frac = step / lim1 if max_steps else (time.monotonic() - start1) / span1
            for gr in opt.param_groups:
                gr["lr"] = LR1 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
            idx = torch.randint(0, n, (batch,), device=dev, generator=gen)
            zb = zt[idx]
            pred = net.increment(zb[:, :ns], zb[:, ns : ns + nu], zb[:, ns + nu :])
            loss = torch.mean((pred - tt[idx]) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 200 == 0:
                advance(stage=1, loss=loss.item(), best_esr=best["esr"])
        log["stage1_steps"] = step
        keep("teacher forcing")

        # ------------------------------------------------------------ stage 2: recursive fine-tuning
        xt = torch.as_tensor(data.x, dtype=torch.float32, device=dev)
        ut = torch.as_tensor(data.u, dtype=torch.float32, device=dev)
        yt = torch.as_tensor(data.y / norm.s_y, dtype=torch.float32, device=dev)
        kt = torch.as_tensor(data.k, dtype=torch.float32, device=dev)
        opt = torch.optim.Adam(net.parameters(), lr=LR2)
        win, nb = WINDOW, WINDOWS
        step = 0
        start2 = time.monotonic()
        span2 = max(t2_end - start2, 1e-3)
        last_val = time.monotonic()
        while time.monotonic() < t2_end and step < lim2:
            frac = step / lim2 if max_steps else (time.monotonic() - start2) / span2
            for gr in opt.param_groups:
                gr["lr"] = LR2 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
            rows = torch.randint(0, B, (nb,), device=dev, generator=gen)
            s0 = torch.randint(1, T - win - lookahead, (nb,), device=dev, generator=gen)
            ix = s0[:, None] + torch.arange(win, device=dev)
            x0 = xt[rows, s0 - 1]
            ahead = ix[:, -1:] + torch.arange(1, lookahead + 1, device=dev)
            iu = torch.cat([ix[:, :1] - 1, ix, ahead], dim=1)  # ũ[n-1] .. ũ[n+a] around the window
            xs, ys = net.rollout(x0, ut[rows[:, None], iu], kt[rows])
            r = rows[:, None]
            loss = torch.mean((xs - xt[r, ix]) ** 2) + torch.mean((ys / norm.s_y - yt[r, ix]) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            if (step % 50 == 0) if max_steps else (time.monotonic() - last_val > 10.0):
                last_val = time.monotonic()
                advance(stage=2, loss=loss.item(), val_esr=keep("recursive"), best_esr=best["esr"])
            else:
                advance(stage=2, loss=loss.item(), best_esr=best["esr"])
        log["stage2_steps"] = step
        keep("recursive")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    log.update(wall_s=time.monotonic() - t0, interrupted=interrupted, validation_esr=best["esr"],
               kept=best["stage"], device=str(dev))
    circ = mod.circuit
    fixed = {n: float(p.value) for n, p in circ.params.items() if p.kind == ParamKind.CONTROL and n not in ranges}
    fixed.update({n: float(mod.parameter(n)) for n in fixed})
    meta = {
        "netlist": {"name": Path(circ.netlist.path).name, "sha256": netlist_hash(circ.netlist)},
        "sample_rate": float(sample_rate),
        "input_source": input_source.upper(),
        "output_node": output_node.lower(),
        "teacher": {"method": "dk", "oversample": TEACHER_OVERSAMPLE},
        "states": teacher.state_names,
        "knobs": {k: list(v) for k, v in ranges.items()},
        "knob_settings": grid,
        "fixed": fixed,
        "input_volts": float(input_volts),
        "training_levels_db": list(LEVELS_DB),
        "hidden": hidden,
        "activation": activation,
        "lookahead": int(lookahead),
        "normalisation": norm.to_dict(),
        "readout": "learned linear: y = y_dc + [x~, u~] . (ra + rB k~)",
        "training": {**log, "teacher_seconds_of_audio": float(B * T / sample_rate)},
    }
    result = STNFile(best["arrays"], meta)
    if output is not None:
        result.save(out_path, overwrite=overwrite)
    return result
