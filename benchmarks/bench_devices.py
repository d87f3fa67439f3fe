"""Generated device code against the hand-written kernels it replaced, in one process (issue 7, part 2).

For each circuit, the DK model is built once; its nonlinearity runs with the device code generated
from the device programs, and with the nonlinearity source the revision ``--base`` (default
3152f26, the last with hand-written ``kernels/devices.py``) generates for the same circuit, whose
``diode_nb`` / ``bjt_nb`` / ``*_vjp_nb`` are loaded from that revision's file.  Both run in the same
loops of this checkout, interleaved, and are timed in CPU time of this process (best of N), so that
other jobs on a shared machine disturb both alike.

    python benchmarks/bench_devices.py [--base REV] [--repeats 9] [circuit ...]

``--eval REV``: the device evaluation alone instead, this checkout's generated code against the code revision
``REV`` generates (both from the device programs): ns per ``nl_eval`` (all device outputs and the Jacobian) over
4096 port-voltage points around the circuit's operating point (port voltages within 1 V of 0 swept by
+-50 mV, the others by +-1 V), each evaluation waiting for the previous one's outputs as in a Newton loop,
CPU time, best of ``--repeats``, interleaved; and the largest relative difference of the outputs.

    python benchmarks/bench_devices.py --eval 29592a4 [--repeats 7] [circuit ...]

``--sine``: the input of ``benchmarks/bench_dk.py --signal sine`` instead (1 kHz, 0.5 V peak, 0.5 s), the
issue-12 table's, with ``--base REV`` any revision whose generated device code to run in the same loops
(``--forward-only``: no backward timing).

    python benchmarks/bench_devices.py --base c9bf243 --sine --forward-only bjt_common_emitter

``--predictors``: where the Newton time of a DK circuit goes on the ``--sine`` input, measured, not timed: the
kernel's mean iterations per sample with each of its predictors (``KernelOptions.predictor``; Newton on every
sample, ``explicit=False``, where the circuit has an explicit root), and, from the
converged trajectory (port voltages z[n], states, p[n] = G x[n] + H u[n], M[n] = I - K J(z[n])), how far each
predictor lands from z[n] in units of the tolerance (s = max_i |z_pred - z|_i / (reltol |z_i| + abstol)), against the
radius 1 / sqrt(c) within which the stop rule accepts a sample after one Newton step (c: the quadratic constant the
kernel measured, ``core.newton_plain``): tangent z[n-1] + M[n-1]^-1 (p[n] - p[n-1]), central
z[n-2] + M[n-1]^-1 (p[n] - p[n-2]), linear 2 z[n-1] - z[n-2], and, as a reference no predictor can reach, the
trapezoidal tangent with the unknown M[n], z[n-1] + ((M[n-1] + M[n]) / 2)^-1 (p[n] - p[n-1]).

    python benchmarks/bench_devices.py --predictors bjt_common_emitter
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from circuitsim.api import load  # noqa: E402

FS = 384000
_OLD_SOURCES = f"""
import json, sys
from circuitsim.api import load
out = {{n: load(f"netlists/{{n}}.cir", "dk", {FS}).topology.nonlinearity.nb_source for n in sys.argv[1:]}}
print(json.dumps(out))
"""


_EVAL_LOOPS = """

@njit(cache=True)
def bench_latency(vs, theta, reps):
    # nl_eval over the points, each one's input offset by 0 x the previous outputs (a dependency, no change)
    f = np.zeros(NF)
    J = np.zeros((NF, NV))
    work = np.zeros(N_WORK)
    v = np.zeros(NV)
    dep = 0.0
    for r in range(reps):
        for n in range(vs.shape[0]):
            for i in range(NV):
                v[i] = vs[n, i] + dep
            nl_eval(v, theta, f, J, work)
            s = 0.0
            for k in range(NF):
                s += f[k]
                for j in range(NV):
                    s += J[k, j]
            dep = 0.0 * s
    return dep


@njit(cache=True)
def outputs(vs, theta, out):
    f = np.zeros(NF)
    J = np.zeros((NF, NV))
    work = np.zeros(N_WORK)
    for n in range(vs.shape[0]):
        nl_eval(vs[n], theta, f, J, work)
        for k in range(NF):
            out[n, k] = f[k]
            for j in range(NV):
                out[n, NF + k * NV + j] = J[k, j]
