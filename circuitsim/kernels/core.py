"""The compiled per-sample core that every one-step formulation plugs into.

A formulation writes one sample of its discrete-time model as (``docs/architecture.md``,
"Plugging a formulation into the core")::

    p[n]   = G x[n] + H u[n]                            (Nz)   linear maps, from torch
    z[n]   solves  g(z) = p[n] + r(z) = 0               (Nz)   the formulation's residual
    phi[n] = phi(z[n])                                  (Nphi) what the linear maps read back
    y[n]   = D x[n] + E u[n] + F phi[n]                 (Ny)
    x[n+1] = A x[n] + B u[n] + C phi[n]                 (Nx)

``x`` is the formulation's state, ``u`` the input, ``z`` its unknowns (DK: the port voltages,
a WDF root: its waves, a discrete-gradient scheme: the state increment).  The eight maps
``lin = (A, B, C, D, E, F, G, H)`` and the formulation's own matrices ``P`` (DK: ``(K,)``) are
computed in torch from the component values, so autograd carries their chain rule.  The
formulation supplies, as numba templates (see :class:`StepFormulation`):

* ``fm_eval(P, p, z, theta, phi, dphi, g, M, work)`` -- ``phi``, ``dphi = dphi/dz``, the
  residual ``g`` and the Newton matrix ``M = -dg/dz``; returns ``|g|^2``;
* ``fm_limit(P, zold, znew, lc, work)`` -- step limiting (SPICE junction limiting for DK);
* ``fm_prepare(P, theta, lc)`` -- constants of the limiting (and of ``fm_solve``) into ``lc``, once
  per batch item;
* ``fm_vjp(P, z, phi, theta, gphi, w, dP, dtheta, mq, want_theta, work)`` -- at a converged
  ``z``, add the gradient of ``w . r + gphi . phi`` w.r.t. ``P`` (into ``dP``) and ``theta``
  (into ``dtheta``, when ``want_theta``), and write ``mq`` = the cotangent of the device
  outputs ``f`` (saved as ``mu``);
* optionally ``fm_solve(P, p, z, theta, phi, lc, work, fopt, est, early)`` -- an explicit solve: write the root
  ``z`` of ``g(z) = 0`` for ``p`` and ``phi(z)``, return True; or return False, and the core runs
  its Newton and fallbacks for the sample.  Called instead of the predictor and Newton when the
  constant ``FM_EXPLICIT`` is 1 (default 0: the branch is compiled away); the adjoint is the
  same implicit-function adjoint at the saved ``z``, so the solve need not be differentiable.
  ``fopt`` (tolerances), ``est`` (the quadratic constant and the bound of :func:`newton_plain`) and
  ``early`` are the core's, for an iterative solve that stops as the core's Newton does (``newton_stop``);
* the constants ``NZ``, ``NPHI``, ``FM_WORK`` (length of ``work``, at least ``N_WORK``) and
  optionally ``FM_EXPLICIT`` and ``FM_LC`` (length of ``lc``, default ``N_LC``).

The core supplies the batched loop over samples; Newton with the tangent predictor
``z[n-1] + M^-1 (p[n] - p[n-1])``, the formulation's limiting, and the fallbacks (damped Newton
with backtracking from ``z[n-1]``, then homotopy in ``p`` from ``p[n-1]``); the saved
trajectory (``z`` per sample, and every state while they fit ``KernelOptions.state_budget``, else a
state checkpoint every ``checkpoint`` samples); and the
discrete adjoint at the converged solutions (implicit function theorem, never through the
iterations).  Since ``dg/dp = I``, a perturbation gives ``dz = M^-1 (dp + dr)`` and, with the
cotangent ``gphi = F' ybar[n] + C' xbar[n+1]`` of ``phi[n]``::

    w       = M^-T dphi' gphi          (= dL/dp[n])
    fm_vjp  : dP, dtheta, mu[n]        (direct dependence of r and phi on P and theta)
    xbar[n] = A' xbar[n+1] + D' ybar[n] + G' w
    ubar[n] = B' xbar[n+1] + E' ybar[n] + H' w
    dA += xbar[n+1] x[n]'   dB += xbar[n+1] u[n]'   dC += xbar[n+1] phi[n]'
    dD += ybar[n] x[n]'     dE += ybar[n] u[n]'     dF += ybar[n] phi[n]'
    dG += w x[n]'           dH += w u[n]'

The adjoint evaluates each device once per sample: it calls ``fm_eval_grad`` and ``fm_vjp_grad``, copies of the
formulation's ``fm_eval`` and ``fm_vjp`` that :func:`circuitsim.kernels.codegen.formulation_source` makes with the
nonlinearity's ``nl_eval_grad`` (``nl_eval`` that also writes the local partials of the parameter VJP, the tape,
into the sample's own work row) and ``nl_vjp_saved`` (the VJP from that tape) where ``fm_eval`` calls ``nl_eval``
once and ``fm_vjp`` calls ``nl_vjp_theta`` once (DK and the formulations on its hooks), else the hooks themselves.

The outer products are summed per block of ``checkpoint`` samples as three matrix products (the
cotangents ``(xbar[n+1], ybar[n], w[n])`` of the block against its ``x[n]``, ``u[n]``, ``phi[n]``;
:func:`backward_core`), so the per-sample loop runs only the serial part: ``w`` (``M' w = dphi' gphi`` solved with
the factors of ``M`` itself, :func:`~circuitsim.kernels.linalg.lu_solve_t`), ``fm_vjp`` and ``xbar[n]``, and the
copies of ``x[n]``, ``u[n]`` into the block's columns, whose loads from the saved trajectory overlap the
latency-bound recursion in ``xbar`` there.

The loop bodies below are plain Python templates: :mod:`circuitsim.kernels.codegen` pastes
them, with the formulation's hooks and the nonlinearity (``nl_eval`` ...), into one generated
module, because numba cannot cache a function that receives another compiled function as an
argument.  Sizes ``NZ``, ``NPHI``, ``NV``, ``NF`` are compile-time constants there, and so are the
linear sizes ``NX``, ``NU`` (the output count ``Ny`` stays a run-time size: DK runs a block's last
sample with extra output rows, and a second size would compile the whole core a second time):
:func:`forward` and :func:`backward` run the module sized for their maps
(:func:`circuitsim.kernels.codegen.sized_module`, one module file per size, content-addressed like the
others), and :func:`check_shapes` refuses maps of other sizes.  Every product with the maps is
:func:`circuitsim.kernels.linalg.tmv3`: unrolled dot products for small maps, and above ``AXPY_MACS``
multiply-adds a pass over each row of the stored transposes (``forward`` passes ``A', ..., H'``; the adjoint reads
``A``, ``D``, ``G`` ... as they are), which vectorises with the same summation order.

Performance (``benchmarks/bench_kernel.py``; ``--netlists`` times this core alone per reference
netlist): numba increments and decrements atomically the
reference count of an array each time it is copied or passed on (about 100 ns per sample in a
Newton loop), so the hot loops :func:`forward_segment` and :func:`backward_core` ``borrow``
every array and tuple of arrays once, and every callee in them is ``inline="always"``; the
fallbacks are separate functions that run outside the hot loop.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from circuitsim.kernels.linalg import (
    AXPY_MACS,  # noqa: F401  (pasted into the generated module as a layout constant, for tmv3)
    BLOCK_TEMPLATES,
    borrow,
    copy_into,
    copy_matrix,
    gram_acc,
    lu_factor,
    lu_solve,
    lu_solve_t,
    mtm_block,
    mv,
    rows_to_columns,
    scaled_step,
    solve_into,
    tmv3,
)

# ----------------------------------------------------------------------------- placeholders
# The generated module defines these (nonlinearity and formulation); here they only let the
# templates read and lint whole.
NV = NF = N_WORK = N_LC = NZ = NPHI = FM_WORK = FM_EXPLICIT = FM_LC = 0
FALLBACKS = 1  # pasted as a literal into each copy of forward_item (codegen.FORWARD_COPIES)
NX = NU = 0  # the linear sizes: constants of the sized module (codegen.sized_module)


def nl_prepare(theta, lc):  # pragma: no cover - replaced in generated code
    raise NotImplementedError


def fm_prepare(P, theta, lc):  # pragma: no cover
    raise NotImplementedError


def fm_eval(P, p, z, theta, phi, dphi, g, M, work):  # pragma: no cover
    raise NotImplementedError


def fm_limit(P, zold, znew, lc, work):  # pragma: no cover
    raise NotImplementedError


def fm_vjp(P, z, phi, theta, gphi, w, dP, dtheta, mq, want_theta, work):  # pragma: no cover
    raise NotImplementedError


def nl_vjp_theta(v, theta, mu, gtheta, work):  # pragma: no cover
    raise NotImplementedError


def fm_eval_grad(P, p, z, theta, phi, dphi, g, M, work):  # pragma: no cover - codegen's adjoint copy of fm_eval
    raise NotImplementedError


def fm_vjp_grad(P, z, phi, theta, gphi, w, dP, dtheta, mq, want_theta, work):  # pragma: no cover - and of fm_vjp
    raise NotImplementedError


def fm_solve(P, p, z, theta, phi, lc, work, fopt, est, early):
    # the default explicit-solve hook, pasted for formulations without one (FM_EXPLICIT = 0)
    return False


# ----------------------------------------------------------------------------- layout
# statistics columns
ST_ITER, ST_MAXITER, ST_DAMPED, ST_HOMOTOPY, ST_FAIL, ST_SAMPLES = range(6)
N_STATS = 6
PREDICTORS = {"previous": 0, "linear": 1, "tangent": 2}
# integer options: iopt[...]
O_MAXIT, O_FBIT, O_PRED, O_CP, O_SAVE, O_LIMIT, O_GIVEN, O_THETA, O_EXPLICIT, O_EARLY = range(10)
# float options: fopt[...] (tolerances in units of z)
F_RELTOL, F_ABSTOL, F_BOUND, F_UMAX = range(4)
# forward workspace: wv (vectors), wm (matrices), wi (integers); V_EST: [the quadratic constant c of
# newton_plain's stop rule, the bound on |z| of this batch item (KernelOptions.bound)]
(V_X, V_XN, V_P, V_Z, V_Z1, V_Z2, V_PPREV, V_G, V_DZ, V_ZT, V_PHI, V_WORK, V_LC, V_G2, V_PTMP, V_ZS,
 V_PHI2, V_EST) = range(18)
N_EST = 2
M_DPHI, M_LU, M_DPHI2, M_M2 = range(4)
I_PIV, I_COUNT = range(2)  # counters: iterations, max iterations, "LU holds M of the last sample", out of bound
# rows of the warm-start array (batch, W_LU + Nz, Nz): the Newton history carried from block to block
W_Z1, W_Z2, W_PPREV, W_PIV, W_EST, W_LU = range(6)
# iopt[O_SAVE]: nothing saved, z and a state every iopt[O_CP] samples, z and every state
SAVE_NONE, SAVE_CHECKPOINTS, SAVE_EVERY = range(3)
LAYOUT_PREFIXES = ("ST_", "O_", "F_", "V_", "M_", "I_", "W_", "N_EST", "SAVE_", "AXPY_")


# fmt: off
# ----------------------------------------------------------------------------- inlined templates


def accept_step(z, phi, dphi, dz):
    # z += dz with the linearised phi += dphi dz: for DK it satisfies v = p + K f to rounding and
    # differs from f(v + dv) by O(|dv|^2)
    mv(phi, dphi, dz, NPHI, NZ, True)
    for i in range(NZ):
        z[i] += dz[i]


def predict(predictor, have_lu, wv, LU, piv):
    # tangent: z[n-1] + M^-1 (p[n] - p[n-1]) with the LU of M = -dg/dz of the last solve (dg/dp = I);
    # linear: 2 z[n-1] - z[n-2]; previous: z[n-1]
    p, pprev, z, z1, z2, dz = wv[V_P], wv[V_PPREV], wv[V_Z], wv[V_Z1], wv[V_Z2], wv[V_DZ]
    if predictor == 2 and have_lu:
        for i in range(NZ):
            dz[i] = p[i] - pprev[i]
        lu_solve(LU, piv, dz, NZ)
        for i in range(NZ):
            z[i] = z1[i] + dz[i]
    elif predictor == 1:
        for i in range(NZ):
            z[i] = 2.0 * z1[i] - z2[i]
    else:
        copy_into(z, z1, NZ)


def in_bound(z, dz, bound):
    # every |z_i + dz_i| <= bound: the relative stop alone accepts a Newton run away to 1e34 V
    for i in range(NZ):
        if not abs(z[i] + dz[i]) <= bound:
            return False
    return True


def newton_stop(step, prev, c, early):
    # newton_plain's stop rule on the scaled step `step` after `prev` (inf: none, or a limited one) with the
    # quadratic constant `c`: whether z + dz is accepted, and c updated.  One rule for every Newton loop of the
    # core and of the formulations' explicit solves (kernels/sparse_lu.py's fm_solve).
    rate = step / prev
    if prev < math.inf:
        c = max(c, max(step, 1e-4) / (prev * prev))
    done = (step <= 1.0 or (prev < math.inf and rate < 0.5 and step * rate <= 1.0 - rate)
            or (early and c > 0.0 and c * step * step <= 1.0))
    return done, c


def newton_plain(P, theta, wv, wm, wi, fopt, max_iter, use_limit, early):
    # Newton on g(z) = p + r(z) with the formulation's limiting; iterations, 0 on failure, -1 for a root beyond
    # the bound.  Stop rule on the scaled step s_k = max |dz_i| / (reltol |z_i| + abstol) (Deuflhard, Newton
    # Methods for Nonlinear Problems, 2004, sec. 2.1): z + dz is accepted when s_k <= 1, or when an estimate of
    # the error of z + dz (the next step) is: rate/(1 - rate) s_k with the contraction rate s_k / s_(k-1),
    # or, with `early`, c s_k^2 from Newton's local quadratic convergence |dz_(k+1)| <= c |dz_k|^2
    # (ibid., sec. 2.1.1).  c is the largest s_k / s_(k-1)^2 measured on this sample and the previous ones
    # (steps below 1e-4 count as 1e-4: rounding is eps / reltol = 2e-6), decaying by 0.999 a sample (a
    # third after 1000), so that a sample accepted after one step needs a recent measurement; 0: none yet.
    # An iterate beyond the item's bound est[1] is a failure (the relative test alone accepts a run-away
    # Newton; KernelOptions.bound).
    p, z, g, dz, zt, phi, work, lc = wv[V_P], wv[V_Z], wv[V_G], wv[V_DZ], wv[V_ZT], wv[V_PHI], wv[V_WORK], wv[V_LC]
    dphi, LU, piv, est = wm[M_DPHI], wm[M_LU], wi[I_PIV], wv[V_EST]
    reltol, abstol, bound = fopt[F_RELTOL], fopt[F_ABSTOL], est[1]
    c = est[0] * 0.999
    prev = math.inf
    for it in range(1, max_iter + 1):
        fm_eval(P, p, z, theta, phi, dphi, g, LU, work)
        if not solve_into(LU, piv, g, dz, NZ):
            return 0
        step = scaled_step(dz, z, reltol, abstol, NZ)
        if step == math.inf:
            return 0
        done, c = newton_stop(step, prev, c, early)
        if done:
            if not in_bound(z, dz, bound):
                return -1
            est[0] = c
            accept_step(z, phi, dphi, dz)
            return it
        for i in range(NZ):
            zt[i] = z[i] + dz[i]
        prev = step
        if use_limit:
            fm_limit(P, z, zt, lc, work)
            for i in range(NZ):
                if zt[i] != z[i] + dz[i]:
                    prev = math.inf  # a limited step says nothing about the rate
        copy_into(z, zt, NZ)
    return 0


# ----------------------------------------------------------------------------- compiled templates


def newton_damped(P, theta, p, wv, wm, wi, fopt, max_iter, use_limit):
    # Newton with limiting and backtracking on |g|^2 (Armijo; Dennis & Schnabel 1996, sec. 6.3),
    # from the z in wv; iterations, or minus the iterations spent on failure
    wv = borrow(wv)
    wm = borrow(wm)
    z, g, dz, zt, phi, phi2, g2 = wv[V_Z], wv[V_G], wv[V_DZ], wv[V_ZT], wv[V_PHI], wv[V_PHI2], wv[V_G2]
    dphi, LU, dphi2, M2 = wm[M_DPHI], wm[M_LU], wm[M_DPHI2], wm[M_M2]
    work, lc, piv = wv[V_WORK], wv[V_LC], wi[I_PIV]
    n2 = fm_eval(P, p, z, theta, phi, dphi, g, LU, work)
    if not (n2 < math.inf):
        return -1
    for it in range(1, max_iter + 1):
        if not solve_into(LU, piv, g, dz, NZ):
            return -it
        s = scaled_step(dz, z, fopt[F_RELTOL], fopt[F_ABSTOL], NZ)
        if s == math.inf:
            return -it
        if s <= 1.0:
            if not in_bound(z, dz, wv[V_EST][1]):
                return -it
            accept_step(z, phi, dphi, dz)
            return it
        for i in range(NZ):
            zt[i] = z[i] + dz[i]
        if use_limit:
            fm_limit(P, z, zt, lc, work)
        for i in range(NZ):
            dz[i] = zt[i] - z[i]
        lam = 1.0
        ok = False
        n2t = math.inf
        for _ in range(40):
            for i in range(NZ):
                zt[i] = z[i] + lam * dz[i]
            n2t = fm_eval(P, p, zt, theta, phi2, dphi2, g2, M2, work)
            if n2t <= (1.0 - 1e-4 * lam) * n2:
                ok = True
                break
            lam *= 0.5
        if not ok:
            return -it
        copy_into(z, zt, NZ)
        copy_into(phi, phi2, NPHI)
        copy_into(g, g2, NZ)
        copy_matrix(LU, M2, False)
        copy_matrix(dphi, dphi2, False)
        n2 = n2t
    return -max_iter


def homotopy(P, theta, wv, wm, wi, fopt, max_iter, use_limit):
    # continuation in p from p[n-1] (solved by z[n-1]) to p[n] with adaptive steps
    wv = borrow(wv)
    p, pprev, z1, z, ptmp, zs = wv[V_P], wv[V_PPREV], wv[V_Z1], wv[V_Z], wv[V_PTMP], wv[V_ZS]
    total = 0
    lam = 0.0
    dl = 0.125
    copy_into(zs, z1, NZ)
    while lam < 1.0:
        lt = min(1.0, lam + dl)
        for i in range(NZ):
            ptmp[i] = pprev[i] + lt * (p[i] - pprev[i])
            z[i] = zs[i]
        it = newton_damped(P, theta, ptmp, wv, wm, wi, fopt, max_iter, use_limit)
        total += abs(it)
        if it > 0:
            lam = lt
            copy_into(zs, z, NZ)
            dl = min(2.0 * dl, 0.5)
        else:
            dl *= 0.25
            if dl < 1e-7:
                return -total
    return total


def forward_segment(n0, solved, lin, P, theta, io, wv, wm, wi, fopt, iopt):
    # The hot loop: samples n0.. until plain Newton fails (returns that sample) or T.  Every array
    # is borrowed and every callee inlined (see the module docstring).  With solved=True, sample
    # n0 was solved by a fallback (z, phi and LU are set).  lin holds the transposes A', ..., H' (forward()),
    # which tmv3 reads row by row.
    A, B, C, D, E, F, G, H = borrow(lin)
    u, y, ztraj, ckpt = borrow(io)
    ny = y.shape[1]  # a run-time size (the sized module's are NX, NU)
    P = borrow(P)
    theta = borrow(theta)
    fopt = borrow(fopt)
    wv = borrow(wv)
    wm = borrow(wm)
    wi = borrow(wi)
    x, xn, p, z, z1, z2, pprev, phi = wv[V_X], wv[V_XN], wv[V_P], wv[V_Z], wv[V_Z1], wv[V_Z2], wv[V_PPREV], wv[V_PHI]
    dphi, LU, piv, counters = wm[M_DPHI], wm[M_LU], wi[I_PIV], wi[I_COUNT]
    max_iter = iopt[O_MAXIT]
    predictor = iopt[O_PRED]
    save = iopt[O_SAVE] != SAVE_NONE
    ck = 1 if iopt[O_SAVE] == SAVE_EVERY else iopt[O_CP]  # samples between saved states
    ci = (n0 + ck - 1) // ck  # row of the next saved state, at sample n_ck = ci ck (no division per sample)
    n_ck = ci * ck
    use_limit = iopt[O_LIMIT] != 0
    explicit = FM_EXPLICIT != 0 and iopt[O_EXPLICIT] != 0
    early = iopt[O_EARLY] != 0
    lc, work = wv[V_LC], wv[V_WORK]
    n_iter = 0
    n_max = counters[1]
    for n in range(n0, u.shape[0]):
        un = u[n]
        if save and n == n_ck:
            copy_into(ckpt[ci], x, NX)
            ci += 1
            n_ck += ck
        if NZ > 0 and not (solved and n == n0):
            tmv3(p, G, x, NX, H, un, NU, H, un, 0, NZ)  # p = G x + H u
            if explicit and fm_solve(P, p, z, theta, phi, lc, work, fopt, wv[V_EST], early):
                counters[2] = 0  # LU is not M at this z: a later Newton sample predicts from z[n-1]
            else:
                predict(predictor, counters[2] != 0, wv, LU, piv)
                result = newton_plain(P, theta, wv, wm, wi, fopt, max_iter, use_limit, early)
                if result <= 0:  # counters[3] = 1: the root is beyond the bound (forward_item: no fallbacks)
                    counters[0] += n_iter + max_iter
                    counters[1], counters[3] = n_max, -result
                    return n
                n_iter += result
                if result > n_max:
                    n_max = result
                counters[2] = 1
        elif NZ == 0:
            fm_eval(P, p, z, theta, phi, dphi, wv[V_G], LU, work)
        tmv3(y[n], D, x, NX, E, un, NU, F, phi, NPHI, ny)  # y = D x + E u + F phi
        tmv3(xn, A, x, NX, B, un, NU, C, phi, NPHI, NX)  # x' = A x + B u + C phi
        copy_into(x, xn, NX)
        copy_into(z2, z1, NZ)
        copy_into(z1, z, NZ)
        copy_into(pprev, p, NZ)
        if save:
            copy_into(ztraj[n], z, NZ)
    counters[0] += n_iter
    counters[1] = n_max
    return u.shape[0]


def start_item(P, theta, x0, warm_in, wv, wm, wi, given):
    # the state, and the Newton history from the warm rows: z[n-1], z[n-2], p[n-1], pivots (-1: no
    # LU), the LU of M at z[n-1].  Without them, z[-1] = z_init solves g = 0 for p[-1] = -r(z_init).
    LU, piv, counters = wm[M_LU], wi[I_PIV], wi[I_COUNT]
    z1, z2, pprev, g = wv[V_Z1], wv[V_Z2], wv[V_PPREV], wv[V_G]
    fm_prepare(P, theta, wv[V_LC])
    copy_into(wv[V_X], x0, x0.shape[0])
    copy_into(z1, warm_in[W_Z1], NZ)
    if given:
        copy_into(z2, warm_in[W_Z2], NZ)
        copy_into(pprev, warm_in[W_PPREV], NZ)
        for i in range(NZ):
            piv[i] = np.int64(warm_in[W_PIV, i])
        if NZ > 0:
            wv[V_EST][0] = warm_in[W_EST, 0]
        for i in range(NZ):
            copy_into(LU[i], warm_in[W_LU + i], NZ)
        counters[2] = 1 if NZ > 0 and warm_in[W_PIV, 0] >= 0.0 else 0
    elif NZ > 0:
        pprev.fill(0.0)
        fm_eval(P, pprev, z1, theta, wv[V_PHI], wm[M_DPHI], g, LU, wv[V_WORK])
        for i in range(NZ):
            z2[i] = z1[i]
            pprev[i] = -g[i]
        counters[2] = 1 if lu_factor(LU, piv, NZ) else 0


def forward_item(lin, P, theta, io, x0, xfin, warm_in, warm_out, stats, fopt, iopt):
    # one batch item: the hot loop, and the fallbacks for each sample where plain Newton fails.  The
    # generated module holds two copies (codegen.FORWARD_COPIES): forward_item without the fallbacks
    # (FALLBACKS = 0: numba prunes the branch, so it neither types nor compiles newton_damped and
    # homotopy), which stops at the first sample that needs them with stats[ST_DAMPED] = -1, and
    # forward_item_full (FALLBACKS = 1), which forward() runs from then on
    nx = lin[0].shape[0]
    T = io[0].shape[0]
    wv = (np.zeros(nx), np.zeros(nx), np.zeros(NZ), np.zeros(NZ), np.zeros(NZ), np.zeros(NZ), np.zeros(NZ),
          np.zeros(NZ), np.zeros(NZ), np.zeros(NZ), np.zeros(NPHI), np.zeros(FM_WORK), np.zeros(FM_LC),
          np.zeros(NZ), np.zeros(NZ), np.zeros(NZ), np.zeros(NPHI), np.zeros(N_EST))
    wm = (np.zeros((NPHI, NZ)), np.zeros((NZ, NZ)), np.zeros((NPHI, NZ)), np.zeros((NZ, NZ)))
    wi = (np.zeros(NZ, np.int64), np.zeros(4, np.int64))
    counters = wi[I_COUNT]
    start_item(P, theta, x0, warm_in, wv, wm, wi, iopt[O_GIVEN] != 0)
    # the bound on |z|: KernelOptions.bound x the largest of 1, the item's inputs (fopt[F_UMAX], which
    # forward() takes with numpy's vectorised max and min: a compiled pass over u, a loop-carried max
    # chain or numba's NaN-checking array max, costs ~4 ns a sample) and its starting unknowns
    scale = fopt[F_UMAX]
    for i in range(NZ):
        scale = max(scale, abs(wv[V_Z1][i]))
    wv[V_EST][1] = fopt[F_BOUND] * scale
    use_limit = iopt[O_LIMIT] != 0
    n_damped = 0
    n_homotopy = 0
    fail = -1
    n = np.int64(0)  # not Literal[int](0): numba would compile forward_segment twice
    solved = n < 0  # False, typed bool: not Literal[bool](False), which forward_item (no fallbacks: it never
    # sets solved) would give forward_segment, a second compile of it for forward_item_full
    while True:
        n = forward_segment(n, solved, lin, P, theta, io, wv, wm, wi, fopt, iopt)
        if n >= T or counters[3] != 0:  # done, or a root beyond the bound: a failure without fallbacks
            fail = n if n < T else -1
            break
        if FALLBACKS == 0:  # this copy has none: forward() reruns the item with forward_item_full
            n_damped = -1
            fail = n
            break
        n_damped += 1  # fallbacks for sample n (p[n] is set): damped Newton from z[n-1], then homotopy
        copy_into(wv[V_Z], wv[V_Z1], NZ)
        it = newton_damped(P, theta, wv[V_P], wv, wm, wi, fopt, iopt[O_FBIT], use_limit)
        if it < 0:
            counters[0] -= it
            n_homotopy += 1
            it = homotopy(P, theta, wv, wm, wi, fopt, iopt[O_FBIT], use_limit)
        if it < 0:
            counters[0] -= it
            fail = n
            break
        counters[0] += it
        if it > counters[1]:
            counters[1] = it
        counters[2] = 1
        solved = True
    copy_into(xfin, wv[V_X], nx)
    for r, k in ((W_Z1, V_Z1), (W_Z2, V_Z2), (W_PPREV, V_PPREV)):
        copy_into(warm_out[r], wv[k], NZ)
    for i in range(NZ):
        warm_out[W_PIV, i] = np.float64(wi[I_PIV][i]) if counters[2] != 0 else -1.0
    if NZ > 0:
        warm_out[W_EST, 0] = wv[V_EST][0]
    for i in range(NZ):
        copy_into(warm_out[W_LU + i], wm[M_LU][i], NZ)
    stats[ST_ITER] = counters[0]
    stats[ST_MAXITER] = counters[1]
    stats[ST_DAMPED] = n_damped
    stats[ST_HOMOTOPY] = n_homotopy
    stats[ST_FAIL] = fail
    stats[ST_SAMPLES] = T if fail < 0 else fail


def backward_core(lin, P, theta, io, gmat, dP, gvec, iopt, bv, bm, b3, piv, works):
    # One batch item of the adjoint (module docstring), every array borrowed as in forward_segment.
    # Blocks of iopt[O_CP] samples, last first.  Forward over the block: phi, dphi and M (fm_eval_grad at
    # the saved z: fm_eval that also keeps in the sample's own work row, works[k], what the parameter VJP
    # needs of the device evaluation, codegen._grad_hooks; fm_vjp_grad reads it back, so the devices are
    # evaluated once per sample) and, where only checkpoints are saved, the states x[n] recomputed from the block's
    # checkpoint.  Backwards over the block, sample by sample, only what is serial: w, fm_vjp and
    # xbar[n] = A' xbar[n+1] + D' ybar + G' w.  The cotangents l[n] = (xbar[n+1], ybar[n], w[n]) are
    # the columns of lT, x[n], u[n], phi[n] those of xT, uT, phiT; the block's sums of outer products
    # (dA = sum xbar[n+1] x[n]', ..., dH = sum w[n] u[n]') are then lT xT', lT uT', lT phiT', whose row
    # blocks are (dA; dD; dG), (dB; dE; dH), (dC; dF; -), and ubar[n] = B' xbar[n+1] + E' ybar + H' w
    # is R' l[n] with R = (B; E; H).  The terms in ybar, D' ybar[n] and F' ybar[n], are formed for the whole
    # block beforehand (yx, yphi: mtm_block), so that the per-sample loop has no loop over the run-time Ny.
    # The transposes At, Bt, Ct recompute the states as forward_segment does (the same tmv3, so the same
    # rounding).  p (bv[2]) must be zeros.
    A, C, D, F, G, R, At, Bt, Ct = borrow(lin)
    gX, gU, gPhi = borrow(gmat)
    u, ztraj, ckpt, gy, du, mu = borrow(io)
    ny = gy.shape[1]
    gx, dx0, dtheta = borrow(gvec)
    x, xn, p, g, gphi, w, mq = borrow(bv)
    works = borrow(works)
    xT, uT, phiT, lT, duT, phis, xb2, yx, yphi = borrow(bm)
    dphis, Ms = borrow(b3)
    P = borrow(P)
    dP = borrow(dP)
    theta = borrow(theta)
    piv = borrow(piv)
    blk = iopt[O_CP]
    every = iopt[O_SAVE] == SAVE_EVERY
    want_theta = iopt[O_THETA] != 0
    want_du = du.shape[0] != 0
    want_mu = mu.shape[0] != 0
    T = u.shape[0]
    lY = lT[NX:]  # the ybar rows of lT
    cur = 0  # xbar[n+1] is xb2[cur]; xbar[n] goes to the other row (no copy in the loop-carried chain)
    copy_into(xb2[cur], gx, NX)
    for c in range((T + blk - 1) // blk - 1, -1, -1):
        n0 = c * blk
        n1 = min(T, n0 + blk)
        L = n1 - n0
        if not every:
            copy_into(x, ckpt[c], NX)
        if NZ > 0 or NPHI > 0 or not every:
            for k in range(L):
                n = n0 + k
                # phi, dphi and M = -dr/dz do not depend on p (g = p + r(z)): p stays 0 here
                fm_eval_grad(P, p, ztraj[n], theta, phis[k], dphis[k], g, Ms[k], works[k])
                if not every:
                    for i in range(NX):
                        xT[i, k] = x[i]
                    tmv3(xn, At, x, NX, Bt, u[n], NU, Ct, phis[k], NPHI, NX)
                    copy_into(x, xn, NX)
        rows_to_columns(phiT, phis, 0, L)
        rows_to_columns(lY, gy, n0, L)
        # the terms in ybar for the whole block, off the per-sample loop (whose run-time-sized loops over Ny cost
        # a quarter of a linear circuit's backward): D' ybar[n] and F' ybar[n] as columns
        mtm_block(yx, D, lY, L)
        mtm_block(yphi, F, lY, L)
        for i in range(NX):
            lT[i, L - 1] = xb2[cur, i]
        for k in range(L - 1, -1, -1):
            n = n0 + k
            xbar, xbn = xb2[cur], xb2[1 - cur]
            # x[n] and u[n] into the columns of xT, uT here rather than in a pass over the block: their loads (the
            # saved trajectory, from memory) then overlap the latency-bound chain in xbar (FMV 12.0 -> 10.5 ns/sample)
            if every:
                for i in range(NX):
                    xT[i, k] = ckpt[n, i]
            for j in range(NU):
                uT[j, k] = u[n, j]
            for i in range(NPHI):
                gphi[i] = yphi[i, k]
            tmv3(gphi, C, xbar, NX, C, xbar, 0, C, xbar, 0, NPHI, True)  # gphi = F' ybar + C' xbar
            if NZ > 0:
                # w = M^-T dphi' gphi: M' w = dphi' gphi solved with the factors of M itself (lu_solve_t; Ms[k] is
                # not read again), no transposed copy (its loops over run-time shapes: a sixth of the clipper's adjoint)
                tmv3(w, dphis[k], gphi, NPHI, Ms[k], gphi, 0, Ms[k], gphi, 0, NZ)
                if lu_factor(Ms[k], piv, NZ):
                    lu_solve_t(Ms[k], piv, w, NZ)
                else:
                    w.fill(math.nan)  # a singular M has no implicit derivative
            fm_vjp_grad(P, ztraj[n], phis[k], theta, gphi, w, dP, dtheta, mq, want_theta, works[k])
            if want_mu:
                copy_into(mu[n], mq, NF)
            for i in range(NZ):
                lT[NX + ny + i, k] = w[i]
            # xbar[n] = A' xbar[n+1] + D' ybar + G' w, the terms in xbar last (they alone wait for the
            # previous sample), also into column k - 1 (l[n-1]; column blk: spare)
            for i in range(NX):
                xbn[i] = yx[i, k]
            tmv3(xbn, G, w, NZ, A, xbar, NX, A, xbar, 0, NX, True)
            kc = k - 1 if k > 0 else blk
            for i in range(NX):
                lT[i, kc] = xbn[i]
            cur = 1 - cur
        gram_acc(gX, lT, xT, L)
        gram_acc(gU, lT, uT, L)
        gram_acc(gPhi, lT, phiT, L)
        if want_du:
            mtm_block(duT, R, lT, L)
            for k in range(L):
                for j in range(NU):
                    du[n0 + k, j] = duT[j, k]
    copy_into(dx0, xb2[cur], NX)


def backward_item(lin, P, theta, io, gmat, dP, gvec, iopt):
    nx, ny, nu = NX, lin[2].shape[0], NU  # lin = (A, C, D, ...): D is Ny x Nx
    blk = iopt[O_CP]
    ndu = blk if io[4].shape[0] != 0 else 0
    bv = (np.zeros(nx), np.zeros(nx), np.zeros(NZ), np.zeros(NZ), np.zeros(NPHI), np.zeros(NZ), np.zeros(NF))
    bm = (np.zeros((nx, blk)), np.zeros((nu, blk)), np.zeros((NPHI, blk)), np.zeros((nx + ny + NZ, blk + 1)),
          np.zeros((nu, ndu)), np.zeros((blk, NPHI)), np.zeros((2, nx)), np.zeros((nx, blk)), np.zeros((NPHI, blk)))
    b3 = (np.zeros((blk, NPHI, NZ)), np.zeros((blk, NZ, NZ)))
    backward_core(lin, P, theta, io, gmat, dP, gvec, iopt, bv, bm, b3, np.zeros(NZ, np.int64), np.zeros((blk, FM_WORK)))


def theta_vjp_item(theta, vtraj, mu, dtheta):
    # dtheta += sum_n (df/dtheta at vtraj[n])' mu[n]
    work = np.zeros(N_WORK)
    for n in range(vtraj.shape[0]):
        nl_vjp_theta(vtraj[n], theta, mu[n], dtheta, work)


# fmt: on
INLINE_TEMPLATES = ("accept_step", "predict", "in_bound", "newton_stop", "newton_plain", "start_item")
_FASTMATH = ', fastmath={"reassoc", "contract"}'  # linalg.BLOCK_TEMPLATES: sums that vectorise
TEMPLATES: tuple[tuple[str, str], ...] = (
    *((name, _FASTMATH) for name in BLOCK_TEMPLATES),
    ("newton_damped", ""),
    ("homotopy", ""),
    ("forward_segment", ""),
    ("backward_core", ""),
    ("backward_item", ", nogil=True"),
    ("theta_vjp_item", ", nogil=True"),
)


@dataclass(frozen=True)
class StepFormulation:
    """The compiled side of a one-step formulation: its hooks, pasted into the generated module.

    ``hooks``: plain Python functions ``fm_prepare``, ``fm_eval``, ``fm_limit``, ``fm_vjp`` (and any
    helpers they call), each compiled ``inline="always"`` (see the module docstring for their
    contracts).  ``constants``: source defining ``NZ``, ``NPHI`` and ``FM_WORK`` (it may use the
    nonlinearity's ``NV``, ``NF``, ``N_WORK``).  ``name`` tells modules apart in error messages.
    """

    name: str
    hooks: tuple[Callable[..., object], ...]
    constants: str
    dependencies: tuple[Path, ...] = field(default=())


@dataclass(frozen=True)
class KernelOptions:
    """Newton and checkpoint settings of the compiled loops.

    ``reltol``/``abstol`` (units of ``z``, volts for DK): a Newton step ``dz`` is converged when
    ``|dz_i| <= reltol |z_i| + abstol`` for all unknowns (or when the contraction-based error
    estimate of the next iterate is below that).  ``max_iter``: plain Newton iterations before
    the fallbacks; ``fallback_iter``: iterations of each damped solve.  ``predictor``:
    'previous', 'linear' (2 z[n-1] - z[n-2]) or 'tangent' (z[n-1] + M^-1 (p[n] - p[n-1])).
    ``checkpoint``: samples per block of the backward pass, and between saved states where not every
    state is saved.  ``state_budget``: bytes of states a forward run with ``save`` may keep (8 Nx per
    sample and batch item); within it every state is saved and the backward recomputes none, above
    it one state per ``checkpoint`` samples is kept (8 Nx / checkpoint bytes per sample) and the
    backward recomputes each block's states from its checkpoint.  ``limit``: the
    formulation's step limiting (SPICE junction limiting for DK).  ``threads``: batch items
    run in parallel on up to this many threads (None: all cores).  ``explicit``: use the
    formulation's explicit solve (``fm_solve``) where it has one; False runs Newton on every sample.
    ``bound``: a Newton solution with some ``|z_i|`` above ``bound`` times the largest of 1, the inputs
    ``|u|`` and the starting unknowns is a failure, reported at once (no fallbacks: DK splits the step): the
    relative test alone accepts a Newton that ran away to 1e34 (units of ``z`` per unit of ``u``; DK:
    volts per volt).  ``early``: the stop rule may also accept ``z + dz`` when ``c |dz|^2``, with ``c`` the
    constant of Newton's quadratic convergence measured on recent samples, is within the tolerance
    (``newton_plain``); False: only the step and contraction tests.
    """

    reltol: float = 1e-10
    abstol: float = 1e-12
    max_iter: int = 50
    fallback_iter: int = 200
    predictor: str = "tangent"
    checkpoint: int = 256
    state_budget: int = 1 << 28
    limit: bool = True
    threads: int | None = None
    explicit: bool = True
    bound: float = math.inf
    early: bool = True

    def arrays(self, save: int, given: bool = False, theta_grad: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(fopt, iopt)`` for the kernels: tolerances, and the integer options ``O_*`` (``save``:
        ``SAVE_NONE``, ``SAVE_CHECKPOINTS`` or ``SAVE_EVERY``)."""
        if self.predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {sorted(PREDICTORS)}, not {self.predictor!r}")
        if self.checkpoint < 1:
            raise ValueError("checkpoint must be >= 1")
        fopt = np.array([self.reltol, self.abstol, self.bound, 1.0], dtype=np.float64)
        ints = (self.max_iter, self.fallback_iter, PREDICTORS[self.predictor], self.checkpoint, save,
                self.limit, given, theta_grad, self.explicit, self.early)
        return fopt, np.array([int(i) for i in ints], dtype=np.int64)


@dataclass
class ForwardResult:
    """Output of :func:`forward`.  ``stats`` columns: iterations, max iterations per sample,
    damped-Newton fallbacks, homotopy fallbacks, first failing sample (-1 if none), samples done."""

    y: np.ndarray  # (batch, T, Ny)
    x_final: np.ndarray  # (batch, Nx)
    warm: np.ndarray  # (batch, W_LU + Nz, Nz) Newton warm start for the next block (rows W_*)
    stats: np.ndarray  # (batch, N_STATS) int64
    v: np.ndarray | None = None  # (batch, T, Nz) the unknowns z (DK: port voltages), saved for backward
    # (batch, T, Nx) every state x[n] (within KernelOptions.state_budget), else (batch, ceil(T / checkpoint),
    # Nx) the states x[0], x[checkpoint], ...
    checkpoints: np.ndarray | None = None

    @property
    def failed(self) -> tuple[int, int] | None:
        """``(batch index, sample index)`` of the earliest Newton failure, or None."""
        bad = np.nonzero(self.stats[:, ST_FAIL] >= 0)[0]
        if bad.size == 0:
            return None
        b = int(bad[np.argmin(self.stats[bad, ST_FAIL])])
        return b, int(self.stats[b, ST_FAIL])


@dataclass
class BackwardResult:
    """Gradients from :func:`backward`: ``dmats`` = those of ``lin`` then of ``P`` (summed over the
    batch), ``du`` (batch, T, Nu), ``dx0``, ``mu = dL/df`` (batch, T, Nf) and, when asked for, ``dtheta``
    (summed over the batch; w.r.t. every theta entry, the derived slots of device vectors included).
    ``du`` and ``mu`` have no samples (batch, 0, .) where ``backward`` was told not to form them."""

    dmats: tuple[np.ndarray, ...]
    du: np.ndarray
    dx0: np.ndarray
    mu: np.ndarray
    dtheta: np.ndarray | None = None


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def run_items(fn: Callable[..., None], items: Sequence[tuple[object, ...]], threads: int | None) -> None:
    """Call the compiled ``fn(*args)`` for every batch item's ``args``, on up to ``threads`` threads.

    The item kernels are compiled with ``nogil=True``; a Python thread pool spreads the batch
    over the cores.  (``numba.prange`` would do the same but costs ~10 s of extra compilation
    per module and its default threading layer must not be entered from two Python threads.)
    """
    global _POOL
    n = min(len(items), threads if threads is not None else (os.cpu_count() or 1))
    if n <= 1:
        for args in items:
            fn(*args)
        return
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="circuitsim-kernel")
        pool = _POOL
    list(pool.map(lambda k: [fn(*args) for args in items[k::n]], range(n)))  # round-robin


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def linear_sizes(lin: Sequence[np.ndarray]) -> tuple[int, int, int]:
    """``(Nx, Nu, Ny)`` of the linear maps ``lin = (A, ..., H)``: from ``A``, ``B`` and ``D``."""
    if len(lin) != 8:
        raise ValueError(f"expected the 8 linear maps A..H, got {len(lin)}")
    if any(np.ndim(m) != 2 for m in lin):
        raise ValueError(f"the linear maps must be matrices, got shapes {[np.shape(m) for m in lin]}")
    return lin[0].shape[0], lin[1].shape[1], lin[3].shape[0]


