"""The compiled state-space kernels against independent implementations.

* forward: numba vs the plain-torch reference (:mod:`circuitsim.kernels.reference`) on a
  random stable system with diode, BJT and behavioural (sympy) nonlinearities, batch > 1;
  streamed-in-blocks == one-shot, bit for bit;
* forward: a hand-derived diode clipper vs a per-sample ``scipy.optimize.brentq`` solve of
  its trapezoidal KCL equation, with the diode equation of docs/devices.md written out here;
* backward: numba adjoint gradients vs autograd through the reference, for every matrix, the
  device parameters, the input and the initial state; ``torch.autograd.gradcheck``;
* compiled ``numba_eval`` vs ``torch_eval`` (values and Jacobians, against autograd);
* a Newton failure names its sample, time and batch item.

The first run compiles four generated kernel modules (about 40 s on 2 cores); later runs load
them from the cache (``$CIRCUITSIM_CACHE`` or ``~/.cache/circuitsim/kernels``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import sympy as sp
import torch

from circuitsim.kernels import statespace as ss
from circuitsim.kernels.autograd import NewtonError, run_state_space, theta_gradient
from circuitsim.kernels.codegen import sized_module
from circuitsim.kernels.explicit_root import MAX_OMEGA_STEPS, OMEGA_TOL, S_BV
from circuitsim.kernels.nonlinearity import (
    BJTBlock,
    DiodeBlock,
    ExprBlock,
    bjt_theta_size,
    bjt_theta_torch,
    build_nonlinearity,
    cache_dir,
    diode_theta_torch,
)
from circuitsim.kernels.reference import reference_state_space

DT = torch.float64
VT = 1.38064852e-23 * 300.15 / 1.6021766208e-19  # docs/devices.md: k T / q at 27 degC
GMIN = 1e-12


def rel(a, b) -> float:
    a = np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, dtype=float)
    b = np.asarray(b.detach() if isinstance(b, torch.Tensor) else b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ----------------------------------------------------------------------------- the mixed system
# ports: 0 diode (with charge), 1 vbe, 2 vbc of an NPN (with charges), 3 a behavioural port
# outputs: 0 i_d, 1 q_d, 2 ib, 3 ic, 4 qbe, 5 qbc, 6 behavioural current
V3, KP, EX, KG = sp.symbols("v3 kp ex kg1", real=True)
# a Koren-style law: softplus, Max, sign, Abs and a non-integer power
E1 = sp.log(1 + sp.exp(KP * (V3 + sp.Rational(1, 5)))) / KP
TRIODE_LIKE = 2 * sp.sign(sp.Max(E1, 0)) * sp.Abs(sp.Max(E1, 0)) ** EX / KG
DIODE_P = {"IS": 2.52e-9, "N": 1.752, "CJO": 4e-12, "TT": 5e-9}
BJT_P = {"IS": 1e-14, "BF": 200.0, "VAF": 80.0, "CJE": 8e-12, "CJC": 3e-12, "TF": 3e-10}
EXPR_P = (25.0, 1.4, 300.0)  # kp, ex, kg1


def mixed_nonlinearity():
    nd = 31  # diode vector length (devices.DIODE_LAYOUT)
    ne = nd + bjt_theta_size()  # the expression's parameters follow the BJT vector
    blocks = [
        DiodeBlock(port=0, out_i=0, out_q=1, theta=0),
        BJTBlock(ports=(1, 2), outs=(2, 3, 4, 5), theta=nd),
        ExprBlock(TRIODE_LIKE, ports=((V3, 3),), params=((KP, ne), (EX, ne + 1), (KG, ne + 2)), out=6),
    ]
    return build_nonlinearity(blocks, 4, 7)


def mixed_theta(params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """theta from (possibly learnable) scalars: diode ``d_<NAME>``, BJT ``b_<NAME>``; kp, ex, kg1."""
    q = params or {}
    d = dict(DIODE_P, **{k[2:]: v for k, v in q.items() if k.startswith("d_")})
    b = dict(BJT_P, **{k[2:]: v for k, v in q.items() if k.startswith("b_")})
    e = [q.get(n, torch.tensor(v, dtype=DT)) for n, v in zip(("kp", "ex", "kg1"), EXPR_P)]
    return torch.cat([diode_theta_torch(d), bjt_theta_torch(b, 1.0), torch.stack(e)])


def mixed_system(seed: int = 0, fs: float = 96e3):
    """A random stable system whose ports see physically sensible voltages (see the comments)."""
    rng = np.random.default_rng(seed)
    nx, nu, ny = 3, 2, 2
    a = rng.standard_normal((nx, nx))
    A = 0.9 * a / np.abs(np.linalg.eigvals(a)).max()
    scale_f = np.array([1e-3, 1e-11, 3e-5, 3e-3, 1e-11, 1e-11, 1e-3])  # typical |f| per output
    B = 0.2 * rng.standard_normal((nx, nu))
    C = 0.05 * rng.standard_normal((nx, 7)) / scale_f
    D = rng.standard_normal((ny, nx))
    E = rng.standard_normal((ny, nu))
    F = rng.standard_normal((ny, 7)) / scale_f
    G = 0.3 * rng.standard_normal((4, nx))
    # u[:, :, 1] is a DC supply of 1: the biases of the ports; u[:, :, 0] is the signal
    H = np.array([[1.5, 0.0], [0.1, 1.0], [0.1, -5.0], [0.5, 0.2]])
    k2 = 2.0 * fs
    Rd, Rb, Re, Rc, R3 = 1e3, 1e3, 100.0, 1e3, 300.0
    K = np.zeros((4, 7))
    K[0, 0], K[0, 1] = -Rd, -k2 * Rd  # v0 = p0 - Rd (i_d + 2/T q_d)
    K[1, 2], K[1, 3], K[1, 4] = -(Rb + Re), -Re, -k2 * Rb  # vbe = p1 - Rb ib - Re (ib + ic) - ...
    K[2, 2], K[2, 3], K[2, 5] = -Rb, Rc, -k2 * Rb  # vbc = p2 - Rb ib + Rc ic - ...
    K[3, 6] = -R3
    K[0, 2], K[1, 6], K[3, 0] = -50.0, -10.0, -20.0  # weak cross couplings
    K *= 1.0 + 0.05 * rng.standard_normal(K.shape)
    return tuple(np.ascontiguousarray(m) for m in (A, B, C, D, E, F, G, H, K))


def mixed_input(batch: int, T: int, fs: float = 96e3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(T) / fs
    u = np.zeros((batch, T, 2))
    for b in range(batch):
        f0 = 2000 + 3000 * rng.random()
        u[b, :, 0] = (0.5 + b) * np.sin(2 * np.pi * f0 * t + rng.random()) + 0.05 * rng.standard_normal(T)
    u[:, :, 1] = 1.0
    return u


@pytest.fixture(scope="module")
def mixed():
    return mixed_nonlinearity()


# ----------------------------------------------------------------------------- the diode clipper


def clipper_matrices(fs: float, r: float = 2.2e3, c: float = 10e-9) -> tuple[np.ndarray, ...]:
    """DK matrices of the clipper derived by hand (see benchmarks/bench_kernel.py)."""
    gs = 1.0 / r + 2.0 * c * fs
    k4 = 4.0 * c * fs
    G = np.array([[1.0 / gs]])
    H = np.array([[1.0 / (r * gs)]])
    K = np.array([[-1.0 / gs, 1.0 / gs]])
    return (k4 * G - 1.0, k4 * H, k4 * K, G.copy(), H.copy(), K.copy(), G, H, K)


@pytest.fixture(scope="module")
def clipper():
    nl = build_nonlinearity(
        [DiodeBlock(port=0, out_i=0, theta=0, sign=1.0), DiodeBlock(port=0, out_i=1, theta=31, sign=-1.0)],
        1,
        2,
    )
    return nl


def clipper_theta(is_: torch.Tensor | float = 2.52e-9, n: torch.Tensor | float = 1.752) -> torch.Tensor:
    p = diode_theta_torch({"IS": is_, "N": n})
    return torch.cat([p, p])


def diode_current_docs(v: float, is_: float, n: float) -> float:
    """docs/devices.md diode current with GMIN (no breakdown, no charge)."""
    vte = n * VT
    if v >= -3 * vte:
        i = is_ * (math.exp(v / vte) - 1.0)
    else:
        a = (3 * vte / (v * math.e)) ** 3
        i = -is_ * (1 + a)
    return i + GMIN * v


def clipper_brentq(
    u: np.ndarray, fs: float, r: float = 2.2e3, c: float = 10e-9, is_: float = 2.52e-9, n: float = 1.752
) -> np.ndarray:
    """Trapezoidal clipper, one scalar root per sample: (u - v)/R = 2C/T v - x + i(v) - i(-v)."""
    k2 = 2.0 * c * fs
    x = 0.0
    out = np.empty_like(u)
    for k, uk in enumerate(u):

        def kcl(v, uk=uk, x=x):
            return (uk - v) / r - k2 * v + x - diode_current_docs(v, is_, n) + diode_current_docs(-v, is_, n)

        lo, hi = -abs(uk) - 1.0, abs(uk) + 1.0
        v = scipy.optimize.brentq(kcl, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
        out[k] = v
        x = 2.0 * k2 * v - x  # companion history current of the capacitor
    return out


# ============================================================================= tests


def test_numba_eval_matches_torch_eval(mixed):
    """Compiled f and J against torch_eval and against autograd of torch_eval (incl. PNP, reversed diode)."""
    theta = mixed_theta()
    rng = np.random.default_rng(3)
    pts = np.column_stack(
        [
            rng.uniform(-1.0, 0.8, 40),
            rng.uniform(0.3, 0.8, 40),
            rng.uniform(-3, 0.5, 40),
            rng.uniform(-1.5, 1.0, 40),
        ]
    )
    pts[0, 3] = -0.2  # exactly at the Max(E1, 0) kink region edge of the behavioural law
    f_t, j_t = mixed.torch_eval(torch.tensor(pts), theta, jacobian=True)
    for k, v in enumerate(pts):
        f_n, j_n = mixed.eval_numpy(v, theta.detach().numpy())
        assert rel(f_n, f_t[k]) < 1e-13
        assert rel(j_n, j_t[k]) < 1e-13
        j_auto = torch.autograd.functional.jacobian(lambda vv: mixed.torch_eval(vv, theta), torch.tensor(v))
        for o in range(7):  # row by row: rows differ by orders of magnitude
            assert rel(j_t[k, o], j_auto[o]) < 1e-9, (k, o)
    # a PNP and a reversed diode share one generated module with their NPN / forward twins
    nd = 31
    nb = bjt_theta_torch(BJT_P, -1.0).numel()  # the BJT vector's length (its family layout)
    nl2 = build_nonlinearity(
        [
            BJTBlock(ports=(0, 1), outs=(0, 1, 2, 3), theta=0),
            DiodeBlock(port=2, out_i=4, theta=nb, sign=-1.0),
        ],
        3,
        5,
    )
    th2 = torch.cat([bjt_theta_torch(BJT_P, -1.0), diode_theta_torch(DIODE_P)])
    assert th2.numel() == nb + nd
    for v in ([-0.65, 2.0, 0.4], [-0.7, -0.2, -0.5], [0.3, 4.0, 1.0]):
        f_n, j_n = nl2.eval_numpy(np.array(v), th2.numpy())
        f_t2, j_t2 = nl2.torch_eval(torch.tensor(v, dtype=DT), th2, jacobian=True)
        assert rel(f_n, f_t2) < 1e-13 and rel(j_n, j_t2) < 1e-13
        j_auto = torch.autograd.functional.jacobian(
            lambda vv: nl2.torch_eval(vv, th2), torch.tensor(v, dtype=DT)
        )
        for o in range(5):
            assert rel(j_t2[o], j_auto[o]) < 1e-9


def test_expr_codegen_functions():
    """Piecewise, Min, Heaviside, trig and the triode cut-off: compiled vs torch vs sympy."""
    x, y, a = sp.symbols("x y a", real=True)
    exprs = [
        sp.Piecewise((x**2, x < 0), (sp.sin(x) * y, sp.And(x >= 0, y > 1)), (sp.tanh(x * y), True)),
        sp.Min(x, y, 0.5) + sp.Heaviside(x) * sp.sqrt(1 + y**2) + sp.atan(x / a),
        2 * sp.sign(sp.Max(x, 0)) * sp.Abs(sp.Max(x, 0)) ** sp.Rational(7, 5) / a,
    ]
    blocks = [ExprBlock(e, ports=((x, 0), (y, 1)), params=((a, 0),), out=k) for k, e in enumerate(exprs)]
    nl = build_nonlinearity(blocks, 2, 3)
    theta = np.array([1.7])
    for pt in ([-0.7, 0.4], [0.6, 1.5], [0.6, 0.5], [0.0, 2.0], [1.2, -0.3]):
        f_n, j_n = nl.eval_numpy(np.array(pt), theta)
        f_t, j_t = nl.torch_eval(torch.tensor(pt, dtype=DT), torch.tensor(theta), jacobian=True)
        subs = {x: pt[0], y: pt[1], a: theta[0]}
        f_s = [float(e.subs(subs)) for e in exprs]
        assert rel(f_n, f_s) < 1e-14 and rel(f_t, f_s) < 1e-14
        assert rel(j_n, j_t) < 1e-14
        assert np.all(np.isfinite(j_n))  # d/dx Max(x,0)**1.4 at x = 0 is 0, not 0/0
        if pt[0] != 0.0:
            j_s = [[float(sp.diff(e, s).subs(subs)) for s in (x, y)] for e in exprs]
            assert np.allclose(j_n, j_s, rtol=1e-13, atol=1e-14)


def test_forward_matches_reference(mixed):
    mats = mixed_system()
    theta = mixed_theta()
    u = mixed_input(3, 120)
    x0 = np.random.default_rng(5).standard_normal((3, 3)) * 0.1
    res = ss.forward(mixed, mats, theta.numpy(), u, x0, save=True)
    assert res.failed is None and res.stats[:, ss.ST_DAMPED].sum() == 0
    y_ref, x_ref, v_ref = reference_state_space(
        [torch.tensor(m) for m in mats], theta, torch.tensor(u), torch.tensor(x0), mixed
    )
    assert rel(res.y, y_ref) < 1e-10
    assert rel(res.v, v_ref) < 1e-10
    assert rel(res.x_final, x_ref) < 1e-10
    # the ports really are nonlinear here: diode conducting, BE junction on, BJT active and saturated
    assert res.v[:, :, 0].max() > 0.4 and res.v[:, :, 1].min() > 0.5
    assert res.v[:, :, 2].min() < -1.0 and res.v[:, :, 2].max() > 0.4


def test_stream_equals_one_shot(mixed):
    mats = mixed_system()
    theta = mixed_theta().numpy()
    u = mixed_input(2, 300)
    x0 = np.zeros((2, 3))
    whole = ss.forward(mixed, mats, theta, u, x0, save=False)
    x, warm, ys = x0, None, []
    for a, b in ((0, 1), (1, 51), (51, 178), (178, 300)):
        part = ss.forward(mixed, mats, theta, u[:, a:b], x, v_init=warm, save=False)
        x, warm = part.x_final, part.warm
        ys.append(part.y)
    assert np.array_equal(np.concatenate(ys, axis=1), whole.y)
    assert np.array_equal(x, whole.x_final)
    # the same through the torch entry point, with gradients enabled for the second block
    mt = [torch.tensor(m) for m in mats]
    y1, fin, _ = run_state_space(mt, torch.tensor(theta), torch.tensor(u[:, :100]), torch.tensor(x0), mixed)
    ut = torch.tensor(u[:, 100:], requires_grad=True)
    y2, fin2, _ = run_state_space(mt, torch.tensor(theta), ut, fin["x"], mixed, v_init=fin["v"])
    assert np.array_equal(torch.cat([y1, y2.detach()], dim=1).numpy(), whole.y)
    assert np.array_equal(fin2["x"].detach().numpy(), whole.x_final)


@pytest.mark.parametrize("fs", [384e3, 48e3])
def test_clipper_vs_brentq(clipper, fs):
    """The explicit Wright-omega root (no Newton iteration, where DK takes it) and Newton
    (explicit=False), each against a per-sample brentq solve of the clipper's KCL."""
    t = np.arange(600) / fs
    sig = 4.0 * np.sin(2 * np.pi * 1500 * t) * np.exp(-t * 2000) + 0.8 * np.sin(2 * np.pi * 7000 * t)
    ref = clipper_brentq(sig, fs)
    assert np.abs(ref).max() > 0.55  # the diodes conduct
    takes = ss.explicit_plan(clipper, clipper_matrices(fs)[8], clipper_theta().numpy()) is not None
    assert takes or fs < 384e3  # at 384 kHz DK takes it (one omega + one chord correction)
    for explicit in (True, False):
        y, _, stats = run_state_space(
            [torch.tensor(m) for m in clipper_matrices(fs)],
            clipper_theta(),
            torch.tensor(sig[None, :, None]),
            torch.zeros(1, 1, dtype=DT),
            clipper,
            options=ss.KernelOptions(explicit=explicit),
        )
        assert rel(y[0, :, 0], ref) < 1e-10, explicit
        assert stats["samples"] == 600
        assert stats["iterations"] == 0 if explicit and takes else stats["iterations"] >= 600


