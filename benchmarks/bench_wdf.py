"""WDF against DK and ngspice, in one run on one thread, at 48 kHz x 8.

For each circuit: circuitsim WDF forward (no gradients, best of ``--repeats``), WDF forward +
backward (every component value learnable, loss mean(y^2)), DK forward and forward + backward on
the same input in the same process (and, where the explicit root applies, DK forward with it switched
off: Newton on every sample), the largest WDF-DK difference over the output's peak, the
root solver the WDF used (explicit Wright omega, linear, or Newton on the shared core), and --
unless ``--no-ngspice`` -- ngspice's own transient-analysis time and the WDF's ESR against it
(ngspice run exactly as in ``benchmarks/bench_dk.py``).  The published chowdsp_wdf bake-off
figures (1000 s of 48 kHz audio: diode clipper 2.04 s, Bassman tone stack 0.71 s, machine not
stated) are printed beside ours as ns/sample.

``--split`` instead times, on each circuit whose WDF takes the explicit root, the whole ``model(x)``
call and the compiled core alone on the WDF's and on DK's maps (CPU time, best of ``--repeats``, every
variant interleaved): with that root, with the core's Newton (explicit root off) and with a trivial
root (``fm_solve`` below: ``v = p``, currents proportional to it, the same loop-carried dependence),
so the root's share of a sample is explicit-root minus trivial-root time, the rest of the core is its
loop over the linear maps, and ``model(x)`` minus the core is the per-call work outside the kernel.

``--stages`` splits forward + backward (WDF and DK, the same input, every variant interleaved, CPU time,
best of ``--repeats`` each): ``model(x)`` without gradients and its compiled core; forward + backward and,
inside it, the core's forward (saving the trajectory) and its backward (``core.backward``); the maps
(MNA, then the WDF's adapted tree and composed maps (8) or DK's) built under autograd and their backward
alone; the loss mean(y^2) and its backward on a tensor of y's size; the rest (the operating point
and initial state with their gradients, conversions).  Where the root is a diode pair, also the core's
backward with the devices' evaluation replaced by a trivial one (``fm_eval`` below: f = 1e-3 v): what the
backward spends re-evaluating the diodes at the saved roots.

    python benchmarks/bench_wdf.py [--seconds 1] [--signal sine|guitar] [--circuits ...] [--no-ngspice] [--write]
    python benchmarks/bench_wdf.py --stages [--circuits diode_clipper fmv_tonestack] [--repeats 7]
    python benchmarks/bench_wdf.py --split [--circuits diode_clipper ts808_clipping] [--repeats 5]
                                   [--signal sine --amplitude 0.5 --seconds 0.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_dk import (  # noqa: E402
    FS,
    _f,
    arguments,
    forward_backward_times,
    guitar,
    ngspice_reference,
    run_rows,
    sine,
)
from benchmarks.bench_kernel import _best as timed  # noqa: E402
from benchmarks.report import write_section  # noqa: E402
from circuitsim.api import load  # noqa: E402
from circuitsim.kernels import autograd, codegen, core  # noqa: E402
from circuitsim.kernels.core import KernelOptions, StepFormulation  # noqa: E402
from circuitsim.kernels.explicit_root import MAX_OMEGA_STEPS  # noqa: E402
from circuitsim.kernels.statespace import dk_step  # noqa: E402
from circuitsim.validate import esr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CIRCUITS = ["diode_clipper", "fmv_tonestack", "ts808_clipping", "bjt_common_emitter", "triode_common_cathode"]
SECTION = "## WDF against DK and ngspice"
# chowdsp_wdf bake-off (1000 s of 48 kHz audio), published; machine not stated
CHOWDSP_NS = {"diode_clipper": 2.04 / 48e6 * 1e9, "fmv_tonestack": 0.71 / 48e6 * 1e9}


def _newton_forward(model, xt: torch.Tensor, repeats: int) -> float:  # noqa: ANN001
    """Forward time with the core's explicit root switched off (Newton on every sample)."""
    saved = autograd.DEFAULT_OPTIONS
    autograd.DEFAULT_OPTIONS = KernelOptions(explicit=False)
    try:
        with torch.no_grad():
            model(xt[:, :1000])
        return timed(lambda: _no_grad(model, xt), repeats)
    finally:
        autograd.DEFAULT_OPTIONS = saved


