"""Micro-benchmark of the compiled state-space kernel on a synthetic diode clipper.

The clipper (Yeh, Abel & Smith, DAFx-07): series R = 2.2 kOhm from the input to node
``out``, C = 10 nF from ``out`` to ground, anti-parallel 1N914 diodes (IS = 2.52 nA,
N = 1.752) from ``out`` to ground.  Trapezoidal rule at fs, state ``x`` = the capacitor's
companion history current (amperes), one port ``v`` = V(out), ``f`` = the two diode currents
(the second diode sees ``-v``: one port, two DiodeBlocks).  With ``Gs = 1/R + 2C/T``::

    KCL at out:  (u - v)/R = 2C/T v - x + i1(v) - i2(-v)
    v = (x + u/R)/Gs + (-i1 + i2)/Gs       ->  G = 1/Gs, H = 1/(R Gs), K = [-1/Gs, 1/Gs]
    y = v                                  ->  D = G, E = H, F = K
    x' = 4C/T v - x                        ->  A = 4C/T G - 1, B = 4C/T H, C = 4C/T K

Run ``python benchmarks/bench_kernel.py`` (``--help`` for options).  Reports ns/sample for the
forward pass (inference and with the trajectory saved), the backward pass and forward +
backward through ``torch.autograd``, all on one thread; the bytes saved per sample for
backward; and the compile time cold (fresh cache directory) and cached (a new process).
Forward + backward is timed twice: with only the matrices learnable, and with the diodes' IS
and N learnable too (the parameter gradient ``sum mu . df/dtheta`` is then accumulated in the
compiled backward loop by the generated ``nl_vjp_theta``; autograd takes it from the theta slots
to IS and N).  The ratios are to the forward inference pass; the acceptance target is <= 3.

``--netlists [NAME ...]`` instead times the compiled core alone (no torch) on the reference netlists:
DK forward, forward with the trajectory saved, and the backward kernel, in CPU time (best of
``--repeats``), with the sizes the generated module is compiled for.

``--maps`` instead times the two loop orders of the core's products with the linear maps
(``linalg.tmv3``: a dot product a row, or passes over the rows of the transposes) on random maps of 1 to 59
states: the measurement behind ``linalg.AXPY_MACS``.

``--baseline DIR`` instead compares the DK kernels of a checkout from before the compiled core (its
``circuitsim/kernels/statespace.py`` with ``kernel_source()``, e.g. 3152f26, compiled for the same
nonlinearities) with the current ones on the four reference circuits of ``bench_dk.py``, in one
process, alternating old and new: forward inference and backward kernel ns/sample and the largest
relative difference of their outputs and gradients (issue 7: the compiled core must keep DK's speed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

R_SERIES = 2.2e3  # ohms
C_SHUNT = 10e-9  # farads
DIODE = {"IS": 2.52e-9, "N": 1.752}  # 1N914 (Yeh, Abel & Smith, DAFx-07)


def clipper_matrices(fs: float, r: float = R_SERIES, c: float = C_SHUNT) -> tuple[np.ndarray, ...]:
    """The nine DK matrices of the clipper at sample rate ``fs`` hertz (see the module doc)."""
    t = 1.0 / fs
    gs = 1.0 / r + 2.0 * c / t
    k4 = 4.0 * c / t
    G = np.array([[1.0 / gs]])
    H = np.array([[1.0 / (r * gs)]])
    K = np.array([[-1.0 / gs, 1.0 / gs]])
    return (k4 * G - 1.0, k4 * H, k4 * K, G.copy(), H.copy(), K.copy(), G, H, K)


def clipper_nonlinearity():
    """Two DiodeBlocks on one port (the second reversed) and their theta (2 x 31 entries)."""
    from circuitsim.kernels.devices import diode_params_vector
    from circuitsim.kernels.nonlinearity import DiodeBlock, build_nonlinearity

    pv = diode_params_vector(DIODE)
    nl = build_nonlinearity(
        [
            DiodeBlock(port=0, out_i=0, theta=0, sign=1.0),
            DiodeBlock(port=0, out_i=1, theta=pv.size, sign=-1.0),
        ],
        1,
        2,
    )
    return nl, np.concatenate([pv, pv])


def _input(fs: float, seconds: float, amplitude: float, batch: int) -> np.ndarray:
    t = np.arange(int(fs * seconds)) / fs
    # a decaying 110 Hz "guitar note" with harmonics plus a 1 kHz tone, volts
    sig = (
        np.sin(2 * np.pi * 110 * t)
        + 0.5 * np.sin(2 * np.pi * 330 * t + 0.3)
        + 0.3 * np.sin(2 * np.pi * 1000 * t)
    )
    sig = amplitude * sig * np.exp(-t / max(seconds, 1e-9))
    return np.repeat(sig[None, :, None], batch, axis=0)


def compile_probe() -> dict[str, float]:
    """Time building and first-calling the kernels (run in a subprocess; see --compile)."""
    t0 = time.perf_counter()
    from circuitsim.kernels import statespace as ss

    t_import = time.perf_counter() - t0
    nl, theta = clipper_nonlinearity()
    mats = clipper_matrices(384e3)
    u = _input(384e3, 0.001, 1.0, 1)
    t1 = time.perf_counter()
    res = ss.forward(nl, mats, theta, u, np.zeros((1, 1)), options=ss.KernelOptions(threads=1))
    t2 = time.perf_counter()
    ss.backward(
        nl, mats, theta, u, res.v, res.checkpoints, np.ones_like(res.y), options=ss.KernelOptions(threads=1)
    )
    t3 = time.perf_counter()
    return {"import_s": t_import, "forward_first_call_s": t2 - t1, "backward_first_call_s": t3 - t2}


def _probe_in_subprocess(cache: str) -> dict[str, float]:
    env = dict(os.environ, CIRCUITSIM_CACHE=cache)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--compile-probe"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class _Baseline:
    """The compiled DK module of an earlier checkout's ``kernels/statespace.py`` for ``nl``, with the
    attributes its ``forward``/``backward`` read."""

    def __init__(self, old_ss, nl):
        from circuitsim.kernels.nonlinearity import load_generated

        self.module = load_generated(nl.nb_source + old_ss.kernel_source(), [Path(old_ss.__file__)])
        self.n_ports, self.n_outputs, self.n_theta = nl.n_ports, nl.n_outputs, nl.n_theta


def _ab_circuit(old_ss, name: str, x: torch.Tensor, rounds: int) -> str:
    """One table row of :func:`baseline_ab`."""
    from functools import partial

    from benchmarks.bench_dk import FS
    from circuitsim.api import load
    from circuitsim.kernels import statespace as ss

    model = load(Path(__file__).resolve().parents[1] / "netlists" / f"{name}.cir", "dk", FS)
    with torch.no_grad():
        m, d = model.dk()
        u = model.source_values(m, x).numpy()[:, 1:]
    mats, theta = tuple(t.numpy() for t in d.as_tuple()), m.theta.numpy()
    x0 = np.zeros((1, mats[0].shape[0]))
    nl = model.topology.nonlinearity
    old = _Baseline(old_ss, nl)
    o_opt, n_opt = old_ss.KernelOptions(threads=1), ss.KernelOptions(threads=1)
    ro = old_ss.forward(old, mats, theta, u, x0, None, o_opt, save=True)
    rn = ss.forward(nl, mats, theta, u, x0, None, n_opt, save=True)
    gy = np.ones_like(ro.y)
    runs = {
        "fo": partial(old_ss.forward, old, mats, theta, u, x0, None, o_opt, save=False),
        "fn": partial(ss.forward, nl, mats, theta, u, x0, None, n_opt, save=False),
        "bo": partial(old_ss.backward, old, mats, theta, u, ro.v, ro.checkpoints, gy, None, o_opt, True),
        "bn": partial(ss.backward, nl, mats, theta, u, rn.v, rn.checkpoints, gy, None, n_opt, True),
    }
    go, gn = runs["bo"](), runs["bn"]()
    diff = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300))
               for a, b in zip((ro.y, *go.dmats, go.dtheta), (rn.y, *gn.dmats, gn.dtheta)))
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for k, fn in runs.items():
            best[k] = min(best[k], _best(fn, 3))
    ns = {k: 1e9 * v / u.shape[1] for k, v in best.items()}
    return (f"| {name} | {ns['fo']:.1f} | {ns['fn']:.1f} | {ns['fn'] / ns['fo'] - 1:+.1%} | {ns['bo']:.1f} "
            f"| {ns['bn']:.1f} | {ns['bn'] / ns['bo'] - 1:+.1%} | {diff:.1e} |")


def netlist_kernels(circuits: list[str], seconds: float, repeats: int) -> None:
    """The compiled core alone on the reference netlists (DK): forward without and with the saved
    trajectory, and the backward kernel (dL/dy = 1, every matrix and theta), in CPU seconds (best of
    ``repeats``: on a shared machine CPU time is steadier than the wall clock), ns/sample on a 0.5 V,
    1 kHz sine at 384 kHz; with the sizes the generated module is compiled for (Nx, Nu, Ny, Nz, Nphi).
    No torch: what the linear maps, the root solve and the adjoint cost, without the autograd around them."""
    from functools import partial

    from benchmarks.bench_dk import FS
    from circuitsim.api import load
    from circuitsim.kernels import statespace as ss

    def cpu_best(fn) -> float:  # noqa: ANN001
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
        return best

    t = np.arange(int(seconds * FS)) / FS
    x = torch.as_tensor(0.5 * np.sin(2 * np.pi * 1000.0 * t)).unsqueeze(0)
    print("| circuit | Nx, Nu, Ny, Nz, Nphi | fwd | fwd (saved) | bwd | (fwd saved + bwd) / fwd |")
    print("|---|---|---|---|---|---|")
    for name in circuits:
        model = load(Path(__file__).resolve().parents[1] / "netlists" / f"{name}.cir", "dk", FS)
        with torch.no_grad():
            m, d = model.dk()
            u = model.source_values(m, x).numpy()[:, 1:]
        mats, theta = tuple(np.ascontiguousarray(t.numpy()) for t in d.as_tuple()), m.theta.numpy()
        x0 = np.zeros((1, mats[0].shape[0]))
        nl = model.topology.nonlinearity
        opt = ss.KernelOptions(threads=1)
        saved = ss.forward(nl, mats, theta, u, x0, None, opt, save=True)  # compile / load, and the trajectory
        gy = np.ones_like(saved.y)
        ss.backward(nl, mats, theta, u, saved.v, saved.checkpoints, gy, None, opt, True)
        n = u.shape[1]
        tf = cpu_best(partial(ss.forward, nl, mats, theta, u, x0, None, opt, save=False))
        ts = cpu_best(partial(ss.forward, nl, mats, theta, u, x0, None, opt, save=True))
        tb = cpu_best(partial(ss.backward, nl, mats, theta, u, saved.v, saved.checkpoints, gy, None, opt, True))
        sizes = (mats[0].shape[0], mats[1].shape[1], mats[3].shape[0], mats[6].shape[0], mats[2].shape[1])
        print(f"| {name} | {', '.join(map(str, sizes))} | {1e9 * tf / n:.1f} | {1e9 * ts / n:.1f} | {1e9 * tb / n:.1f} "
              f"| {(ts + tb) / tf:.2f} |", flush=True)


_MAPS_LOOP = """
@njit
def run(At, Bt, Ct, Dt, Et, Ft, u, y, x, xn, phi):
    # forward_segment's linear maps alone: y = D x + E u + F phi, x' = A x + B u + C phi (phi: a stand-in)
    for n in range(u.shape[0]):
        un = u[n]
        for k in range(NPHI):
            phi[k] = 0.5 * x[k % NX]
        tmv3(y[n], Dt, x, NX, Et, un, NU, Ft, phi, NPHI, NY)
        tmv3(xn, At, x, NX, Bt, un, NU, Ct, phi, NPHI, NX)
        for i in range(NX):
            x[i] = xn[i]