def test_explicit_root_plan_and_fallback(clipper):
    """The plan follows the values (docs/wdf.md eq. (12)); where the explicit root does not apply
    (K not of the form -R s, a breakdown, a costlier root than DK takes) Newton runs.  The
    explicit root equals Newton within its error bound OMEGA_TOL (volts), here with a 100 kV step too."""
    fs = 384e3
    mats = clipper_matrices(fs)
    theta = clipper_theta().numpy()
    assert ss.explicit_plan(clipper, mats[8], theta) == (2, True)  # one omega + one chord correction
    big = clipper_theta(1e-6).numpy()  # R IsS / VS no longer tiny: more chord corrections (eq. (12))
    steps = ss.explicit_plan(clipper, mats[8], big, MAX_OMEGA_STEPS)
    assert steps is not None and steps[0] > ss.DK_MAX_OMEGA and steps[1]
    assert ss.explicit_plan(clipper, mats[8], big) is None  # DK's Newton is cheaper there
    skew = mats[8] * np.array([[1.0, 1.01]])
    assert ss.explicit_plan(clipper, skew, theta) is None
    bv = theta.copy()
    bv[S_BV] = 5.0  # a breakdown voltage: not a plain diode
    assert ss.explicit_plan(clipper, mats[8], bv) is None
    sig = np.concatenate([np.linspace(0, 3, 40), 1e5 * np.ones(3), np.linspace(3, -3, 40)])
    for K, th, explicit in ((mats[8], theta, True), (skew, theta, False), (mats[8], big, False)):
        m = (*mats[:8], K)
        a = ss.forward(clipper, m, th, sig[None, :, None], np.zeros((1, 1)), save=False)
        b = ss.forward(clipper, m, th, sig[None, :, None], np.zeros((1, 1)), save=False,
                       options=ss.KernelOptions(explicit=False))
        assert a.failed is None and b.failed is None
        assert (a.stats[0, ss.ST_ITER] == 0) == explicit and b.stats[0, ss.ST_ITER] > len(sig)
        assert float(np.abs(a.y - b.y).max()) <= OMEGA_TOL


