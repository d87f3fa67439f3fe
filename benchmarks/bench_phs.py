"""Port-Hamiltonian (``--method phs``) against DK: forward speed in the same run, at 48 kHz x 8.

For each reference circuit, on one thread, interleaved so that machine load hits both alike:

- DK forward (compiled Newton per sample), no gradients, best of ``--repeats``;
- PH forward (the discrete-gradient step on the same compiled core), no gradients, best of ``--repeats``;
- PH forward with the core's Newton on every port of the step (``reduced_solve = False``: the damped storage's
  earlier values as Newton unknowns), the A/B of docs/phs.md's "Speed";
- PH forward with the reduced Newton alone (``explicit_solve = False``: no explicit diode-pair root and fixed point
  on the damped capacitors, kernel.py's ``ph_explicit``; the same model where the step has no such structure);
- PH forward with the per-sample energy report (stored energy, dissipated and port power);
- PH and DK forward + backward with every component value learnable (loss = mean(y^2)).

It prints ns/sample and the ratios PH / DK (issue 9's target: PH forward within 2x of DK's),
and the largest PH - DK difference (volts) as a check that both ran the same circuit.

    python benchmarks/bench_phs.py [--seconds 0.25] [--repeats 5] [--clock wall|cpu] [--circuits ...] [--write]
    python benchmarks/bench_phs.py --breakdown [--seconds 0.1] [--circuits ...]

``--breakdown`` (the nonlinear circuits) measures where PH's forward time goes, by CPU time: PH and DK forward
ns/sample, DK with its Newton at PH's step options (``explicit=False``: no explicit diode root) and its Newton
iterations a sample; one evaluation of the step nonlinearity (``nl_eval``, ns, a compiled loop of 2e6 calls)
against DK's; and the largest power-balance residual over the standard signals (4 ms at 384 kHz, 10 ms at
96 kHz) with PH's step options and with the core's defaults (DK's: reltol 1e-10, early accept), relative to the
record's largest power term.

``--clock cpu`` times each call by the thread's CPU time (``time.thread_time``) instead of the wall clock: on a
shared machine the wall clock also counts the time the process waits for a core, which at a load average of 8 on
2 cores moves single figures by up to 3x; the CPU time does not (cache and memory contention remain).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.report import write_section  # noqa: E402
from circuitsim.api import load  # noqa: E402
from circuitsim.netlist import NetlistError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CIRCUITS = ["fmv_tonestack", "ts808_tone", "diode_clipper", "ts808_clipping", "triode_common_cathode", "ts808",
            "bjt_common_emitter"]
FS = 48000 * 8
SECTION = "## Port-Hamiltonian against DK"


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _interleaved(fns: dict, repeats: int, clock=time.perf_counter) -> dict[str, float]:  # noqa: ANN001
    """Best seconds of each function by ``clock``, the functions taking turns in every round."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            best[k] = min(best[k], clock() - t0)
    return best


def bench(stem: str, seconds: float, repeats: int, clock: str = "wall") -> dict | str:
    path = ROOT / "netlists" / f"{stem}.cir"
    try:
        ph = load(path, "phs", FS)
    except NetlistError as exc:
        return str(exc).split(": ", 1)[-1]
    dk = load(path, "dk", FS)
    n = int(seconds * FS)
    t = np.arange(n) / FS
    x = torch.as_tensor(0.5 * np.sin(2 * np.pi * 1000.0 * t)).unsqueeze(0)
    ph_e = load(path, "phs", FS)
    ph_e.record_energy = True
    ph_full = load(path, "phs", FS)  # the core's Newton on every port of the step (docs/phs.md, "Speed")
    ph_full.reduced_solve = False
    ph_newton = load(path, "phs", FS)  # the reduced Newton without ph_explicit
    ph_newton.explicit_solve = False

    def fwd(model):
        def go():
            with torch.no_grad():
                return model(x)
        return go

    def fwd_bwd(model):
        def go():
            y = model(x)
            (y ** 2).mean().backward()
        return go

    y_ph, y_dk = fwd(ph)(), fwd(dk)()  # compile and warm up
    fwd(ph_e)()
    fwd(ph_full)()
    y_newton = fwd(ph_newton)()
    fwd_bwd(ph)()
    fwd_bwd(dk)()
    best = _interleaved({"dk": fwd(dk), "phs": fwd(ph), "phs_full": fwd(ph_full), "phs_newton": fwd(ph_newton),
                         "phs_energy": fwd(ph_e),
                         "dk_bwd": fwd_bwd(dk), "phs_bwd": fwd_bwd(ph)}, repeats, CLOCKS[clock])
    ns = {k: v / n * 1e9 for k, v in best.items()}
    residual = float(np.abs(ph_e.last_energy.residual_W).max())
    return {**ns, "diff": float((y_ph - y_dk).abs().max()), "residual": residual,
            "diff_newton": float((y_ph - y_newton).abs().max())}