def _no_grad(model, xt: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        return model(xt)


def bench(name: str, x: np.ndarray, args: argparse.Namespace) -> dict:
    path = ROOT / "netlists" / f"{name}.cir"
    n = len(x)
    xt = torch.as_tensor(x).unsqueeze(0)
    wdf, dk = load(path, "wdf", FS), load(path, "dk", FS)
    kind, steps = wdf.root_path()
    w_f, w_fb = forward_backward_times(wdf, xt, args.repeats)
    d_f, d_fb = forward_backward_times(dk, xt, args.repeats)
    d_newton = _newton_forward(dk, xt, args.repeats) if kind == "omega" else float("nan")
    with torch.no_grad():
        y_w, y_d = wdf(xt)[0].numpy(), dk(xt)[0].numpy()
    root = {"linear": "linear", "newton": "Newton (shared core)"}.get(kind, "")
    if kind == "omega":
        root = f"Wright omega + {steps[0] - 1} corr."  # one evaluation, closed-form chord corrections
    row = {
        "circuit": name, "root": root, "fwd": w_f / n * 1e9, "fb": w_fb / n * 1e9, "fb_ratio": w_fb / w_f,
        "dk_fwd": d_f / n * 1e9, "dk_fb": d_fb / n * 1e9, "vs_dk": d_f / w_f, "dk_newton": d_newton / n * 1e9,
        "diff": float(np.max(np.abs(y_w - y_d)) / np.max(np.abs(y_d))),
        "chowdsp": CHOWDSP_NS.get(name, float("nan")), "spice": float("nan"), "esr": float("nan"),
    }
    if not args.no_ngspice:
        acct, _, ref = ngspice_reference(path, x, args.signal, args.freq, args.amplitude, args.spice_repeats)
        row.update(spice=acct / n * 1e9, esr=esr(y_w, ref))
    return row


NPHI = 0  # placeholder: the generated module's device-output count, read by fm_solve there


def fm_solve(P, p, z, theta, phi, lc, work, fopt, est, early):  # noqa: ANN001, ANN201 - the trivial root's hook (generated code)
    # v = p, every device output proportional to it: the loop-carried p -> phi -> x dependence of a
    # root with none of its arithmetic (--split)
    z[0] = p[0]
    for k in range(NPHI):
        phi[k] = 1e-9 * p[0]
    return True


def _core_runs(model, mats: list[np.ndarray], u: np.ndarray, theta: np.ndarray, module) -> dict:  # noqa: ANN001
    """The compiled-core variants of ``--split`` on one formulation's maps: (run, label) by key."""
    nl = model.topology.nonlinearity
    base = dk_step(nl, MAX_OMEGA_STEPS)
    trivial = codegen.step_module(nl.nb_source, StepFormulation(
        name="trivial_root", hooks=(*base.hooks[:-1], fm_solve), constants=base.constants))
    x0 = np.zeros((1, mats[0].shape[0]))

    def run(mod, opts):  # noqa: ANN001, ANN202
        return lambda: core.forward(mod, mats[:8], mats[8:], theta, u, x0, None, opts, save=False)

    return {"explicit": run(module, KernelOptions()), "newton": run(module, KernelOptions(explicit=False)),
            "trivial": run(trivial, KernelOptions())}


def split(name: str, x: np.ndarray, repeats: int) -> list[dict]:
    """ns/sample of the compiled core on ``name``'s WDF and DK maps (explicit root, Newton, trivial root)
    and of the whole ``model(x)`` call, CPU time, best of ``repeats``, every variant interleaved."""
    path = ROOT / "netlists" / f"{name}.cir"
    wdf, dk = load(path, "wdf", FS), load(path, "dk", FS)
    if wdf.root_path()[0] != "omega":
        return []
    xt = torch.as_tensor(x).unsqueeze(0)
    runs: dict[tuple[str, str], object] = {}
    with torch.no_grad():
        m, _, w = wdf.wdf()
        u = np.ascontiguousarray(wdf.source_values(m, xt).numpy())
        theta = m.theta.numpy()
        for k, f in _core_runs(wdf, [t.numpy() for t in w.as_tuple()], u, theta, wdf.kernel()).items():
            runs[("wdf", k)] = f
        m, d = dk.dk()
        for k, f in _core_runs(dk, [t.numpy() for t in d.as_tuple()], u, m.theta.numpy(),
                               codegen.dk_module(dk.topology.nonlinearity)).items():
            runs[("dk", k)] = f
    runs[("wdf", "call")] = lambda: _no_grad(wdf, xt)
    runs[("dk", "call")] = lambda: _no_grad(dk, xt)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats + 1):  # the first round compiles or loads the modules
        for k, f in runs.items():
            t0 = time.process_time()
            f()
            best[k] = min(best[k], time.process_time() - t0)
    rows = []
    for meth in ("wdf", "dk"):
        ns = {k: best[(meth, k)] / len(x) * 1e9 for k in ("explicit", "newton", "trivial", "call")}
        rows.append({"circuit": f"{name} ({meth.upper()})", **ns, "root": ns["explicit"] - ns["trivial"],
                     "outside": ns["call"] - ns["explicit"]})
    return rows