def test_fallbacks_still_converge(clipper):
    """With plain Newton capped at 1 iteration every sample goes to the damped fallback; with
    the damped solve also capped the homotopy in p takes over.  Results stay exact."""
    fs = 48e3
    sig = np.concatenate([np.zeros(5), 12.0 * np.ones(10), -12.0 * np.ones(10)])
    ref = clipper_brentq(sig, fs)
    mats = clipper_matrices(fs)
    theta = clipper_theta().numpy()
    for opts, which in (
        (ss.KernelOptions(max_iter=1, explicit=False), ss.ST_DAMPED),
        (ss.KernelOptions(max_iter=1, fallback_iter=3, explicit=False), ss.ST_HOMOTOPY),
    ):
        res = ss.forward(clipper, mats, theta, sig[None, :, None], np.zeros((1, 1)), options=opts, save=False)
        assert res.failed is None
        assert res.stats[0, which] > 0
        assert rel(res.y[0, :, 0], ref) < 1e-10


def test_fallbacks_compile_once(clipper):
    """The generated forward_item has no fallbacks; the first sample that needs them reruns the item with
    forward_item_full, identical to the end.  The hot loop (forward_segment) is compiled once for both."""
    fs = 48e3
    sig = 2.0 * np.sin(np.linspace(0.0, 6.0, 200))
    mats = clipper_matrices(fs)
    theta = clipper_theta().numpy()
    mod = sized_module(clipper.module, 1, 1)  # the module whose loops run these maps (Nx, Nu = 1)
    opts = ss.KernelOptions(explicit=False)
    clean = ss.forward(clipper, mats, theta, sig[None, :, None], np.zeros((1, 1)), options=opts)
    assert clean.stats[0, ss.ST_DAMPED] == 0
    hard = ss.KernelOptions(max_iter=1, explicit=False)
    res = ss.forward(clipper, mats, theta, np.stack([sig, 0.5 * sig])[:, :, None], np.zeros((2, 1)), options=hard)
    assert res.failed is None and (res.stats[:, ss.ST_DAMPED] > 0).all() and mod._need_fallbacks
    assert rel(res.y[0], clean.y[0]) < 1e-10
    again = ss.forward(clipper, mats, theta, sig[None, :, None], np.zeros((1, 1)), options=opts)  # full from now on
    assert np.array_equal(again.y, clean.y) and np.array_equal(again.v, clean.v)
    for fn in ("forward_segment", "newton_damped"):  # one compiled signature each in numba's disk cache
        assert len(list((cache_dir() / "__pycache__").glob(f"{mod.__name__}.{fn}-*.nbc"))) == 1, fn