def _nl_eval_ns(fn, theta: np.ndarray, n_ports: int, n_out: int, n_work: int, calls: int = 2_000_000) -> float:
    """ns per call of a generated ``nl_eval(v, theta, f, J, work)``, best of 5 loops of ``calls`` (CPU time)."""
    from numba import njit

    v0 = 0.3 + 0.01 * np.random.default_rng(1).standard_normal(n_ports)

    @njit
    def loop(v, theta, f, J, work, n):  # noqa: ANN001, ANN202
        s = 0.0
        for i in range(n):
            for k in range(v.shape[0]):  # every port moves: no part of the evaluation is hoisted out of the loop
                v[k] = v0[k] + 1e-9 * ((i + k) & 7)
            fn(v, theta, f, J, work)
            s += f[0]
        return s

    args = (v0.copy(), theta, np.zeros(n_out), np.zeros((n_out, n_ports)), np.zeros(max(n_work, 1)))
    loop(*args, 10)
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time()
        loop(*args, calls)
        best = min(best, time.thread_time() - t0)
    return best / calls * 1e9


def breakdown(stem: str, seconds: float, repeats: int) -> str:
    """One row of ``--breakdown`` (module docstring)."""
    from dataclasses import replace

    import circuitsim.kernels.autograd as ag
    from circuitsim.formulations.phs.kernel import ph_module, theta_with_options
    from circuitsim.kernels import codegen
    from circuitsim.kernels.autograd import NewtonError
    from circuitsim.kernels.core import KernelOptions
    from circuitsim.signals import standard_signals

    path = ROOT / "netlists" / f"{stem}.cir"
    ph, dk = load(path, "phs", FS), load(path, "dk", FS)
    ch = ph.storage.charges
    if ch is None:
        return f"| {stem} | linear: no step nonlinearity |"
    n = int(seconds * FS)
    x = torch.as_tensor(0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(n) / FS)).unsqueeze(0)
    opts = ph.step_options()
    newton = replace(opts, explicit=False)

    def fwd(model, options=None):  # noqa: ANN001, ANN202
        def go():
            old = ag.DEFAULT_OPTIONS
            ag.DEFAULT_OPTIONS = options or old  # DK reads it per call (formulations/dk.py)
            try:
                with torch.no_grad():
                    model(x)
            finally:
                ag.DEFAULT_OPTIONS = old
        return go

    fns = {"dk": fwd(dk), "phs": fwd(ph), "dk_newton": fwd(dk, newton)}
    for f in fns.values():
        f()
    best = _interleaved(fns, repeats, time.thread_time)
    fwd(dk, newton)()
    its = dk.diagnostics.newton_iterations / n
    m, _, _ = ph.ph_matrices()
    mod = ph_module(ch, m.theta.numel())
    theta = m.theta.detach().numpy()
    t_ph = _nl_eval_ns(mod.ph_nl_eval, theta_with_options(m.theta, opts).detach().numpy(), ch.step_nl.n_ports,
                       ch.step_nl.n_outputs, mod.N_WORK)
    nl = dk.topology.nonlinearity
    dmod = codegen.dk_module(nl)
    t_dk = _nl_eval_ns(dmod.nl_eval, theta, nl.n_ports, nl.n_outputs, dmod.N_WORK)
    worst = {}
    for label, o in (("ph", None), ("default", KernelOptions())):
        w: float | str = 0.0
        for fs, dur in ((float(FS), 0.004), (96000.0, 0.01)):
            model = load(path, "phs", fs)
            model.record_energy, model.newton_options = True, o
            for name, sig in standard_signals(fs, dur).items():
                try:
                    with torch.no_grad():
                        model(torch.as_tensor(sig))
                except NewtonError as exc:
                    w = f"Newton fails ({name}, {fs / 1000:g} kHz, sample {exc.sample})"
                    break
                r = model.last_energy
                largest = max(np.abs(np.diff(r.stored_J) * fs).max(), np.abs(r.dissipated_W).max(),
                              np.abs(r.ports_W).max())
                w = max(w, float(np.abs(r.residual_W).max() / largest))
            if isinstance(w, str):
                break
        worst[label] = w if isinstance(w, str) else f"{w:.1e}"
    ns = {k: v / n * 1e9 for k, v in best.items()}
    return (f"| {stem} | {ns['dk']:.0f} | {ns['phs']:.0f} | {ns['phs'] / ns['dk']:.2f} | {ns['dk_newton']:.0f} "
            f"({its:.2f}) | {ns['phs'] / ns['dk_newton']:.2f} | {t_ph:.1f} | {t_dk:.1f} | {worst['ph']} | "
            f"{worst['default']} |")