"""


def _maps_once(run, mt, u, sizes) -> tuple[float, np.ndarray]:  # noqa: ANN001
    nx, nphi, ny = sizes
    y = np.zeros((u.shape[0], ny))
    t0 = time.process_time()
    run(*mt, u, y, np.zeros(nx), np.zeros(nx), np.zeros(nphi))
    return time.process_time() - t0, y


def linear_maps(sizes: list[tuple[int, int, int, int]], samples: int, repeats: int) -> None:
    """``linalg.tmv3`` in its two loop orders (dot products a row; passes over the rows of the transposes,
    which vectorise) on the forward's maps of random stable systems of sizes ``(Nx, Nu, Nphi, Ny)``, the sizes
    compile-time constants as in the generated module: ns/sample (CPU time, best of ``repeats``), and whether
    both orders give the same output bits (they sum in the same order)."""
    import inspect
    from functools import partial

    from circuitsim.kernels import linalg

    print("| Nx, Nu, Nphi, Ny | dot products | row passes | dot / rows | same bits |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for nx, nu, nphi, ny in sizes:
        A = rng.standard_normal((nx, nx))
        A *= 0.9 / max(abs(np.linalg.eigvals(A)))
        mats = (A, rng.standard_normal((nx, nu)), 0.01 * rng.standard_normal((nx, nphi)),
                rng.standard_normal((ny, nx)), rng.standard_normal((ny, nu)), rng.standard_normal((ny, nphi)))
        mt = [np.ascontiguousarray(m.T) for m in mats]
        u = rng.standard_normal((samples, nu))
        out = {}
        for form, axpy_macs in (("dot", 1 << 60), ("rows", -1)):
            ns: dict = {}
            src = (f"from numba import njit\nNX, NU, NPHI, NY, AXPY_MACS = {nx}, {nu}, {nphi}, {ny}, {axpy_macs}\n"
                   + "".join(f"@njit(inline='always')\n{inspect.getsource(getattr(linalg, f))}"
                             for f in ("tmv3_takes_dots", "tmv3_dots", "tmv3_axpy", "tmv3")) + _MAPS_LOOP)
            exec(compile(src, f"<tmv3 {form}>", "exec"), ns)

            once = partial(_maps_once, ns["run"], mt, u, (nx, nphi, ny))
            once()
            best = min(once()[0] for _ in range(repeats))
            out[form] = (1e9 * best / samples, once()[1])
        same = bool(np.array_equal(out["dot"][1], out["rows"][1]))
        print(f"| {nx}, {nu}, {nphi}, {ny} | {out['dot'][0]:.1f} | {out['rows'][0]:.1f} "
              f"| {out['dot'][0] / out['rows'][0]:.2f} | {same} |", flush=True)


def baseline_ab(base: str, circuits: list[str], seconds: float, rounds: int) -> None:
    """Time the DK kernels of the checkout ``base`` (before the compiled core) against the current ones.

    One process, the same matrices and input (``bench_dk``'s plucked notes at 384 kHz), old and new
    alternating ``rounds`` times (best of 3 each): forward inference and backward kernel ns/sample,
    and the largest relative difference of their outputs and gradients.
    """
    import importlib.util

    from benchmarks.bench_dk import FS, guitar

    path = Path(base) / "circuitsim" / "kernels" / "statespace.py"
    spec = importlib.util.spec_from_file_location("baseline_statespace", path)
    old_ss = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old_ss
    spec.loader.exec_module(old_ss)
    if not hasattr(old_ss, "kernel_source"):
        sys.exit(f"--baseline: {path} has no kernel_source(): give a checkout from before the compiled core "
                 "(issue 7), e.g. 3152f26")
    x = torch.as_tensor(guitar(seconds, FS)).unsqueeze(0)
    print("| circuit | fwd before | fwd after | change | bwd before | bwd after | change | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in circuits:
        print(_ab_circuit(old_ss, name, x, rounds), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fs", type=float, default=384e3, help="sample rate, hertz")
    ap.add_argument("--seconds", type=float, default=1.0, help="signal length, seconds")
    ap.add_argument("--amplitude", type=float, default=4.0, help="input peak, volts")
    ap.add_argument("--predictor", default="tangent", choices=["previous", "linear", "tangent"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--compile", action="store_true", help="also time cold and cached compilation (subprocesses)"
    )
    ap.add_argument("--compile-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--baseline", metavar="DIR", help="a checkout from before the compiled core (e.g. "
                    "`git archive 3152f26 circuitsim | tar -x -C DIR`): time its DK kernels against "
                    "these on the reference circuits")
    ap.add_argument("--rounds", type=int, default=20, help="with --baseline: alternations of old and new")
    ap.add_argument("--netlists", nargs="*", metavar="NAME", help="instead: the compiled core alone (DK forward, "
                    "forward with the saved trajectory, backward; CPU time) on netlists/NAME.cir (default: all)")
    ap.add_argument("--maps", action="store_true", help="instead: linalg.tmv3's two loop orders on random maps of "
                    "1 to 59 states (AXPY_MACS)")
    args = ap.parse_args()
    if args.maps:
        sizes = [(1, 1, 2, 1), (3, 1, 0, 1), (4, 2, 3, 1), (8, 1, 4, 1), (16, 1, 8, 1), (24, 2, 12, 1), (32, 2, 16, 1),
                 (40, 2, 24, 1), (48, 2, 36, 1), (59, 2, 48, 1)]
        linear_maps(sizes, int(args.seconds * 200_000), args.repeats)
        return
    if args.netlists is not None:
        torch.set_num_threads(1)
        root = Path(__file__).resolve().parents[1] / "netlists"
        names = args.netlists or sorted(p.stem for p in root.glob("*.cir"))
        netlist_kernels(names, args.seconds, args.repeats)
        return
    if args.compile_probe:
        print(json.dumps(compile_probe()))
        return
    if args.baseline:
        torch.set_num_threads(1)
        circuits = ["diode_clipper", "ts808_clipping", "bjt_common_emitter", "triode_common_cathode"]
        baseline_ab(args.baseline, circuits, args.seconds, args.rounds)
        return

    from circuitsim.kernels import statespace as ss
    from circuitsim.kernels.autograd import run_state_space

    torch.set_num_threads(1)
    nl, theta = clipper_nonlinearity()
    mats = clipper_matrices(args.fs)
    u = _input(args.fs, args.seconds, args.amplitude, 1)
    x0 = np.zeros((1, 1))
    n = u.shape[1]
    opts = ss.KernelOptions(predictor=args.predictor, threads=1)
    warm = ss.forward(nl, mats, theta, u[:, :1000], x0, options=opts)  # compile / load
    ss.backward(nl, mats, theta, u[:, :1000], warm.v, warm.checkpoints, np.ones_like(warm.y), options=opts)

    res = ss.forward(nl, mats, theta, u, x0, options=opts, save=False)
    t_inf = _best(lambda: ss.forward(nl, mats, theta, u, x0, options=opts, save=False), args.repeats)
    t_fwd = _best(lambda: ss.forward(nl, mats, theta, u, x0, options=opts, save=True), args.repeats)
    saved = ss.forward(nl, mats, theta, u, x0, options=opts, save=True)
    gy = np.ones_like(saved.y)
    t_bwd = _best(
        lambda: ss.backward(nl, mats, theta, u, saved.v, saved.checkpoints, gy, options=opts), args.repeats
    )

    # end to end through torch.autograd: matrices and theta (from IS, N) require grad
    from circuitsim.kernels.nonlinearity import diode_theta_torch

    mt = [torch.tensor(m, requires_grad=True) for m in mats]
    is_ = torch.tensor(DIODE["IS"], dtype=torch.float64, requires_grad=True)
    nn_ = torch.tensor(DIODE["N"], dtype=torch.float64, requires_grad=True)
    ut = torch.from_numpy(u)

    def end_to_end() -> None:
        p = diode_theta_torch({"IS": is_, "N": nn_})
        th = torch.cat([p, p])
        y, _, _ = run_state_space(mt, th, ut, torch.zeros(1, 1, dtype=torch.float64), nl, options=opts)
        (y * y).mean().backward()

    def end_to_end_matrices_only() -> None:
        th = torch.cat([diode_theta_torch(DIODE)] * 2)
        y, _, _ = run_state_space(mt, th, ut, torch.zeros(1, 1, dtype=torch.float64), nl, options=opts)
        (y * y).mean().backward()

    end_to_end()
    t_e2e = _best(end_to_end, args.repeats)
    end_to_end_matrices_only()
    t_e2e_m = _best(end_to_end_matrices_only, args.repeats)
    t_e2e_fwd = _best(
        lambda: run_state_space(
            mt,
            torch.cat([diode_theta_torch(DIODE)] * 2),
            ut,
            torch.zeros(1, 1, dtype=torch.float64),
            nl,
            options=opts,
        ),
        args.repeats,
    )

    saved_bytes = saved.v.nbytes + saved.checkpoints.nbytes
    report = {
        "samples": n,
        "fs_hz": args.fs,
        "predictor": args.predictor,
        "newton_iterations_per_sample": res.stats[0, ss.ST_ITER] / n,
        "max_iterations": int(res.stats[0, ss.ST_MAXITER]),
        "fallbacks": int(res.stats[0, ss.ST_DAMPED] + res.stats[0, ss.ST_HOMOTOPY]),
        "forward_inference_ns_per_sample": 1e9 * t_inf / n,
        "forward_saving_ns_per_sample": 1e9 * t_fwd / n,
        "backward_kernel_ns_per_sample": 1e9 * t_bwd / n,
        "autograd_forward_ns_per_sample": 1e9 * t_e2e_fwd / n,
        "autograd_fwd_bwd_matrices_only_ns_per_sample": 1e9 * t_e2e_m / n,
        "ratio_fwd_bwd_matrices_only_to_forward": t_e2e_m / t_inf,
        "autograd_fwd_bwd_with_IS_N_ns_per_sample": 1e9 * t_e2e / n,
        "ratio_fwd_bwd_with_IS_N_to_forward": t_e2e / t_inf,
        "saved_bytes_per_sample": saved_bytes / n,
    }
    if args.compile:
        with tempfile.TemporaryDirectory() as cache:
            report["compile_cold"] = _probe_in_subprocess(cache)
            report["compile_cached"] = _probe_in_subprocess(cache)
    for k, v in report.items():
        print(f"{k:42s} {v:.4g}" if isinstance(v, float) else f"{k:42s} {v}")


if __name__ == "__main__":
    main()