def test_gradients_match_reference(mixed):
    mats = mixed_system(seed=2)
    u_np = mixed_input(2, 60, seed=4)
    leaves = {
        "d_IS": torch.tensor(DIODE_P["IS"], dtype=DT),
        "d_N": torch.tensor(DIODE_P["N"], dtype=DT),
        "b_IS": torch.tensor(BJT_P["IS"], dtype=DT),
        "b_BF": torch.tensor(BJT_P["BF"], dtype=DT),
        "kp": torch.tensor(EXPR_P[0], dtype=DT),
        "ex": torch.tensor(EXPR_P[1], dtype=DT),
        # charges, Early voltage, transit time: derived slots (IVAF, the depletion constants)
        "d_CJO": torch.tensor(DIODE_P["CJO"], dtype=DT),
        "d_TT": torch.tensor(DIODE_P["TT"], dtype=DT),
        "b_VAF": torch.tensor(BJT_P["VAF"], dtype=DT),
        "b_CJE": torch.tensor(BJT_P["CJE"], dtype=DT),
        "b_TF": torch.tensor(BJT_P["TF"], dtype=DT),
        "kg1": torch.tensor(EXPR_P[2], dtype=DT),
    }
    w = torch.tensor(np.random.default_rng(9).standard_normal((2, 60, 2)))
    wx = torch.tensor(np.random.default_rng(10).standard_normal((2, 3)))

    def grads(run):
        mt = [torch.tensor(m, requires_grad=True) for m in mats]
        lv = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
        u = torch.tensor(u_np, requires_grad=True)
        x0 = torch.full((2, 3), 0.05, dtype=DT, requires_grad=True)
        y, xT = run(mt, mixed_theta(lv), u, x0)
        loss = (w * y).sum() + (wx * xT).sum()
        inputs = mt + list(lv.values()) + [u, x0]
        return y, torch.autograd.grad(loss, inputs)

    y_nb, g_nb = grads(
        lambda mt, th, u, x0: (lambda r: (r[0], r[1]["x"]))(run_state_space(mt, th, u, x0, mixed))
    )
    y_ref, g_ref = grads(lambda mt, th, u, x0: reference_state_space(mt, th, u, x0, mixed)[:2])
    assert rel(y_nb, y_ref) < 1e-10
    names = list("ABCDEFGHK") + list(leaves) + ["u", "x0"]
    for name, a, b in zip(names, g_nb, g_ref):
        assert torch.count_nonzero(b) > 0, name
        assert rel(a, b) < 1e-7, name