NV = NF = 0  # placeholders: the generated module's sizes, read by the trivial devices' hooks there


def fm_eval(P, p, z, theta, phi, dphi, g, M, work):  # noqa: ANN001, ANN201 - trivial devices' hook (generated code)
    # f = 1e-3 v[0], df/dv = 1e-3, and the residual and M = I - K J as DK's fm_eval (--stages)
    K = P[0]
    for k in range(NF):
        phi[k] = 1e-3 * z[0]
        dphi[k, 0] = 1e-3
    n2 = 0.0
    for i in range(NV):
        s = p[i] - z[i]
        for k in range(NF):
            s += K[i, k] * phi[k]
        g[i] = s
        n2 += s * s
        for j in range(NV):
            m = 1.0 if i == j else 0.0
            for k in range(NF):
                m -= K[i, k] * dphi[k, j]
            M[i, j] = m
    return n2


def fm_vjp(P, z, phi, theta, gphi, w, dP, dtheta, mq, want_theta, work):  # noqa: ANN001, ANN201 - (generated code)
    # DK's fm_vjp without the devices' parameter VJP (--stages)
    copy_into(mq, gphi, NF)  # noqa: F821 - the generated module's
    mtv(mq, P[0], w, NV, NF, True)  # noqa: F821
    outer_acc(dP[0], w, phi, NV, NF)  # noqa: F821