def sized(module: ModuleType, lin: Sequence[np.ndarray]) -> ModuleType:
    """The module whose loops run ``lin``: ``module`` specialised to the sizes of ``lin``
    (:func:`circuitsim.kernels.codegen.sized_module`; ``Nx``, ``Nu`` become compile-time
    constants), or ``module`` itself where it is sized already or not generated by ``codegen``."""
    from circuitsim.kernels.codegen import sized_module

    return sized_module(module, *linear_sizes(lin)[:2])


def check_shapes(module: ModuleType, lin: Sequence[np.ndarray], u: np.ndarray, x0: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``lin = (A, ..., H)``, ``u`` (batch, T, Nu) and ``x0`` (batch, Nx) fit
    each other and the sizes compiled into ``module`` (``NZ``, ``NPHI``; ``NX``, ``NU`` where it
    has them)."""
    nx, nu, ny = linear_sizes(lin)
    nphi, nz = module.NPHI, module.NZ
    compiled = tuple(getattr(module, k, None) for k in ("NX", "NU"))
    if all(c is not None for c in compiled) and compiled != (nx, nu):
        raise ValueError(f"the linear maps have Nx, Nu = {(nx, nu)} but the module {module.__name__} is "
                         f"compiled for {compiled}")
    want = ((nx, nx), (nx, nu), (nx, nphi), (ny, nx), (ny, nu), (ny, nphi), (nz, nx), (nz, nu))
    for name, shape, m in zip("ABCDEFGH", want, lin):
        if m.shape != shape:
            raise ValueError(f"matrix {name} has shape {m.shape}, expected {shape} (Nx, Nu, Ny = {nx}, {nu}, {ny} "
                             f"from A, B, D; Nz, Nphi = {nz}, {nphi} from the module)")
    if u.ndim != 3 or u.shape[2] != nu:
        raise ValueError(f"u must be (batch, T, {nu}), got {u.shape}")
    if x0.shape != (u.shape[0], nx):
        raise ValueError(f"x0 must be ({u.shape[0]}, {nx}), got {x0.shape}")


def warm_state(v_init: np.ndarray | None, batch: int, nz: int) -> tuple[np.ndarray, int]:
    """The kernel's warm-start array from ``None`` (zeros), unknowns ``(batch|1, Nz)`` or a
    previous block's ``ForwardResult.warm`` ``(batch, W_LU + Nz, Nz)``; and whether it is complete."""
    warm = np.zeros((batch, W_LU + nz, nz))
    if v_init is None:
        return warm, 0
    v_init = np.asarray(v_init, dtype=np.float64)
    if v_init.ndim == 3:
        if v_init.shape != warm.shape:
            raise ValueError(f"warm state must be {warm.shape}, got {v_init.shape}")
        return _c(v_init), 1
    v_init = np.broadcast_to(v_init.reshape(-1, nz) if v_init.ndim == 1 else v_init, (batch, nz))
    warm[:, 0, :] = v_init
    return warm, 0


def save_mode(options: KernelOptions, save: bool, batch: int, T: int, nx: int) -> int:
    """What a forward run keeps for the backward: ``SAVE_NONE``; ``SAVE_EVERY`` (every state) when
    its ``8 batch T nx`` bytes fit ``options.state_budget``; else ``SAVE_CHECKPOINTS``."""
    if not save:
        return SAVE_NONE
    return SAVE_EVERY if 8 * batch * T * nx <= options.state_budget else SAVE_CHECKPOINTS


def saved_states(options: KernelOptions, mode: int, T: int) -> int:
    """Rows of ``ForwardResult.checkpoints`` per batch item for a save ``mode`` over ``T`` samples."""
    cp = options.checkpoint
    return {SAVE_NONE: 0, SAVE_EVERY: T, SAVE_CHECKPOINTS: (T + cp - 1) // cp}[mode]


def forward(module: ModuleType, lin: Sequence[np.ndarray], P: Sequence[np.ndarray], theta: np.ndarray,
        u: np.ndarray, x0: np.ndarray, z_init: np.ndarray | None = None, options: KernelOptions | None = None,
        save: bool = True, y_out: np.ndarray | None = None, u_max: Sequence[float] | None = None
) -> ForwardResult:
    """Run a formulation's recursion over ``u`` (batch, T, Nu) from states ``x0`` (batch, Nx).

    ``module``: the generated module (:func:`circuitsim.kernels.codegen.step_module`); ``lin``:
    ``(A, ..., H)``; ``P``: the formulation's matrices.  ``save=True`` also returns the trajectory
    of ``z`` and the states for :func:`backward` (every state within ``options.state_budget``,
    else one per ``options.checkpoint`` samples).  Pass ``ForwardResult.warm`` and
    ``x_final`` of one block as ``z_init`` and ``x0`` of the next for streaming: the result is
    identical to one long run.  Newton failures are reported in ``stats`` (never raised); the outputs of
    an item from its failing sample on are NaN.  ``y_out``: a float64 array (batch, T, Ny) whose items
    ``y_out[b]`` are C-contiguous (e.g. ``buf[:, 1:]`` of a ``(batch, 1 + T, Ny)`` buffer), written in
    place of a new one: the caller's layout without a copy.  ``u_max``: the largest ``|u|`` of each item where
    the caller knows it (the bound on ``|z|``, ``options.bound``, scales with it): saves a pass over ``u``.
    """
    options = options or KernelOptions()
    lin = tuple(_c(m) for m in lin)
    P = tuple(_c(m) for m in P)
    u, x0, theta = _c(u), _c(x0), _c(theta).reshape(-1)
    module = sized(module, lin)
    check_shapes(module, lin, u, x0)
    batch, T = u.shape[:2]
    nz, nx, ny = module.NZ, lin[0].shape[0], lin[3].shape[0]
    warm, given = warm_state(z_init, batch, nz)
    mode = save_mode(options, save, batch, T, nx)
    fopt, iopt = options.arrays(mode, bool(given))
    if y_out is None:
        y = np.empty((batch, T, ny))  # every row written by the run (the rows after a failure: NaN, below)
    else:
        y = y_out
        if y.shape != (batch, T, ny) or y.dtype != np.float64 or not all(y[b].flags.c_contiguous for b in range(batch)):
            raise ValueError(f"y_out must be float64 ({batch}, {T}, {ny}) with C-contiguous items, got "
                             f"{y.dtype} {y.shape}")
    ztraj = np.empty((batch, T if save else 0, nz))  # every row written by the run (np.empty: no page zeroing)
    ckpt = np.empty((batch, saved_states(options, mode, T), nx))
    xfin = np.zeros((batch, nx))
    warm_out = np.zeros_like(warm)
    stats = np.zeros((batch, N_STATS), dtype=np.int64)
    if T == 0:  # no sample run: none failed (the kernels set ST_FAIL to -1 themselves)
        stats[:, ST_FAIL] = -1
        return ForwardResult(y, x0.copy(), warm, stats, ztraj if save else None, ckpt if save else None)
    fopts = [fopt] * batch
    if math.isfinite(options.bound) and nz > 0 and u.size:  # each item's largest input, for the bound on |z|
        fopts = [fopt.copy() for _ in range(batch)]
        for b, f in enumerate(fopts):
            f[F_UMAX] = max(1.0, float(u[b].max()), -float(u[b].min())) if u_max is None else max(1.0, float(u_max[b]))
    lin_t = tuple(np.ascontiguousarray(m.T) for m in lin)  # forward_segment reads A' ... H' row by row (tmv3)
    items = [
        (lin_t, P, theta, (u[b], y[b], ztraj[b], ckpt[b]), x0[b], xfin[b], warm[b], warm_out[b], stats[b], fopts[b],
         iopt)
        for b in range(batch)
    ]
    # forward_item has no fallbacks (a fifth of a first compile, most circuits never need them): the
    # items that stopped for them (stats[ST_DAMPED] = -1) run again from the start with forward_item_full
    # (identical up to that sample), which runs from then on in this process
    full = getattr(module, "_need_fallbacks", False)
    run_items(module.forward_item_full if full else module.forward_item, items, options.threads)
    redo = [item for item, st in zip(items, stats) if st[ST_DAMPED] < 0]
    if redo:
        module._need_fallbacks = True
        run_items(module.forward_item_full, redo, options.threads)
    for b, st in enumerate(stats):
        if st[ST_FAIL] >= 0:
            y[b, st[ST_FAIL] :] = math.nan  # rows the run did not reach
    return ForwardResult(y, xfin, warm_out, stats, ztraj if save else None, ckpt if save else None)


def backward(module: ModuleType, lin: Sequence[np.ndarray], P: Sequence[np.ndarray], theta: np.ndarray,
        u: np.ndarray, saved: ForwardResult, gy: np.ndarray, gx_final: np.ndarray | None = None,
        options: KernelOptions | None = None, theta_grad: bool = False, want_du: bool = True, want_mu: bool = True
) -> BackwardResult:
    """Adjoint of :func:`forward` (module docstring) from the ``saved`` trajectory, given ``gy =
    dL/dy`` (batch, T, Ny) and optionally ``gx_final = dL/dx[T]`` (batch, Nx).  With ``theta_grad``
    the loop also accumulates ``dtheta = dL/dtheta`` through the formulation's ``fm_vjp``.
    ``want_du`` / ``want_mu`` False: ``du`` / ``mu`` are not formed (returned as zeros, (batch, 0, .)).
    ``options``: those of the forward run (its ``checkpoint`` says where the saved states lie)."""
    options = options or KernelOptions()
    lin = tuple(_c(m) for m in lin)
    P = tuple(_c(m) for m in P)
    u, theta = _c(u), _c(theta).reshape(-1)
    module = sized(module, lin)
    batch, T = u.shape[:2]
    A, B, C, D, E, F, G, H = lin
    nx, nu, ny, nz, nphi = A.shape[0], B.shape[1], D.shape[0], module.NZ, module.NPHI
    gy = _c(gy)
    gx = np.zeros((batch, nx)) if gx_final is None else _c(gx_final)
    check_shapes(module, lin, u, gx)
    # the kernel's cotangent rows l[n] = (xbar[n+1], ybar[n], w[n]) and R = (B; E; H): ubar[n] = R' l[n]
    q = nx + ny + nz
    R = np.ascontiguousarray(np.concatenate([B, E, H], axis=0))
    gmat = (np.zeros((batch, q, nx)), np.zeros((batch, q, nu)), np.zeros((batch, q, nphi)))
    dP = tuple(np.zeros((batch,) + m.shape) for m in P)
    # the kernel writes every row of du, mu (when asked for) and dx0: np.empty, no zeroed pages (the rest accumulate)
    du = np.empty((batch, T if want_du else 0, nu))
    dx0 = np.empty((batch, nx))
    mu = np.empty((batch, T if want_mu else 0, module.NF))
    dtheta = np.zeros((batch, theta.size if theta_grad else 0))
    if T > 0:
        if saved.v is None or saved.checkpoints is None:
            raise ValueError("backward needs the trajectory of forward(save=True)")
        mode = SAVE_EVERY if saved.checkpoints.shape[1] == T else SAVE_CHECKPOINTS
        if saved.checkpoints.shape[1] != saved_states(options, mode, T):
            raise ValueError(f"{saved.checkpoints.shape[1]} saved states do not fit {T} samples with "
                             f"checkpoint={options.checkpoint}: pass the forward run's options")
        _, iopt = options.arrays(mode, theta_grad=theta_grad)
        zt, ck = _c(saved.v), _c(saved.checkpoints)
        maps = (A, C, D, F, G, R, *(np.ascontiguousarray(m.T) for m in (A, B, C)))  # backward_core's (lin)
        items = [
            (maps, P, theta, (u[b], zt[b], ck[b], gy[b], du[b], mu[b]), tuple(g[b] for g in gmat),
             tuple(d[b] for d in dP), (gx[b], dx0[b], dtheta[b]), iopt)
            for b in range(batch)
        ]
        run_items(module.backward_item, items, options.threads)
    else:
        dx0 = gx.copy()
    gX, gU, gPhi = (g.sum(0) for g in gmat)
    rows = (slice(0, nx), slice(nx, nx + ny), slice(nx + ny, q))  # xbar, ybar, w
    dlin = (gX[rows[0]], gU[rows[0]], gPhi[rows[0]], gX[rows[1]], gU[rows[1]], gPhi[rows[1]], gX[rows[2]],
            gU[rows[2]])
    dmats = tuple(np.ascontiguousarray(d) for d in dlin) + tuple(d.sum(0) for d in dP)
    return BackwardResult(dmats, du, dx0, mu, dtheta.sum(0) if theta_grad else None)


def theta_vjp(module: ModuleType, theta: np.ndarray, v: np.ndarray, mu: np.ndarray, threads: int | None = None
              ) -> np.ndarray:
    """``sum_{b,n} (df/dtheta at v[b, n])' mu[b, n]`` with the compiled ``nl_vjp_theta`` of ``module``.

    ``v`` (batch, T, Nv) port voltages (volts), ``mu`` (batch, T, Nf) adjoints of ``f``.
    """
    theta, v, mu = _c(theta).reshape(-1), _c(v), _c(mu)
    if v.shape[:2] != mu.shape[:2] or v.shape[2] != module.NV or mu.shape[2] != module.NF:
        raise ValueError(f"v {v.shape} and mu {mu.shape} do not fit the nonlinearity")
    out = np.zeros((v.shape[0], theta.size))
    run_items(module.theta_vjp_item, [(theta, v[b], mu[b], out[b]) for b in range(v.shape[0])], threads)
    return out.sum(0)


__all__ = [
    "BackwardResult",
    "ForwardResult",
    "KernelOptions",
    "StepFormulation",
    "backward",
    "forward",
    "theta_vjp",
    "warm_state",
]