# ----------------------------------------------------------------------------- compiled dL/dtheta
# nl_vjp_theta (hand-written device derivatives, sympy for expressions) against the torch oracle
# theta_gradient (autograd through torch_eval).  The compiled gradient is w.r.t. every slot of
# the device vectors, the oracle's w.r.t. the raw slots only (the torch equations recompute the
# derived ones), so both are carried to the raw parameters through diode/bjt_theta_torch.

CARD_1N4148_BV = {"IS": 4.352e-9, "N": 1.906, "BV": 110.0, "IBV": 1e-4, "CJO": 7.048e-12, "VJ": 0.869,
                  "M": 0.03, "FC": 0.5, "TT": 3.48e-9}
CARD_1N914 = {"IS": 2.52e-9, "N": 1.752}
CARD_2N3904 = {"IS": 6.734e-15, "VAF": 74.03, "BF": 416.4, "NE": 1.259, "ISE": 6.734e-15, "IKF": 66.78e-3,
               "BR": 0.7371, "NC": 2.0, "ISC": 0.0, "IKR": 0.0, "RC": 1.0, "CJC": 3.638e-12, "MJC": 0.3085,
               "VJC": 0.75, "FC": 0.5, "CJE": 4.493e-12, "MJE": 0.2593, "VJE": 0.75, "TR": 239.5e-9,
               "TF": 301.2e-12, "ITF": 0.4, "VTF": 4.0, "XTF": 2.0, "RB": 10.0}
VGK, VPK, MU, EXK, KG1, KP_, KVB, EXG, KGG = sp.symbols("vgk vpk mu ex kg1 kp kvb exg kgg", real=True)
# Koren's triode (plate current, cut off for E1 <= 0) and a power-law grid current
KOREN_E1 = VPK / KP_ * sp.log(1 + sp.exp(KP_ * (1 / MU + VGK / sp.sqrt(KVB + VPK**2))))
KOREN_IP = sp.Max(KOREN_E1, 0) ** EXK / KG1 * (1 + sp.sign(KOREN_E1))
KOREN_IG = sp.Max(VGK, 0) ** EXG / KGG
KOREN_P = {"mu": 100.0, "ex": 1.4, "kg1": 1060.0, "kp": 600.0, "kvb": 300.0, "exg": 1.5, "kgg": 2000.0}