BREAKDOWN_HEAD = ("| circuit | DK fwd ns/sample | PH fwd ns/sample | PH / DK | DK Newton at PH's options ns/sample "
                  "(iterations) | PH / that | PH step nl_eval ns | DK nl_eval ns | balance, PH's options | "
                  "balance, core defaults |\n|---|---|---|---|---|---|---|---|---|---|")


def table(rows: dict[str, dict | str]) -> str:
    lines = ["| circuit | DK fwd ns/sample | PH fwd ns/sample | PH / DK fwd | PH full Newton / PH fwd | "
             "PH reduced Newton alone / PH fwd (max abs difference, V) | PH fwd + energy report ns/sample | "
             "DK fwd+bwd ns/sample | PH fwd+bwd ns/sample | PH / DK fwd+bwd | max abs PH - DK (V) | "
             "largest energy residual (W) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stem, r in rows.items():
        if isinstance(r, str):
            lines.append(f"| {stem} | | | refused: {r} | | | | | | | | |")
            continue
        lines.append(f"| {stem} | {r['dk']:.0f} | {r['phs']:.0f} | {r['phs'] / r['dk']:.2f} | "
                     f"{r['phs_full'] / r['phs']:.2f} | {r['phs_newton'] / r['phs']:.2f} ({r['diff_newton']:.1e}) | "
                     f"{r['phs_energy']:.0f} | "
                     f"{r['dk_bwd']:.0f} | {r['phs_bwd']:.0f} | {r['phs_bwd'] / r['dk_bwd']:.2f} | {r['diff']:.2e} | "
                     f"{r['residual']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.25, help="seconds of audio at 48 kHz x 8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: the thread's CPU time (a shared machine's waits left out)")
    ap.add_argument("--circuits", nargs="*", default=CIRCUITS)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md's section")
    ap.add_argument("--breakdown", action="store_true", help="where PH's forward time goes (module docstring)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.breakdown:
        print(BREAKDOWN_HEAD)
        for stem in args.circuits:
            print(breakdown(stem, args.seconds, args.repeats), flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        return
    rows = {stem: bench(stem, args.seconds, args.repeats, args.clock) for stem in args.circuits}
    text = table(rows)
    print(f"clock: {args.clock}; load average at the end {os.getloadavg()[0]:.1f}")
    print(text)
    if args.write:
        load_avg = os.getloadavg()[0]
        cmd = "python benchmarks/bench_phs.py --write"
        cmd += f" --seconds {args.seconds:g}" if args.seconds != 0.25 else ""
        cmd += f" --clock {args.clock}" if args.clock != "wall" else ""
        write_section(SECTION,
            f"{SECTION} ({time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `{cmd}`  \n"
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, one thread (NUMBA_NUM_THREADS=1, "
            "torch threads 1), "
            f"load average {load_avg:.1f} when it ran (shared: best of {args.repeats}, the methods interleaved in each "
            f"round); Python {platform.python_version()}, torch {torch.__version__}.  \n"
            f"Input: a 1000 Hz sine of 0.5 V peak, {args.seconds:g} s at {FS} Hz (48 kHz x 8), one batch item. "
            "Backward: every component value learnable, loss = mean(y^2). Issue 9's target: PH forward within 2x of "
            "DK's.\n\n" + text + "\n\n"
            "Both run the same compiled core (`run_state_space`). PH's recursion carries a few more states than "
            "DK's (the previous input sample and the DC point's port voltages and device outputs, for the "
            "midpoint input and the deviation form of docs/phs.md), which is the whole difference on the linear "
            "stages (tens of ns per sample); the energy report adds the step's node voltages and device outputs to "
            "the kernel's output and the power sums in torch. On bjt_common_emitter the junction charges are "
            "nonlinear storage (docs/phs.md): the step's Newton also solves the two junction voltages at the "
            "step's end and evaluates their discrete gradients.\n")


if __name__ == "__main__":
    main()