class _KernelClock:
    """CPU seconds spent in ``core.forward`` and ``core.backward`` while installed (``with``)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._saved: dict[str, object] = {}

    def _wrap(self, name: str):  # noqa: ANN202
        fn = self._saved[name]

        def timed_call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.process_time() - t0

        return timed_call

    def __enter__(self) -> _KernelClock:
        for name in ("forward", "backward"):
            self._saved[name] = getattr(core, name)
            setattr(core, name, self._wrap(name))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._saved.items():
            setattr(core, name, fn)


def _maps(model) -> list[torch.Tensor]:  # noqa: ANN001
    """The maps the core runs, built under autograd (those that carry a gradient)."""
    mats = model.wdf()[2] if model.method == "wdf" else model.dk()[1]
    return [t for t in mats.as_tuple() if t.requires_grad]


def stages(name: str, x: np.ndarray, repeats: int) -> list[dict]:
    """CPU milliseconds of each part of forward + backward (module docstring, ``--stages``) for the WDF and DK."""
    path = ROOT / "netlists" / f"{name}.cir"
    xt = torch.as_tensor(x).unsqueeze(0)
    models = {meth: load(path, meth, FS) for meth in ("wdf", "dk")}
    clock = _KernelClock()
    parts: dict[tuple[str, str], object] = {}
    for meth, model in models.items():
        def fwd(model=model) -> dict[str, float]:  # noqa: ANN001
            clock.spent.clear()
            t0 = time.process_time()
            _no_grad(model, xt)
            return {"fwd": time.process_time() - t0, "core fwd": clock.spent["forward"]}

        def fb(model=model) -> dict[str, float]:  # noqa: ANN001
            clock.spent.clear()
            t0 = time.process_time()
            model.zero_grad()
            (model(xt) ** 2).mean().backward()
            return {"fb": time.process_time() - t0, "core fwd (save)": clock.spent["forward"],
                    "core bwd": clock.spent["backward"]}

        def maps(model=model) -> dict[str, float]:  # noqa: ANN001
            t0 = time.process_time()
            model.zero_grad()
            ms = _maps(model)
            torch.autograd.backward(ms, [torch.ones_like(t) for t in ms])
            return {"maps": time.process_time() - t0}

        parts[(meth, "fwd")], parts[(meth, "fb")], parts[(meth, "maps")] = fwd, fb, maps
    y = torch.zeros(1, len(x), dtype=torch.float64, requires_grad=True)

    def loss() -> dict[str, float]:
        t0 = time.process_time()
        (y**2).mean().backward()
        return {"loss": time.process_time() - t0}

    parts[("-", "loss")] = loss
    wdf = models["wdf"]
    if wdf.root_path()[0] == "omega":  # the core's backward with trivial devices (module docstring)
        nl = wdf.topology.nonlinearity
        base = dk_step(nl, MAX_OMEGA_STEPS)
        trivial = codegen.step_module(nl.nb_source, StepFormulation(
            name="trivial_devices", hooks=(base.hooks[0], fm_eval, base.hooks[2], fm_vjp, *base.hooks[4:]),
            constants=base.constants))
        with torch.no_grad():
            m, _, w = wdf.wdf()
            u = np.ascontiguousarray(wdf.source_values(m, xt).numpy())
            th, mats = m.theta.numpy(), [t.numpy() for t in w.as_tuple()]
        opts = autograd.DEFAULT_OPTIONS
        x0 = np.zeros((1, mats[0].shape[0]))
        saved = core.forward(wdf.kernel(), mats[:8], mats[8:], th, u, x0, None, opts, save=True)
        gy = np.ones_like(saved.y)
        for label, mod in (("core bwd, own devices", wdf.kernel()), ("core bwd, trivial devices", trivial)):
            def bwd(mod=mod, label=label) -> dict[str, float]:  # noqa: ANN001
                t0 = time.process_time()
                core.backward(mod, mats[:8], mats[8:], th, u, saved, gy, None, opts, True, want_du=False,
                              want_mu=False)
                return {label: time.process_time() - t0}

            parts[("wdf", label)] = bwd
    best: dict[tuple[str, str], float] = {}
    with clock:
        for _ in range(repeats + 1):  # the first round compiles or loads the modules
            for (meth, _), f in parts.items():
                for k, v in f().items():
                    best[(meth, k)] = min(best.get((meth, k), float("inf")), v)
    rows = []
    for meth in ("wdf", "dk"):
        ms = {k: v * 1e3 for (mm, k), v in best.items() if mm == meth}
        ms["loss"] = best[("-", "loss")] * 1e3
        ms["rest"] = ms["fb"] - ms["core fwd (save)"] - ms["core bwd"] - ms["maps"] - ms["loss"]
        rows.append({"circuit": f"{name} ({meth.upper()})", **ms})
    return rows


def stages_table(rows: list[dict]) -> str:
    lines = ["| circuit | fwd | of it the core | fwd+bwd | fwd+bwd / fwd | core fwd, saving | core bwd | maps built + "
             "their bwd | loss + its bwd | rest | (core fwd + bwd) / fwd | core bwd: own / trivial devices |",
             "|" + "---|" * 12]
    for r in rows:
        dev = (f"{r['core bwd, own devices']:.2f} / {r['core bwd, trivial devices']:.2f}"
               if "core bwd, trivial devices" in r else "–")
        lines.append(f"| {r['circuit']} | {r['fwd']:.2f} | {r['core fwd']:.2f} | {r['fb']:.2f} "
                     f"| {r['fb'] / r['fwd']:.2f} "
                     f"| {r['core fwd (save)']:.2f} | {r['core bwd']:.2f} | {r['maps']:.2f} | {r['loss']:.2f} "
                     f"| {r['rest']:.2f} | {(r['core fwd (save)'] + r['core bwd']) / r['fwd']:.2f} | {dev} |")
    return "\n".join(lines)


def split_table(rows: list[dict]) -> str:
    lines = ["| circuit | model(x) | core, explicit root | core, Newton | core, trivial root | explicit root's share "
             "| outside the core |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['circuit']} | {r['call']:.1f} | {r['explicit']:.1f} | {r['newton']:.1f} | {r['trivial']:.1f} "
              f"| {r['root']:.1f} | {r['outside']:.1f} |" for r in rows]
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("| circuit | WDF root | WDF fwd ns/sample | WDF fwd+bwd ns/sample | fwd+bwd / fwd | DK fwd ns/sample "
            "| DK fwd+bwd ns/sample | DK fwd, Newton (explicit root off) | WDF speed-up vs DK | max abs(WDF-DK) / peak "
            "| chowdsp_wdf ns/sample (published) | ngspice ns/sample | WDF ESR vs ngspice |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['circuit']} | {r['root']} | {r['fwd']:.0f} | {r['fb']:.0f} | {r['fb_ratio']:.2f} "
            f"| {r['dk_fwd']:.0f} | {r['dk_fb']:.0f} | {_f(r['dk_newton'], '.0f')} | {r['vs_dk']:.2f}x "
            f"| {r['diff']:.1e} | {_f(r['chowdsp'], '.0f')} | {_f(r['spice'], '.0f')} | {_f(r['esr'], '.2e')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = arguments(__doc__, CIRCUITS, seconds=1.0, signal="guitar", repeats=5, spice_repeats=1)
    ap.add_argument("--split", action="store_true", help="time the core alone: explicit root, Newton, trivial root")
    ap.add_argument("--stages", action="store_true", help="split forward + backward into its parts (CPU ms)")
    args = ap.parse_args()
    if args.stages:
        torch.set_num_threads(1)
        x = guitar(args.seconds, FS) if args.signal == "guitar" else sine(args.seconds, FS, args.freq, args.amplitude)
        rows = [r for c in args.circuits for r in stages(c, x, args.repeats)]
        print(f"CPU ms per call, {args.seconds:g} s of {args.signal} at {FS} Hz, best of {args.repeats}, "
              f"load average {os.getloadavg()[0]:.1f}\n" + stages_table(rows))
        return
    if args.split:
        torch.set_num_threads(1)
        x = guitar(args.seconds, FS) if args.signal == "guitar" else sine(args.seconds, FS, args.freq, args.amplitude)
        rows = [r for c in args.circuits for r in split(c, x, args.repeats)]
        print(f"ns/sample (CPU time), load average {os.getloadavg()[0]:.1f}\n" + split_table(rows))
        return
    _, out = run_rows(args, bench, table)
    if args.write:
        load1 = os.getloadavg()[0]
        what = (f"a {args.freq:g} Hz sine of {args.amplitude:g} V peak" if args.signal == "sine"
                else "plucked notes at 0.3 V peak")
        text = (
            f"{SECTION} ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `python benchmarks/bench_wdf.py --write --seconds {args.seconds:g} --signal {args.signal}"
            f"{' --no-ngspice' if args.no_ngspice else ''}`  \n"
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread "
            f"(NUMBA_NUM_THREADS=1, torch threads 1), load average {load1:.1f} when it ran (shared with other "
            f"jobs; best of {args.repeats}); Python {platform.python_version()}, torch {torch.__version__}.  \n"
            f"Input: {args.seconds:g} s of {what} at {FS} Hz (48 kHz x 8); WDF and DK in the same process. "
            "chowdsp_wdf: its bake-off harness's published 1000 s of 48 kHz audio (diode clipper 2.04 s, "
            "Bassman tone stack 0.71 s; our FMV stack is the same topology), machine not stated.\n\n"
            + out + "\n\n"
            "The WDF issue's targets: diode clipper forward <= 40 ns/sample at 384 kHz on one thread, FMV tone "
            "stack <= 25 ns/sample, forward + backward <= 2.5x forward, WDF == DK within 1e-9 of the peak. "
            "Compare the DK columns with the DK section above (same code, measured on a quieter machine) for "
            "the load factor of this run.\n"
        )
        print(f"\nwrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