def _vjp_case(name: str, rng: np.random.Generator):
    """(nonlinearity, leaves, theta(leaves), v, mu) of one compiled-gradient test case."""
    T = 300
    if name == "diodes":  # with charge and breakdown; a reversed one without charge
        blocks = [DiodeBlock(port=0, out_i=0, out_q=1, theta=0), DiodeBlock(port=1, out_i=2, theta=31, sign=-1.0)]
        nl = build_nonlinearity(blocks, 2, 3)
        leaves = {f"a_{k}": v for k, v in CARD_1N4148_BV.items()} | {f"b_{k}": v for k, v in CARD_1N914.items()}

        def theta(lv):
            pa = {k[2:]: v for k, v in lv.items() if k.startswith("a_")}
            pb = {k[2:]: v for k, v in lv.items() if k.startswith("b_")}
            return torch.cat([diode_theta_torch(pa), diode_theta_torch(pb)])

        v = np.stack([rng.uniform(-111.0, 0.9, T), rng.uniform(-0.8, 3.0, T)], axis=-1)
        v[: T // 2, 0] = rng.uniform(-1.0, 0.9, T // 2)  # most points in the interesting range
        mu = rng.standard_normal((T, 3)) * np.array([1.0, 1e9, 1.0])
    elif name in ("npn", "pnp"):
        pol = 1.0 if name == "npn" else -1.0
        nl = build_nonlinearity([BJTBlock(ports=(0, 1), outs=(0, 1, 2, 3), theta=0)], 2, 4)
        leaves = dict(CARD_2N3904)

        def theta(lv):
            return bjt_theta_torch(lv, pol)

        v = pol * np.stack([rng.uniform(-1.0, 0.85, T), rng.uniform(-8.0, 0.75, T)], axis=-1)
        mu = rng.standard_normal((T, 4)) * np.array([1.0, 1.0, 1e9, 1e9])
    else:  # Koren triode: plate and grid current, every coefficient learnable
        syms = dict(zip(KOREN_P, (MU, EXK, KG1, KP_, KVB, EXG, KGG)))
        params = tuple((syms[k], i) for i, k in enumerate(KOREN_P))
        blocks = [
            ExprBlock(KOREN_IP, ports=((VGK, 0), (VPK, 1)), params=params, out=0),
            ExprBlock(KOREN_IG, ports=((VGK, 0),), params=params[5:], out=1),
        ]
        nl = build_nonlinearity(blocks, 2, 2)
        leaves = dict(KOREN_P)

        def theta(lv):
            return torch.stack([lv[k] for k in KOREN_P])

        # includes cut-off (vpk < 0: E1 < 0) and vgk < 0 (no grid current): zero bases of the powers
        v = np.stack([rng.uniform(-4.0, 1.0, T), rng.uniform(-50.0, 300.0, T)], axis=-1)
        mu = rng.standard_normal((T, 2))
    leaves = {k: torch.tensor(float(x), dtype=DT, requires_grad=True) for k, x in leaves.items()}
    return nl, leaves, theta, v.reshape(2, T // 2, -1), mu.reshape(2, T // 2, -1)


@pytest.mark.parametrize("name", ["diodes", "npn", "pnp", "koren"])
def test_compiled_theta_gradient_matches_torch(name):
    nl, leaves, theta_fn, v, mu = _vjp_case(name, np.random.default_rng(21))
    theta = theta_fn(leaves)
    g_nb = ss.theta_vjp(nl, theta.detach().numpy(), v, mu)
    g_t = theta_gradient(nl, theta, v, mu)
    names = list(leaves)
    raw_nb = torch.autograd.grad(theta, list(leaves.values()), torch.from_numpy(g_nb), retain_graph=True,
                                 allow_unused=True, materialize_grads=True)
    raw_t = torch.autograd.grad(theta, list(leaves.values()), g_t, allow_unused=True, materialize_grads=True)
    nonzero = 0
    for k, a, b in zip(names, raw_nb, raw_t):
        assert bool(torch.isfinite(a)) and bool(torch.isfinite(b)), k
        assert abs(float(a - b)) <= 1e-10 * abs(float(b)), (k, float(a), float(b))
        nonzero += float(b) != 0.0
    assert nonzero >= len(names) - 4  # only RB, RC, ISC, IKR (no effect here) may be zero
    # the batch sum is the sum of the items; the full-slot gradient agrees with the oracle on raw slots
    # that no derived slot depends on (expressions: every slot)
    g_items = sum(ss.theta_vjp(nl, theta.detach().numpy(), v[b : b + 1], mu[b : b + 1]) for b in range(2))
    assert np.allclose(g_items, g_nb, rtol=1e-13, atol=0.0)
    if name == "koren":
        assert rel(g_nb, g_t) < 1e-10


def test_gradcheck_tiny(clipper):
    """Finite differences through the whole compiled forward.  Every input enters as a relative
    factor (matrices, x0, IS) or is O(1) (u, N), so one step size suits all of them."""
    fs = 96e3
    m0 = [torch.tensor(m) for m in clipper_matrices(fs)]
    scales = [torch.ones_like(m, requires_grad=True) for m in m0]
    t = np.arange(6) / fs
    u = torch.tensor(
        (2.0 * np.sin(2 * np.pi * 9000 * t + np.array([[0.0], [1.0]])))[:, :, None], requires_grad=True
    )
    x0 = torch.tensor([[1.0], [-2.0]], dtype=DT, requires_grad=True)
    is_scale = torch.tensor(1.0, dtype=DT, requires_grad=True)
    n = torch.tensor(1.752, dtype=DT, requires_grad=True)

    def fn(*args):
        *s, u_, x0_, is_s, n_ = args
        mats = [m * k for m, k in zip(m0, s)]
        y, fin, _ = run_state_space(mats, clipper_theta(2.52e-9 * is_s, n_), u_, 1e-3 * x0_, clipper)
        return y, fin["x"]

    assert torch.autograd.gradcheck(fn, (*scales, u, x0, is_scale, n), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_newton_failure_names_the_sample():
    """v = p + v^2/2 has no real solution for p > 1/2 (I - K J = 1 - v is singular at the fold)."""
    v0 = sp.Symbol("v0", real=True)
    nl = build_nonlinearity([ExprBlock(v0**2 / 2, ports=((v0, 0),), out=0)], 1, 1)
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    mats = [torch.tensor(m) for m in (0.5 * one, zero, zero, zero, zero, one, zero, one, one)]
    n = np.arange(20)
    u = torch.tensor(np.stack([0.02 * n, 0.045 * n])[:, :, None])  # item 1 crosses 1/2 at sample 12
    with pytest.raises(NewtonError) as err:
        run_state_space(
            mats,
            torch.zeros(0, dtype=DT),
            u,
            torch.zeros(2, 1, dtype=DT),
            nl,
            sample_rate=48000.0,
            sample_offset=100,
        )
    e = err.value
    assert (e.sample, e.batch) == (112, 1)
    assert e.time == pytest.approx(112 / 48000.0)
    assert str(e).startswith("Newton failed at sample 112 (t = 0.00233333333 s)")
    # below the fold the same system is solved exactly (v = 1 - sqrt(1 - 2p)) by the strict stop rule, and
    # to the tolerance (reltol 1e-10 on v: 2e-10 on y = v^2/2) with the early accept (the default)
    p = 0.02 * n
    exact = (1 - np.sqrt(1 - 2 * p)) ** 2 / 2
    for opts, tol in ((ss.KernelOptions(early=False), 1e-12), (None, 2e-10)):
        y, _, _ = run_state_space(mats, torch.zeros(0, dtype=DT), u[:1], torch.zeros(1, 1, dtype=DT), nl, options=opts)
        assert rel(y[0, :, 0], exact) < tol


def test_bound_rejects_solutions_out_of_range():
    """KernelOptions.bound: a Newton solution beyond bound x max(1, |u|, |z_init|) is a failure.

    v = p + v^2/2 solves to v = 1 - sqrt(1 - 2p) (the other root 1 + sqrt(1 - 2p) is larger still):
    with bound 0.5 (|u| <= 0.38 < 1) the first sample whose root passes 0.5 V, p > 3/8, is reported
    at once (no fallbacks); without a bound every sample is solved.
    """
    v0 = sp.Symbol("v0", real=True)
    nl = build_nonlinearity([ExprBlock(v0**2 / 2, ports=((v0, 0),), out=0)], 1, 1)
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    mats = (0.5 * one, zero, zero, zero, zero, one, zero, one, one)
    p = 0.02 * np.arange(20)
    u = p[None, :, None]
    for bound, fail in ((0.5, int(np.argmax(p > 0.375))), (math.inf, -1)):
        res = ss.forward(nl, mats, np.zeros(0), u, np.zeros((1, 1)), options=ss.KernelOptions(bound=bound), save=True)
        assert res.stats[0, ss.ST_FAIL] == fail and res.stats[0, ss.ST_DAMPED] == 0
        n = len(p) if fail < 0 else fail
        assert rel(res.v[0, :n, 0], 1 - np.sqrt(1 - 2 * p[:n])) < 1e-10  # reltol


def test_early_accept_keeps_the_tolerance(mixed):
    """The early accept (c |dz|^2 within the tolerance, c measured on recent samples) against the strict
    stop rule and the torch oracle: fewer iterations, the same solution to the tolerance."""
    mats = mixed_system()
    theta = mixed_theta()
    u = mixed_input(2, 2000)
    x0 = np.zeros((2, 3))
    early = ss.forward(mixed, mats, theta.numpy(), u, x0, save=True)
    strict = ss.forward(mixed, mats, theta.numpy(), u, x0, options=ss.KernelOptions(early=False), save=True)
    assert early.failed is None and strict.failed is None
    assert early.stats[:, ss.ST_ITER].sum() < strict.stats[:, ss.ST_ITER].sum()
    y_ref, _, v_ref = reference_state_space([torch.tensor(m) for m in mats], theta, torch.tensor(u), torch.tensor(x0),
                                            mixed)
    assert rel(strict.y, y_ref) < 1e-10 and rel(early.y, y_ref) < 1e-10
    assert rel(early.v, v_ref) < 1e-10


def test_linear_system_without_ports():
    """Nv = Nf = 0 (a linear circuit): the plain recursion y = D x + E u, x' = A x + B u."""
    nl = build_nonlinearity([], 0, 0)
    rng = np.random.default_rng(7)
    A = 0.5 * rng.standard_normal((2, 2))
    B, D, E = rng.standard_normal((2, 1)), rng.standard_normal((1, 2)), rng.standard_normal((1, 1))
    z = np.zeros
    mats = (A, B, z((2, 0)), D, E, z((1, 0)), z((0, 2)), z((0, 1)), z((0, 0)))
    u = rng.standard_normal((2, 50, 1))
    res = ss.forward(nl, mats, np.zeros(0), u, np.ones((2, 2)), save=False)
    x = np.ones((2, 2))
    for k in range(50):
        assert np.allclose(res.y[:, k], x @ D.T + u[:, k] @ E.T, rtol=1e-13, atol=1e-13)
        x = x @ A.T + u[:, k] @ B.T
    assert np.allclose(res.x_final, x, rtol=1e-13, atol=1e-13)


def test_generated_module_is_cached(clipper):
    """The generated source lives in the cache directory and numba wrote its cache next to it."""
    ss.forward(
        clipper, clipper_matrices(48e3), clipper_theta().numpy(), np.zeros((1, 3, 1)), np.zeros((1, 1))
    )
    path = clipper.module.__file__
    assert path.startswith(str(cache_dir()))
    assert "def nl_eval" in open(path).read()
    kernel = sized_module(clipper.module, 1, 1)  # the loops run in the module sized for the maps (Nx, Nu)
    assert kernel.__file__.startswith(str(cache_dir())) and (kernel.NX, kernel.NU) == (1, 1)
    index = list((cache_dir() / "__pycache__").glob(f"{kernel.__name__}.forward_item*.nbi"))
    assert index, "numba did not cache forward_item"


def test_sized_module_refuses_other_sizes(clipper):
    """The loops are compiled for one (Nx, Nu): maps of other sizes are refused with a message naming both."""
    from circuitsim.kernels import core

    mats = clipper_matrices(48e3)
    kernel = sized_module(clipper.module, 1, 1)
    assert sized_module(clipper.module, 1, 1) is kernel and sized_module(kernel, 2, 1) is kernel
    z = np.zeros
    two = (z((2, 2)), z((2, 1)), z((2, 2)), z((1, 2)), z((1, 1)), z((1, 2)), z((1, 2)), z((1, 1)))
    with pytest.raises(ValueError, match=r"Nx, Nu = \(2, 1\).*compiled for \(1, 1\)"):
        core.forward(kernel, two, mats[8:], clipper_theta().numpy(), z((1, 3, 1)), z((1, 2)))
    bad = (*mats[:3], z((1, 2)), *mats[4:8])  # D with two columns against A's one state
    with pytest.raises(ValueError, match=r"matrix D has shape \(1, 2\), expected \(1, 1\)"):
        core.forward(clipper.module, bad, mats[8:], clipper_theta().numpy(), z((1, 3, 1)), z((1, 1)))


def test_choose_loop_orders_by_constant_sizes():
    # tmv3's loop order is pasted where its four sizes are constants (dot products up to AXPY_MACS multiply-adds,
    # row passes above), and the run-time size keeps the run-time choice
    from circuitsim.kernels import codegen, linalg

    src = ("def f(y, A, x, B, u, C, phi, ny):\n"
           "    tmv3(y, A, x, NX, B, u, NU, C, phi, NPHI, NX)  # small\n"
           "    tmv3(y, A, x, NX, B, u, NU, C, phi, NPHI, BIG)\n"
           "    tmv3(y, A, x, NX, B, u, NU, C, phi, 0, ny)\n")
    sizes = {"NX": 3, "NU": 1, "NPHI": 2, "BIG": linalg.AXPY_MACS}
    out = codegen.choose_loop_orders(src, sizes).splitlines()
    assert out[1].strip().startswith("tmv3_dots(") and out[1].endswith("# small")
    assert out[2].strip().startswith("tmv3_axpy(")
    assert out[3].strip().startswith("tmv3(")
    assert linalg.tmv3_takes_dots(3, 3, 1, 2) and not linalg.tmv3_takes_dots(linalg.AXPY_MACS, 3, 1, 2)


def test_lu_solve_t_solves_the_transposed_system():
    # the adjoint's M' w = r with the factors of M (linalg.lu_solve_t), against numpy's solve of M': the explicit
    # inverse (n <= 3) and the pivoted LU (n > 3; the first column's largest entry is moved off the diagonal so that
    # every factorisation swaps rows), run as plain Python
    from circuitsim.kernels.linalg import lu_factor, lu_solve_t

    rng = np.random.default_rng(3)
    for n in range(1, 7):
        M = rng.standard_normal((n, n)) + 0.5 * np.eye(n)
        if n > 3:
            M[n - 1, 0] = 10.0 * np.abs(M).max()
        r = rng.standard_normal(n)
        LU, piv, w = M.copy(), np.zeros(n, dtype=np.int64), r.copy()
        assert lu_factor(LU, piv, n)
        if n > 3:
            assert piv[0] == n - 1
        lu_solve_t(LU, piv, w, n)
        ref = np.linalg.solve(M.T, r)
        assert np.allclose(w, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max()), (n, w, ref)


def test_sized_module_pastes_the_loop_orders(clipper):
    # the clipper's module sized for its maps calls tmv3 only where the output count (run-time) is a size
    import inspect

    mod = sized_module(clipper.module, 1, 1)
    src = inspect.getsource(mod)
    lines = [ln.strip() for ln in src.splitlines()]
    generic = [ln for ln in lines if ln.startswith("tmv3(")]
    pasted = [ln for ln in lines if ln.startswith("tmv3_dots(") and "rows, acc)" not in ln]  # not tmv3's own
    assert generic and all(", ny)" in ln for ln in generic), generic
    assert len(pasted) >= 5 and not [ln for ln in lines if ln.startswith("tmv3_axpy(") and "rows, acc)" not in ln]


def test_live_map_matches_numba():
    # codegen.live_map (bit sets) against numba's own compute_live_map on every IR numba analyses while it
    # compiles a fresh function that inlines the core's templates (loops, branches, the LU): the same sets
    import inspect

    from numba.core import analysis, ir_utils

    from circuitsim.kernels import codegen, linalg

    codegen.install_inline_copy()
    numba_live_map = codegen._NUMBA_LIVE_MAP
    assert numba_live_map is not None and analysis.compute_live_map is codegen.live_map
    seen = []

    def both(cfg, blocks, use, defs):  # noqa: ANN001, ANN202
        want = numba_live_map(cfg, blocks, use, defs)
        seen.append((len(blocks), want == codegen.live_map(cfg, blocks, use, defs)))
        return want

    names = ("small_inverse", "lu_factor", "lu_solve", "solve_into", "scaled_step")
    src = ("import math\nimport numpy as np\nfrom numba import njit\n"
           + "".join(f"@njit(inline='always')\n{inspect.getsource(getattr(linalg, n))}\n" for n in names)
           + "@njit\ndef solve_all(Ms, bs, out):\n"
             "    piv = np.zeros(4, np.int64)\n"
             "    n_ok = 0\n"
             "    for k in range(Ms.shape[0]):\n"
             "        ok = solve_into(Ms[k].copy(), piv, bs[k], out[k], 4)\n"
             "        if ok and scaled_step(out[k], bs[k], 1.0, 1.0, 4) >= 0:\n"
             "            n_ok += 1\n"
             "        elif solve_into(Ms[k, :3, :3].copy(), piv, bs[k], out[k], 3):\n"
             "            n_ok -= 1\n"
             "    return n_ok\n")
    ns: dict = {"__name__": "circuitsim_live_map_test"}  # a generated module's name: codegen's inlining path
    exec(compile(src, "<live_map test>", "exec"), ns)
    fn = ns["solve_all"]
    analysis.compute_live_map = ir_utils.compute_live_map = both
    try:
        rng = np.random.default_rng(1)
        Ms, bs, out = rng.standard_normal((5, 4, 4)) + 4 * np.eye(4), rng.standard_normal((5, 4)), np.zeros((5, 4))
        assert fn(Ms, bs, out) == 5
    finally:
        analysis.compute_live_map = ir_utils.compute_live_map = codegen.live_map
    np.testing.assert_allclose(out, np.linalg.solve(Ms, bs[..., None])[..., 0], rtol=1e-12)
    assert len(seen) > 5 and max(n for n, _ in seen) > 10 and all(same for _, same in seen), seen