"""


def device_eval(base: str, circuits: list[str], repeats: int) -> None:
    """ns per nl_eval of this checkout's generated device code and of revision ``base``'s (module doc)."""
    from circuitsim.kernels.nonlinearity import load_generated

    with tempfile.TemporaryDirectory() as td:
        tar = subprocess.run(["git", "archive", base], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", td], input=tar, check=True)
        env = dict(os.environ, PYTHONPATH=td)
        old = json.loads(subprocess.run([sys.executable, "-c", _OLD_SOURCES, *circuits], cwd=td, env=env,
                                        capture_output=True, text=True, check=True).stdout)
    reps, npts = 20, 4096
    print(f"CPU ns per nl_eval (latency-chained), best of {repeats}: this checkout against {base}")
    for name in circuits:
        m = load(ROOT / "netlists" / f"{name}.cir", "dk", FS)
        nl = m.topology.nonlinearity
        mods = {"this": load_generated(nl.nb_source + _EVAL_LOOPS), base: load_generated(old[name] + _EVAL_LOOPS)}
        theta = np.ascontiguousarray(m.dk()[0].theta.detach().numpy())
        with torch.no_grad():  # the operating point's port voltages (the warm start after a silent run)
            _, st = m._simulate(torch.zeros(1, 2000, dtype=torch.float64), None)
        v0 = st.v.numpy().reshape(-1)[: nl.n_ports]
        t = np.arange(npts) / npts
        sweep = [v + (0.05 if abs(v) < 1 else 1.0) * np.sin(2 * np.pi * (3 + i) * t) for i, v in enumerate(v0)]
        vs = np.ascontiguousarray(np.stack(sweep, 1))
        outs, best = {}, {k: np.inf for k in mods}
        for k, mod in mods.items():
            outs[k] = np.zeros((npts, nl.n_outputs * (1 + nl.n_ports)))
            mod.outputs(vs, theta, outs[k])
            mod.bench_latency(vs[:10], theta, 1)  # compile
        for _ in range(repeats):
            for k, mod in mods.items():
                t0 = time.process_time()
                mod.bench_latency(vs, theta, reps)
                best[k] = min(best[k], time.process_time() - t0)
        ref = outs[base]
        diff = float((np.abs(outs["this"] - ref) / np.maximum(np.abs(ref), 1e-300)).max())
        ns = {k: v * 1e9 / (reps * npts) for k, v in best.items()}
        print(f"{name}: this {ns['this']:.1f} ns, {base} {ns[base]:.1f} ns, ratio {ns['this'] / ns[base]:.3f}; "
              f"max relative difference of f and J {diff:.1e}")


def predictor_errors(circuits: list[str]) -> None:
    """Iterations per sample and predictor errors of each circuit's DK kernel on the --sine input (module doc)."""
    from benchmarks.bench_dk import sine
    from circuitsim.kernels import core

    x = torch.as_tensor(sine(0.5, FS, 1000.0, 0.5)).unsqueeze(0)
    for name in circuits:
        m = load(ROOT / "netlists" / f"{name}.cir", "dk", FS)
        calls, real = [], core.forward

        def spy(*a, _calls=calls, _real=real, **k):  # noqa: ANN002, ANN003, ANN202 (the model's kernel calls)
            _calls.append(a)
            return _real(*a, **k)

        core.forward = spy
        try:
            with torch.no_grad():
                m(x)
        finally:
            core.forward = real
        module, lin, P, theta, u, x0, zi, opts = max(calls, key=lambda a: a[4].shape[1])[:8]
        opts = dataclasses.replace(opts, explicit=False)  # Newton on every sample, explicit root or not
        T = u.shape[1]
        if module.NZ == 0:
            print(f"{name}: no Newton unknowns")
            continue
        iters = {}
        for pred in core.PREDICTORS:
            st = real(module, lin, P, theta, u, x0, zi, dataclasses.replace(opts, predictor=pred), False).stats[0]
            iters[pred] = st[core.ST_ITER] / T
        res = real(module, lin, P, theta, u, x0, zi, dataclasses.replace(opts, state_budget=1 << 40), True)
        z, xs, c = res.v[0], res.checkpoints[0], res.warm[0, core.W_EST, 0]
        G, H = lin[6], lin[7]
        p = xs @ G.T + u[0] @ H.T
        _, J = m.topology.nonlinearity.eval_batch(z, theta)
        M = np.eye(z.shape[1]) - np.einsum("ik,nkj->nij", P[0], J)  # DK: M = I - K J (kernels/statespace.py)
        n = np.arange(2, T)

        def solve(Mn, b):  # noqa: ANN001, ANN202
            return np.linalg.solve(Mn, b[..., None])[..., 0]

        preds = {
            "tangent": z[n - 1] + solve(M[n - 1], p[n] - p[n - 1]),
            "central": z[n - 2] + solve(M[n - 1], p[n] - p[n - 2]),
            "linear": 2 * z[n - 1] - z[n - 2],
            "trapezoid, M[n] known": z[n - 1] + solve(0.5 * (M[n - 1] + M[n]), p[n] - p[n - 1]),
        }
        tol = opts.reltol * np.abs(z[n]) + opts.abstol
        radius = 1.0 / math.sqrt(c) if c > 0 else 1.0
        kernel = "  ".join(f"{k} {v:.3f}" for k, v in iters.items())
        print(f"{name}: {T} samples; kernel Newton it/sample: {kernel}; one-step radius 1/sqrt(c) = {radius:.3g} "
              f"tolerances (c = {c:.3g})")
        for k, zp in preds.items():
            s = (np.abs(zp - z[n]) / tol).max(1)
            q = np.quantile(s, [0.5, 0.9])
            print(f"    {k:22s} within one step {np.mean(s <= radius):6.1%}  within tolerance {np.mean(s <= 1):6.1%}  "
                  f"median s {q[0]:.3g}  90 % {q[1]:.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="3152f26")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--eval", metavar="REV", help="the device evaluation alone, against revision REV's generated code")
    ap.add_argument("--sine", action="store_true", help="bench_dk.py's sine input (1 kHz, 0.5 V, 0.5 s)")
    ap.add_argument("--forward-only", action="store_true", help="no forward + backward timing")
    ap.add_argument("--predictors", action="store_true", help="Newton iterations and predictor errors (module doc)")
    ap.add_argument("circuits", nargs="*", default=["diode_clipper", "bjt_common_emitter", "triode_common_cathode"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.eval:
        device_eval(args.eval, args.circuits, args.repeats)
        return
    if args.predictors:
        predictor_errors(args.circuits)
        return
    t = np.arange(FS) / FS
    x = 0.3 * np.sin(2 * np.pi * 110 * t) * np.exp(-2 * t) + 0.05 * np.sin(2 * np.pi * 440 * t)  # 1 s
    if args.sine:
        from benchmarks.bench_dk import sine

        x = sine(0.5, FS, 1000.0, 0.5)
    xt = torch.as_tensor(x).unsqueeze(0)
    with tempfile.TemporaryDirectory() as td:
        tar = subprocess.run(["git", "archive", args.base], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", td], input=tar, check=True)
        env = dict(os.environ, PYTHONPATH=td)
        old = json.loads(subprocess.run([sys.executable, "-c", _OLD_SOURCES, *args.circuits], cwd=td, env=env,
                                        capture_output=True, text=True, check=True).stdout)
        (Path(td) / "old_devices.py").write_text((Path(td) / "circuitsim/kernels/devices.py").read_text())
        sys.path.insert(0, td)
        print(f"CPU ns/sample, best of {args.repeats} (forward)"
              + ("" if args.forward_only else f" / {max(1, args.repeats // 2)} (forward + backward)"))
        for name in args.circuits:
            m = load(ROOT / "netlists" / f"{name}.cir", "dk", FS)
            nl = m.topology.nonlinearity
            src = old[name].replace("from circuitsim.kernels import devices as _devices",
                                    "import old_devices as _devices")  # the base revision's hand-written kernels
            hand = dataclasses.replace(nl, nb_source=src, _module=None).module
            variants = {"this": nl.module, args.base: hand}
            best = {k: [np.inf, np.inf] for k in variants}
            outs = {}
            for r in range(args.repeats + 1):
                for k, mod in variants.items():
                    nl._module = mod
                    t0 = time.process_time()
                    with torch.no_grad():
                        outs[k] = m(xt if r else xt[:, :2000])  # r = 0: compile / warm up
                    if not r:  # compile the backward too
                        (m(xt[:, :2000]) ** 2).mean().backward()
                        continue
                    best[k][0] = min(best[k][0], time.process_time() - t0)
                    if 0 < r <= max(1, args.repeats // 2) and not args.forward_only:
                        m.zero_grad()
                        t0 = time.process_time()
                        (m(xt) ** 2).mean().backward()
                        best[k][1] = min(best[k][1], time.process_time() - t0)
            diff = float((outs["this"] - outs[args.base]).abs().max() / outs[args.base].abs().max())
            n = xt.shape[1]
            nb = 1 if args.forward_only else 2  # columns: forward (/ forward + backward)
            cols = "  ".join(f"{k} " + " / ".join(f"{t * 1e9 / n:.1f}" for t in v[:nb]) for k, v in best.items())
            ratio = " / ".join(f"{best['this'][i] / best[args.base][i]:.3f}" for i in range(nb))
            print(f"{name}: {cols}  ratio {ratio}  max rel output difference {diff:.1e}")


if __name__ == "__main__":
    main()
