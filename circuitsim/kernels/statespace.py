"""Compiled per-sample loops for the nonlinear state-space recursion (DK method).

Per sample ``n`` (Yeh 2009, ch. 4; Holters & Zölzer, DAFx-11)::

    p[n]   = G x[n] + H u[n]                       (Nv)
    v[n]   solves  g(v) = p[n] + K f(v) - v = 0    (Nv nonlinear port voltages)
    y[n]   = D x[n] + E u[n] + F f(v[n])           (Ny)
    x[n+1] = A x[n] + B u[n] + C f(v[n])           (Nx)

The forward loop runs a Newton solve per sample (predictor from the previous samples,
SPICE junction limiting, then fallbacks: damped Newton with backtracking from the previous
solution, then homotopy in ``p`` from ``p[n-1]`` to ``p[n]``).  The backward loop is the
discrete adjoint of the recursion at the converged solutions (implicit function theorem),
running backwards in time and recomputing ``x`` from checkpoints; it never differentiates
through Newton iterations.  With ``J = df/dv`` at ``v[n]`` and ``M = I - K J``::

    dv = M^-1 (dp + dK f + K df_direct),     df_total = df_direct + J dv

so with the cotangent ``gf = F' ybar[n] + C' xbar[n+1]`` of the total ``f[n]``::

    w       = M^-T J' gf            (= dL/dp[n])
    mu[n]   = gf + K' w             (= dL/d(direct perturbation of f[n]))
    dtheta += (df/dtheta at v[n])' mu[n]       (nl_vjp_theta, when theta_grad is asked for)
    xbar[n] = A' xbar[n+1] + D' ybar[n] + G' w
    ubar[n] = B' xbar[n+1] + E' ybar[n] + H' w
    dA += xbar[n+1] x[n]'   dB += xbar[n+1] u[n]'   dC += xbar[n+1] f[n]'
    dD += ybar[n] x[n]'     dE += ybar[n] u[n]'     dF += ybar[n] f[n]'
    dG += w x[n]'           dH += w u[n]'           dK += w f[n]'

The loop bodies below are plain Python: :func:`kernel_source` pastes them, decorated with
``numba.njit(cache=True)``, into the module generated for each nonlinearity (which defines
``nl_eval``, ``nl_prepare``, ``nl_limit``, ``nl_vjp_theta`` and the constants ``NV``, ``NF``, ``N_WORK``,
``N_LC``), because numba cannot cache a function that receives another compiled function as
an argument.  Use the Python wrappers :func:`forward` and :func:`backward`; batch items run
in parallel on a thread pool (the item kernels release the GIL).

Performance notes (measured, see benchmarks/bench_kernel.py): the hot loops
(:func:`forward_segment`, :func:`backward_core`) are single functions with every array
``borrow``-ed, because numba's atomic reference counting of array arguments at each call of
a function with branches costs ~100 ns per sample; the fallbacks live in separate functions
that the hot loop returns to its caller to run.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

if TYPE_CHECKING:
    from circuitsim.kernels.nonlinearity import Nonlinearity

# ----------------------------------------------------------------------------- borrowed views


@intrinsic
def borrow(typingctx, arr):
    """A view of ``arr`` without reference counting (NULL meminfo), for use inside numba.

    numba increments and decrements (atomically) the reference count of every array passed to
    an inlined function with branches, once per call; in a Newton loop that is most of the
    time per sample.  A borrowed view makes those operations no-ops.  Valid only while the
    caller keeps ``arr`` alive (here: arguments of the running kernel).
    """
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, value=args[0])
        dst = context.make_array(sig.return_type)(context, builder)
        for name in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(dst, name, getattr(src, name))
        dst.meminfo = cgutils.get_null_value(dst.meminfo.type)
        dst.parent = cgutils.get_null_value(dst.parent.type)
        return dst._getvalue()

    return arr(arr), codegen


# ----------------------------------------------------------------------------- placeholders
# The generated module defines these; they exist here only so this file reads (and lints) whole.
N_WORK = 1
N_LC = 1
NV = 0  # number of ports (compile-time constant in the generated module)
NF = 0  # number of nonlinearity outputs


def nl_eval(v, theta, f, J, work):  # pragma: no cover - replaced in generated code
    raise NotImplementedError


def nl_prepare(theta, lc):  # pragma: no cover
    raise NotImplementedError


def nl_limit(vold, vnew, lc):  # pragma: no cover
    raise NotImplementedError


def nl_vjp_theta(v, theta, mu, gtheta, work):  # pragma: no cover
    raise NotImplementedError


# ----------------------------------------------------------------------------- status codes
ST_ITER, ST_MAXITER, ST_DAMPED, ST_HOMOTOPY, ST_FAIL, ST_SAMPLES = range(6)
N_STATS = 6
PREDICTORS = {"previous": 0, "linear": 1, "tangent": 2}


# fmt: off
# ----------------------------------------------------------------------------- kernels (templates)


def lu_factor(M, piv, n):
    # in-place LU with partial pivoting (Golub & Van Loan, alg. 3.4.1); False if singular
    for k in range(n):
        r = k
        pmax = abs(M[k, k])
        for i in range(k + 1, n):
            a = abs(M[i, k])
            if a > pmax:
                pmax = a
                r = i
        if not (pmax > 0.0 and pmax < math.inf):
            return False
        piv[k] = r
        if r != k:
            for j in range(n):
                t = M[k, j]
                M[k, j] = M[r, j]
                M[r, j] = t
        inv = 1.0 / M[k, k]
        for i in range(k + 1, n):
            lik = M[i, k] * inv
            M[i, k] = lik
            for j in range(k + 1, n):
                M[i, j] -= lik * M[k, j]
    return True


def lu_solve(M, piv, b, n):
    # solve (LU) x = P b in place, with the factors of lu_factor
    for k in range(n):
        r = piv[k]
        if r != k:
            t = b[k]
            b[k] = b[r]
            b[r] = t
    for i in range(n):
        s = b[i]
        for j in range(i):
            s -= M[i, j] * b[j]
        b[i] = s
    for i in range(n - 1, -1, -1):
        s = b[i]
        for j in range(i + 1, n):
            s -= M[i, j] * b[j]
        b[i] = s / M[i, i]


def residual_and_matrix(p, v, f, J, K, g, LU, nv, nf):
    # g = p + K f - v and LU <- M = I - K J (dg/dv = -M)
    n2 = 0.0
    for i in range(nv):
        s = p[i] - v[i]
        for k in range(nf):
            s += K[i, k] * f[k]
        g[i] = s
        n2 += s * s
        for j in range(nv):
            m = 1.0 if i == j else 0.0
            for k in range(nf):
                m -= K[i, k] * J[k, j]
            LU[i, j] = m
    return n2


def newton_step(g, LU, piv, dv, nv):
    # dv = M^-1 g; False when M is singular
    if nv == 1:
        m = LU[0, 0]
        if not (abs(m) > 0.0 and abs(m) < math.inf):
            return False
        piv[0] = 0
        dv[0] = g[0] / m
        return True
    if not lu_factor(LU, piv, nv):
        return False
    for i in range(nv):
        dv[i] = g[i]
    lu_solve(LU, piv, dv, nv)
    return True


def scaled_step(dv, v, reltol, abstol, nv):
    # max_i |dv_i| / (reltol |v_i| + abstol): <= 1 means converged; inf/nan -> inf
    s = 0.0
    for i in range(nv):
        r = abs(dv[i]) / (reltol * abs(v[i]) + abstol)
        if not (r <= 1e300):
            return math.inf
        if r > s:
            s = r
    return s


def accept_step(v, f, J, dv, nv, nf):
    # v += dv and f += J dv: the linearised f is consistent with v = p + K f to rounding and
    # differs from f(v + dv) by O(|dv|^2)
    for k in range(nf):
        s = f[k]
        for j in range(nv):
            s += J[k, j] * dv[j]
        f[k] = s
    for i in range(nv):
        v[i] += dv[i]


def newton_damped(
        p, v, f, J, LU, piv, g, dv, vt, f2, J2, g2, K, theta, work, lc, reltol, abstol, max_iter, use_limit
):
    # Newton with junction limiting and backtracking on |g|^2 (Armijo; Dennis & Schnabel 6.3)
    nv = v.shape[0]
    nf = f.shape[0]
    nl_eval(v, theta, f, J, work)
    n2 = residual_and_matrix(p, v, f, J, K, g, LU, nv, nf)
    if not (n2 < math.inf):
        return -1
    for it in range(1, max_iter + 1):
        if it > 1:
            residual_and_matrix(p, v, f, J, K, g, LU, nv, nf)
        if not newton_step(g, LU, piv, dv, nv):
            return -it
        s = scaled_step(dv, v, reltol, abstol, nv)
        if s == math.inf:
            return -it
        if s <= 1.0:
            accept_step(v, f, J, dv, nv, nf)
            return it
        for i in range(nv):
            vt[i] = v[i] + dv[i]
        if use_limit:
            nl_limit(v, vt, lc)
        for i in range(nv):
            dv[i] = vt[i] - v[i]
        lam = 1.0
        ok = False
        n2t = math.inf
        for _ in range(40):
            for i in range(nv):
                vt[i] = v[i] + lam * dv[i]
            nl_eval(vt, theta, f2, J2, work)
            n2t = 0.0
            for i in range(nv):
                r = p[i] - vt[i]
                for k in range(nf):
                    r += K[i, k] * f2[k]
                g2[i] = r
                n2t += r * r
            if n2t <= (1.0 - 1e-4 * lam) * n2:
                ok = True
                break
            lam *= 0.5
        if not ok:
            return -it
        for i in range(nv):
            v[i] = vt[i]
        for k in range(nf):
            f[k] = f2[k]
            for j in range(nv):
                J[k, j] = J2[k, j]
        n2 = n2t
    return -max_iter


def homotopy(p, pprev, v1, v, f, J, LU, piv, g, dv, vt, f2, J2, g2, ptmp, vs, K, theta, work, lc, reltol,
        abstol, max_iter, use_limit):
    # continuation in p from p[n-1] (where v[n-1] is the solution) to p[n], adaptive steps
    nv = v.shape[0]
    total = 0
    lam = 0.0
    dl = 0.125
    for i in range(nv):
        vs[i] = v1[i]
    while lam < 1.0:
        lt = min(1.0, lam + dl)
        for i in range(nv):
            ptmp[i] = pprev[i] + lt * (p[i] - pprev[i])
            v[i] = vs[i]
        it = newton_damped(ptmp, v, f, J, LU, piv, g, dv, vt, f2, J2, g2, K, theta, work, lc, reltol, abstol,
            max_iter, use_limit)
        total += abs(it)
        if it > 0:
            lam = lt
            for i in range(nv):
                vs[i] = v[i]
            dl = min(2.0 * dl, 0.5)
        else:
            dl *= 0.25
            if dl < 1e-7:
                return -total
    return total


def forward_segment(n0, solved, b, A, B, C, D, E, F, G, H, K, theta, u, y, vtraj, ckpt, x, xn, p, v, v1, v2,
        pprev, g, dv, vt, f, J, LU, piv, work, lc, counters, reltol, abstol, max_iter, predictor, cp, save,
        use_limit):
    # The hot loop: samples n0.. until plain Newton fails (returns that sample) or T.  Everything
    # is written out in this one function: numba increfs/decrefs array arguments at every call
    # of a function with loops (about 100 ns per sample), so only straight-line nl_eval/nl_limit
    # are called, and every array is borrowed (no reference counting in the loop).  With
    # solved=True, sample n0 was solved by a fallback (v, f, LU are set).
    A = borrow(A)
    B = borrow(B)
    C = borrow(C)
    D = borrow(D)
    E = borrow(E)
    F = borrow(F)
    G = borrow(G)
    H = borrow(H)
    K = borrow(K)
    theta = borrow(theta)
    u = borrow(u)
    y = borrow(y)
    vtraj = borrow(vtraj)
    ckpt = borrow(ckpt)
    x = borrow(x)
    xn = borrow(xn)
    p = borrow(p)
    v = borrow(v)
    v1 = borrow(v1)
    v2 = borrow(v2)
    pprev = borrow(pprev)
    g = borrow(g)
    dv = borrow(dv)
    vt = borrow(vt)
    f = borrow(f)
    J = borrow(J)
    LU = borrow(LU)
    piv = borrow(piv)
    work = borrow(work)
    lc = borrow(lc)
    counters = borrow(counters)
    nx = A.shape[0]
    nu = B.shape[1]
    nf = NF
    ny = D.shape[0]
    nv = NV
    T = u.shape[1]
    n_iter = 0
    n_max = counters[1]
    for n in range(n0, T):
        if save and n % cp == 0:
            for i in range(nx):
                ckpt[b, n // cp, i] = x[i]
        if nv > 0 and not (solved and n == n0):
            for i in range(nv):
                s = 0.0
                for j in range(nx):
                    s += G[i, j] * x[j]
                for j in range(nu):
                    s += H[i, j] * u[b, n, j]
                p[i] = s
            # predictor
            if predictor == 2 and counters[2] != 0:
                # tangent: v[n-1] + M^-1 (p[n] - p[n-1]), M = I - K J from the last solve
                for i in range(nv):
                    dv[i] = p[i] - pprev[i]
                if nv == 1:
                    dv[0] = dv[0] / LU[0, 0]
                else:
                    for k in range(nv):
                        r = piv[k]
                        if r != k:
                            t = dv[k]
                            dv[k] = dv[r]
                            dv[r] = t
                    for i in range(nv):
                        s = dv[i]
                        for j in range(i):
                            s -= LU[i, j] * dv[j]
                        dv[i] = s
                    for i in range(nv - 1, -1, -1):
                        s = dv[i]
                        for j in range(i + 1, nv):
                            s -= LU[i, j] * dv[j]
                        dv[i] = s / LU[i, i]
                for i in range(nv):
                    v[i] = v1[i] + dv[i]
            elif predictor == 1:
                for i in range(nv):
                    v[i] = 2.0 * v1[i] - v2[i]
            else:
                for i in range(nv):
                    v[i] = v1[i]
            # Newton on g(v) = p + K f(v) - v with SPICE junction limiting.  Converged when the
            # scaled step max |dv_i| / (reltol |v_i| + abstol) is <= 1, or when the error estimate
            # of the next iterate rate/(1 - rate) * step (rate = step_k / step_(k-1), a contraction
            # estimate; Deuflhard 2004, sec. 2.1) is.  The accepted v + dv comes with the
            # linearised f + J dv, which satisfies v = p + K f exactly (to rounding).
            result = 0
            prev = math.inf
            for it in range(1, max_iter + 1):
                nl_eval(v, theta, f, J, work)
                for i in range(nv):
                    s = p[i] - v[i]
                    for k in range(nf):
                        s += K[i, k] * f[k]
                    g[i] = s
                    for j in range(nv):
                        m = 1.0 if i == j else 0.0
                        for k in range(nf):
                            m -= K[i, k] * J[k, j]
                        LU[i, j] = m
                if nv == 1:
                    piv[0] = 0
                    dv[0] = g[0] / LU[0, 0]
                else:
                    # LU with partial pivoting (Golub & Van Loan, alg. 3.4.1), then the solve
                    singular = False
                    for k in range(nv):
                        r = k
                        pmax = abs(LU[k, k])
                        for i in range(k + 1, nv):
                            a = abs(LU[i, k])
                            if a > pmax:
                                pmax = a
                                r = i
                        if not (pmax > 0.0):
                            singular = True
                            break
                        piv[k] = r
                        if r != k:
                            for j in range(nv):
                                t = LU[k, j]
                                LU[k, j] = LU[r, j]
                                LU[r, j] = t
                        inv = 1.0 / LU[k, k]
                        for i in range(k + 1, nv):
                            lik = LU[i, k] * inv
                            LU[i, k] = lik
                            for j in range(k + 1, nv):
                                LU[i, j] -= lik * LU[k, j]
                    if singular:
                        break
                    for i in range(nv):
                        dv[i] = g[i]
                    for k in range(nv):
                        r = piv[k]
                        if r != k:
                            t = dv[k]
                            dv[k] = dv[r]
                            dv[r] = t
                    for i in range(nv):
                        s = dv[i]
                        for j in range(i):
                            s -= LU[i, j] * dv[j]
                        dv[i] = s
                    for i in range(nv - 1, -1, -1):
                        s = dv[i]
                        for j in range(i + 1, nv):
                            s -= LU[i, j] * dv[j]
                        dv[i] = s / LU[i, i]
                step = 0.0
                for i in range(nv):
                    r = abs(dv[i]) / (reltol * abs(v[i]) + abstol)
                    if not (r <= 1e300):
                        step = math.inf
                    elif r > step:
                        step = r
                if step == math.inf:
                    break
                rate = step / prev
                if step <= 1.0 or (prev < math.inf and rate < 0.5 and step * rate <= 1.0 - rate):
                    for k in range(nf):
                        s = f[k]
                        for j in range(nv):
                            s += J[k, j] * dv[j]
                        f[k] = s
                    for i in range(nv):
                        v[i] += dv[i]
                    result = it
                    break
                for i in range(nv):
                    vt[i] = v[i] + dv[i]
                prev = step
                if use_limit:
                    nl_limit(v, vt, lc)
                    for i in range(nv):
                        if vt[i] != v[i] + dv[i]:
                            prev = math.inf  # a limited step says nothing about the rate
                for i in range(nv):
                    v[i] = vt[i]
            if result == 0:
                counters[0] += n_iter + max_iter
                counters[1] = n_max
                return n
            n_iter += result
            if result > n_max:
                n_max = result
            counters[2] = 1
        elif nv == 0:
            nl_eval(v, theta, f, J, work)
        for i in range(ny):
            s = 0.0
            for j in range(nx):
                s += D[i, j] * x[j]
            for j in range(nu):
                s += E[i, j] * u[b, n, j]
            for k in range(nf):
                s += F[i, k] * f[k]
            y[b, n, i] = s
        for i in range(nx):
            s = 0.0
            for j in range(nx):
                s += A[i, j] * x[j]
            for j in range(nu):
                s += B[i, j] * u[b, n, j]
            for k in range(nf):
                s += C[i, k] * f[k]
            xn[i] = s
        for i in range(nx):
            x[i] = xn[i]
        for i in range(nv):
            v2[i] = v1[i]
            v1[i] = v[i]
            pprev[i] = p[i]
            if save:
                vtraj[b, n, i] = v[i]
    counters[0] += n_iter
    counters[1] = n_max
    return T


def forward_item(b, A, B, C, D, E, F, G, H, K, theta, u, x0, warm_in, warm_given, y, vtraj, ckpt, xfin,
        warm_out, stats, fopt, iopt):
    nx = A.shape[0]
    nf = C.shape[1]
    nv = G.shape[0]
    T = u.shape[1]
    reltol = fopt[0]
    abstol = fopt[1]
    max_iter = iopt[0]
    fb_iter = iopt[1]
    x = np.empty(nx)
    xn = np.empty(nx)
    p = np.zeros(nv)
    v = np.zeros(nv)
    v1 = np.empty(nv)
    v2 = np.empty(nv)
    pprev = np.empty(nv)
    g = np.empty(nv)
    dv = np.empty(nv)
    vt = np.empty(nv)
    g2 = np.empty(nv)
    ptmp = np.empty(nv)
    vs = np.empty(nv)
    f = np.zeros(nf)
    f2 = np.zeros(nf)
    J = np.zeros((nf, nv))
    J2 = np.zeros((nf, nv))
    LU = np.zeros((nv, nv))
    piv = np.zeros(nv, np.int64)
    work = np.zeros(N_WORK)
    lc = np.zeros(N_LC)
    counters = np.zeros(3, np.int64)  # iterations, max iterations, "LU holds M of the last sample"
    nl_prepare(theta, lc)
    for i in range(nx):
        x[i] = x0[b, i]
    # warm state rows: v[n-1], v[n-2], p[n-1], pivots (-1: no LU), LU of M at v[n-1]
    for i in range(nv):
        v1[i] = warm_in[b, 0, i]
    if warm_given:
        for i in range(nv):
            v2[i] = warm_in[b, 1, i]
            pprev[i] = warm_in[b, 2, i]
            piv[i] = np.int64(warm_in[b, 3, i])
            for j in range(nv):
                LU[i, j] = warm_in[b, 4 + i, j]
        counters[2] = 1 if nv > 0 and warm_in[b, 3, 0] >= 0.0 else 0
    elif nv > 0:
        # v[-1] = v_init solves g = 0 exactly for p[-1] = v_init - K f(v_init)
        nl_eval(v1, theta, f, J, work)
        for i in range(nv):
            v2[i] = v1[i]
            s = v1[i]
            for k in range(nf):
                s -= K[i, k] * f[k]
            pprev[i] = s
            for j in range(nv):
                m = 1.0 if i == j else 0.0
                for k in range(nf):
                    m -= K[i, k] * J[k, j]
                LU[i, j] = m
        counters[2] = 1 if lu_factor(LU, piv, nv) else 0
    n_damped = 0
    n_homotopy = 0
    fail = -1
    n = 0
    solved = False
    while True:
        n = forward_segment(n, solved, b, A, B, C, D, E, F, G, H, K, theta, u, y, vtraj, ckpt, x, xn, p, v,
            v1, v2, pprev, g, dv, vt, f, J, LU, piv, work, lc, counters, reltol, abstol, max_iter, iopt[2],
            iopt[3], iopt[4], iopt[5])
        if n >= T:
            break
        # fallbacks for sample n (p[n] is in p): damped Newton from v[n-1], then homotopy
        n_damped += 1
        for i in range(nv):
            v[i] = v1[i]
        it = newton_damped(
            p, v, f, J, LU, piv, g, dv, vt, f2, J2, g2, K, theta, work, lc, reltol, abstol, fb_iter, iopt[5]
        )
        if it < 0:
            counters[0] -= it
            n_homotopy += 1
            it = homotopy(p, pprev, v1, v, f, J, LU, piv, g, dv, vt, f2, J2, g2, ptmp, vs, K, theta, work, lc,
                reltol, abstol, fb_iter, iopt[5])
        if it < 0:
            counters[0] -= it
            fail = n
            break
        counters[0] += it
        if it > counters[1]:
            counters[1] = it
        counters[2] = 1
        solved = True
    for i in range(nx):
        xfin[b, i] = x[i]
    for i in range(nv):
        warm_out[b, 0, i] = v1[i]
        warm_out[b, 1, i] = v2[i]
        warm_out[b, 2, i] = pprev[i]
        warm_out[b, 3, i] = np.float64(piv[i]) if counters[2] != 0 else -1.0
        for j in range(nv):
            warm_out[b, 4 + i, j] = LU[i, j]
    stats[b, 0] = counters[0]
    stats[b, 1] = counters[1]
    stats[b, 2] = n_damped
    stats[b, 3] = n_homotopy
    stats[b, 4] = fail
    stats[b, 5] = T if fail < 0 else fail


def backward_item(b, A, B, C, D, E, F, G, H, K, theta, u, vtraj, ckpt, gy, gx, dA, dB, dC, dD, dE, dF, dG, dH,
        dK, du, dx0, mu, dtheta, want_theta, iopt):
    nx = A.shape[0]
    cp = iopt[3]
    backward_core(b, A, B, C, D, E, F, G, H, K, theta, u, vtraj, ckpt, gy, gx, dA, dB, dC, dD, dE, dF, dG, dH,
        dK, du, dx0, mu, dtheta, want_theta, cp, np.empty((cp, nx)), np.zeros((cp, NF)), np.zeros((cp, NF, NV)),
        np.zeros(N_WORK), np.empty(nx), np.empty(nx), np.empty(nx), np.empty(nx), np.empty(NF), np.empty(NV),
        np.empty((NV, NV)), np.zeros(NV, np.int64), np.zeros(NV), np.zeros(NF), np.zeros((NF, NV)), np.zeros(NF))


def theta_vjp_item(b, theta, vtraj, mu, dtheta):
    # dtheta[b] += sum_n (df/dtheta at vtraj[b, n])' mu[b, n]
    work = np.zeros(N_WORK)
    vc = np.zeros(NV)
    mq = np.zeros(NF)
    for n in range(vtraj.shape[1]):
        for i in range(NV):
            vc[i] = vtraj[b, n, i]
        for q in range(NF):
            mq[q] = mu[b, n, q]
        nl_vjp_theta(vc, theta, mq, dtheta[b], work)


def backward_core(b, A, B, C, D, E, F, G, H, K, theta, u, vtraj, ckpt, gy, gx, dA, dB, dC, dD, dE, dF, dG, dH,
        dK, du, dx0, mu, dtheta, want_theta, cp, xs, fs, Js, work, x, xn, xbar, xbn, gf, w, Mt, piv, vc, fc, Jc,
        mq):
    # one batch item of the adjoint loop (see the module docstring); all arrays borrowed, as in
    # forward_segment, and no calls but the straight-line nl_eval
    A = borrow(A)
    B = borrow(B)
    C = borrow(C)
    D = borrow(D)
    E = borrow(E)
    F = borrow(F)
    G = borrow(G)
    H = borrow(H)
    K = borrow(K)
    theta = borrow(theta)
    u = borrow(u)
    vtraj = borrow(vtraj)
    ckpt = borrow(ckpt)
    gy = borrow(gy)
    gx = borrow(gx)
    dA = borrow(dA)
    dB = borrow(dB)
    dC = borrow(dC)
    dD = borrow(dD)
    dE = borrow(dE)
    dF = borrow(dF)
    dG = borrow(dG)
    dH = borrow(dH)
    dK = borrow(dK)
    du = borrow(du)
    dx0 = borrow(dx0)
    mu = borrow(mu)
    dtheta = borrow(dtheta)
    mq = borrow(mq)
    xs = borrow(xs)
    fs = borrow(fs)
    Js = borrow(Js)
    work = borrow(work)
    x = borrow(x)
    xn = borrow(xn)
    xbar = borrow(xbar)
    xbn = borrow(xbn)
    gf = borrow(gf)
    w = borrow(w)
    Mt = borrow(Mt)
    piv = borrow(piv)
    vc = borrow(vc)
    fc = borrow(fc)
    Jc = borrow(Jc)
    nx = A.shape[0]
    nu = B.shape[1]
    nf = NF
    ny = D.shape[0]
    nv = NV
    T = u.shape[1]
    nck = (T + cp - 1) // cp
    for i in range(nx):
        xbar[i] = gx[b, i]
    for c in range(nck - 1, -1, -1):
        n0 = c * cp
        n1 = min(T, n0 + cp)
        # recompute x[n], f[n], J[n] over the block from its checkpoint (no Newton: v is stored)
        for i in range(nx):
            x[i] = ckpt[b, c, i]
        for n in range(n0, n1):
            k = n - n0
            for i in range(nx):
                xs[k, i] = x[i]
            for i in range(nv):
                vc[i] = vtraj[b, n, i]
            nl_eval(vc, theta, fc, Jc, work)
            for q in range(nf):
                fs[k, q] = fc[q]
                for i in range(nv):
                    Js[k, q, i] = Jc[q, i]
            for i in range(nx):
                s = 0.0
                for j in range(nx):
                    s += A[i, j] * x[j]
                for j in range(nu):
                    s += B[i, j] * u[b, n, j]
                for q in range(nf):
                    s += C[i, q] * fs[k, q]
                xn[i] = s
            for i in range(nx):
                x[i] = xn[i]
        for n in range(n1 - 1, n0 - 1, -1):
            k = n - n0
            # gf = F' ybar + C' xbar
            for q in range(nf):
                s = 0.0
                for i in range(ny):
                    s += F[i, q] * gy[b, n, i]
                for i in range(nx):
                    s += C[i, q] * xbar[i]
                gf[q] = s
            # w = M^-T J' gf with M = I - K J
            for i in range(nv):
                s = 0.0
                for q in range(nf):
                    s += Js[k, q, i] * gf[q]
                w[i] = s
                for j in range(nv):
                    m = 1.0 if i == j else 0.0
                    for q in range(nf):
                        m -= K[j, q] * Js[k, q, i]
                    Mt[i, j] = m
            if nv == 1:
                w[0] = w[0] / Mt[0, 0]
            elif nv > 1:
                # LU with partial pivoting of M' and the solve, written out (see forward_segment)
                for kk in range(nv):
                    r = kk
                    pmax = abs(Mt[kk, kk])
                    for i in range(kk + 1, nv):
                        a = abs(Mt[i, kk])
                        if a > pmax:
                            pmax = a
                            r = i
                    piv[kk] = r
                    if r != kk:
                        for j in range(nv):
                            t = Mt[kk, j]
                            Mt[kk, j] = Mt[r, j]
                            Mt[r, j] = t
                    inv = 1.0 / Mt[kk, kk]  # a singular M gives inf/nan gradients, as it should
                    for i in range(kk + 1, nv):
                        lik = Mt[i, kk] * inv
                        Mt[i, kk] = lik
                        for j in range(kk + 1, nv):
                            Mt[i, j] -= lik * Mt[kk, j]
                for kk in range(nv):
                    r = piv[kk]
                    if r != kk:
                        t = w[kk]
                        w[kk] = w[r]
                        w[r] = t
                for i in range(nv):
                    s = w[i]
                    for j in range(i):
                        s -= Mt[i, j] * w[j]
                    w[i] = s
                for i in range(nv - 1, -1, -1):
                    s = w[i]
                    for j in range(i + 1, nv):
                        s -= Mt[i, j] * w[j]
                    w[i] = s / Mt[i, i]
            # mu = gf + K' w
            for q in range(nf):
                s = gf[q]
                for i in range(nv):
                    s += K[i, q] * w[i]
                mu[b, n, q] = s
                mq[q] = s
            # device parameters: dtheta += (df/dtheta)' mu at v[n]
            if want_theta:
                for i in range(nv):
                    vc[i] = vtraj[b, n, i]
                nl_vjp_theta(vc, theta, mq, dtheta[b], work)
            # parameter gradients (outer products with the sample's x, u, f)
            for i in range(nx):
                xb = xbar[i]
                for j in range(nx):
                    dA[b, i, j] += xb * xs[k, j]
                for j in range(nu):
                    dB[b, i, j] += xb * u[b, n, j]
                for q in range(nf):
                    dC[b, i, q] += xb * fs[k, q]
            for i in range(ny):
                yb = gy[b, n, i]
                for j in range(nx):
                    dD[b, i, j] += yb * xs[k, j]
                for j in range(nu):
                    dE[b, i, j] += yb * u[b, n, j]
                for q in range(nf):
                    dF[b, i, q] += yb * fs[k, q]
            for i in range(nv):
                wi = w[i]
                for j in range(nx):
                    dG[b, i, j] += wi * xs[k, j]
                for j in range(nu):
                    dH[b, i, j] += wi * u[b, n, j]
                for q in range(nf):
                    dK[b, i, q] += wi * fs[k, q]
            # ubar[n] = B' xbar + E' ybar + H' w
            for j in range(nu):
                s = 0.0
                for i in range(nx):
                    s += B[i, j] * xbar[i]
                for i in range(ny):
                    s += E[i, j] * gy[b, n, i]
                for i in range(nv):
                    s += H[i, j] * w[i]
                du[b, n, j] = s
            # xbar[n] = A' xbar[n+1] + D' ybar + G' w
            for j in range(nx):
                s = 0.0
                for i in range(nx):
                    s += A[i, j] * xbar[i]
                for i in range(ny):
                    s += D[i, j] * gy[b, n, i]
                for i in range(nv):
                    s += G[i, j] * w[i]
                xbn[j] = s
            for j in range(nx):
                xbar[j] = xbn[j]
    for i in range(nx):
        dx0[b, i] = xbar[i]


# fmt: on
_KERNELS: tuple[tuple[str, str], ...] = (
    ("lu_factor", ""),
    ("lu_solve", ""),
    ("residual_and_matrix", ""),
    ("newton_step", ""),
    ("scaled_step", ""),
    ("accept_step", ""),
    ("newton_damped", ""),
    ("homotopy", ""),
    ("forward_segment", ""),
    ("forward_item", ", nogil=True"),
    ("backward_core", ""),
    ("backward_item", ", nogil=True"),
    ("theta_vjp_item", ", nogil=True"),
)


def kernel_source() -> str:
    """Source of the loops, each decorated with ``@njit(cache=True)``, for the generated modules."""
    parts = ["\n"]
    for name, opts in _KERNELS:
        parts.append(f"\n@njit(cache=True{opts})\n{inspect.getsource(globals()[name])}\n")
    return "".join(parts)


# ----------------------------------------------------------------------------- Python wrappers


@dataclass(frozen=True)
class KernelOptions:
    """Newton and checkpoint settings of the compiled loops.

    ``reltol``/``abstol`` (volts): a Newton step ``dv`` is converged when ``|dv_i| <= reltol |v_i|
    + abstol`` for all ports (or when the contraction-based error estimate of the next iterate
    is below that).  ``max_iter``: plain Newton iterations before the fallbacks;
    ``fallback_iter``: iterations of each damped solve.  ``predictor``: 'previous', 'linear'
    (2 v[n-1] - v[n-2]) or 'tangent' (v[n-1] + M^-1 (p[n] - p[n-1])).  ``checkpoint``: samples
    between saved states for the backward pass.  ``limit``: SPICE junction limiting.
    ``threads``: batch items run in parallel on up to this many threads (None: all cores).
    """

    reltol: float = 1e-10
    abstol: float = 1e-12
    max_iter: int = 50
    fallback_iter: int = 200
    predictor: str = "tangent"
    checkpoint: int = 256
    limit: bool = True
    threads: int | None = None

    def arrays(self, save: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {sorted(PREDICTORS)}, not {self.predictor!r}")
        if self.checkpoint < 1:
            raise ValueError("checkpoint must be >= 1")
        fopt = np.array([self.reltol, self.abstol], dtype=np.float64)
        iopt = np.array(
            [
                self.max_iter,
                self.fallback_iter,
                PREDICTORS[self.predictor],
                self.checkpoint,
                int(save),
                int(self.limit),
            ],
            dtype=np.int64,
        )
        return fopt, iopt


@dataclass
class ForwardResult:
    """Output of :func:`forward`.  ``stats`` columns: iterations, max iterations per sample,
    damped-Newton fallbacks, homotopy fallbacks, first failing sample (-1 if none), samples done."""

    y: np.ndarray  # (batch, T, Ny)
    x_final: np.ndarray  # (batch, Nx)
    warm: np.ndarray  # (batch, 4 + Nv, Nv) Newton warm start for the next block
    stats: np.ndarray  # (batch, N_STATS) int64
    v: np.ndarray | None = None  # (batch, T, Nv) port voltages, saved for backward
    checkpoints: np.ndarray | None = None  # (batch, ceil(T / checkpoint), Nx) states

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
    """Gradients from :func:`backward`: the nine matrices (summed over batch), ``du``, ``dx0``,
    ``mu = dL/df`` (batch, T, Nf) and, when asked for, ``dtheta = sum_n mu[n] . df/dtheta(v[n])``
    (summed over batch; w.r.t. every theta entry, the derived slots of device vectors included)."""

    dmats: tuple[np.ndarray, ...]
    du: np.ndarray
    dx0: np.ndarray
    mu: np.ndarray
    dtheta: np.ndarray | None = None


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _run_items(fn: Callable[..., None], batch: int, threads: int | None, *args: object) -> None:
    """Call the compiled ``fn(b, *args)`` for every batch item, on up to ``threads`` threads.

    The item kernels are compiled with ``nogil=True``; a Python thread pool spreads the
    batch over the cores.  (``numba.prange`` would do the same but costs ~10 s of extra
    compilation per nonlinearity and its default threading layer must not be entered from
    two Python threads at once.)
    """
    global _POOL
    n = min(batch, threads if threads is not None else (os.cpu_count() or 1))
    if n <= 1:
        for b in range(batch):
            fn(b, *args)
        return
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1, thread_name_prefix="circuitsim-kernel"
            )
        pool = _POOL
    # n workers take items round-robin
    list(pool.map(lambda k: [fn(b, *args) for b in range(k, batch, n)], range(n)))


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def _check_shapes(mats: tuple[np.ndarray, ...], u: np.ndarray, x0: np.ndarray) -> tuple[int, ...]:
    A, B, C, D, E, F, G, H, K = mats
    nx, nu, nf, ny, nv = A.shape[0], B.shape[1], C.shape[1], D.shape[0], G.shape[0]
    want = {
        "A": (nx, nx),
        "B": (nx, nu),
        "C": (nx, nf),
        "D": (ny, nx),
        "E": (ny, nu),
        "F": (ny, nf),
        "G": (nv, nx),
        "H": (nv, nu),
        "K": (nv, nf),
    }
    for (name, shape), m in zip(want.items(), mats):
        if m.shape != shape:
            raise ValueError(f"matrix {name} has shape {m.shape}, expected {shape}")
    if u.ndim != 3 or u.shape[2] != nu:
        raise ValueError(f"u must be (batch, T, {nu}), got {u.shape}")
    if x0.shape != (u.shape[0], nx):
        raise ValueError(f"x0 must be ({u.shape[0]}, {nx}), got {x0.shape}")
    return nx, nu, nf, ny, nv


def warm_state(v_init: np.ndarray | None, batch: int, nv: int) -> tuple[np.ndarray, int]:
    """The kernel's warm-start array from ``None`` (zeros), port voltages ``(batch|1, Nv)`` or a
    previous block's ``ForwardResult.warm`` ``(batch, 4 + Nv, Nv)``; and whether it is complete."""
    warm = np.zeros((batch, 4 + nv, nv))
    if v_init is None:
        return warm, 0
    v_init = np.asarray(v_init, dtype=np.float64)
    if v_init.ndim == 3:
        if v_init.shape != warm.shape:
            raise ValueError(f"warm state must be {warm.shape}, got {v_init.shape}")
        return _c(v_init), 1
    v_init = np.broadcast_to(v_init.reshape(-1, nv) if v_init.ndim == 1 else v_init, (batch, nv))
    warm[:, 0, :] = v_init
    return warm, 0


def forward(
    nl: Nonlinearity,
    mats: tuple[np.ndarray, ...],
    theta: np.ndarray,
    u: np.ndarray,
    x0: np.ndarray,
    v_init: np.ndarray | None = None,
    options: KernelOptions | None = None,
    save: bool = True,
) -> ForwardResult:
    """Run the recursion over ``u`` (batch, T, Nu) from states ``x0`` (batch, Nx).

    ``save=True`` also returns the port-voltage trajectory and state checkpoints for
    :func:`backward`; ``save=False`` is pure inference.  Pass ``ForwardResult.warm`` and
    ``x_final`` of one block as ``v_init`` and ``x0`` of the next for streaming: the result
    is identical to one long run.  Newton failures are reported in ``stats`` (never raised).
    """
    options = options or KernelOptions()
    mats = tuple(_c(m) for m in mats)
    u = _c(u)
    x0 = _c(x0)
    nx, nu, nf, ny, nv = _check_shapes(mats, u, x0)
    if nv != nl.n_ports or nf != nl.n_outputs:
        raise ValueError(
            f"K is {mats[8].shape} but the nonlinearity maps {nl.n_ports} ports to {nl.n_outputs}"
        )
    theta = _c(theta).reshape(-1)
    if theta.size < nl.n_theta:
        raise ValueError(f"theta has {theta.size} entries, the nonlinearity reads {nl.n_theta}")
    batch, T = u.shape[:2]
    warm, given = warm_state(v_init, batch, nv)
    fopt, iopt = options.arrays(save)
    cp = options.checkpoint
    y = np.zeros((batch, T, ny))
    vtraj = np.zeros((batch, T if save else 0, nv))
    ckpt = np.zeros((batch, (T + cp - 1) // cp if save else 0, nx))
    xfin = np.zeros((batch, nx))
    warm_out = np.zeros_like(warm)
    stats = np.zeros((batch, N_STATS), dtype=np.int64)
    if T == 0:
        return ForwardResult(y, x0.copy(), warm, stats, vtraj if save else None, ckpt if save else None)
    _run_items(
        nl.module.forward_item,
        batch,
        options.threads,
        *mats,
        theta,
        u,
        x0,
        warm,
        given,
        y,
        vtraj,
        ckpt,
        xfin,
        warm_out,
        stats,
        fopt,
        iopt,
    )
    return ForwardResult(y, xfin, warm_out, stats, vtraj if save else None, ckpt if save else None)


def backward(
    nl: Nonlinearity,
    mats: tuple[np.ndarray, ...],
    theta: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    checkpoints: np.ndarray,
    gy: np.ndarray,
    gx_final: np.ndarray | None = None,
    options: KernelOptions | None = None,
    theta_grad: bool = False,
) -> BackwardResult:
    """Adjoint of :func:`forward` (see the module docstring) given ``gy = dL/dy`` (batch, T, Ny)
    and optionally ``gx_final = dL/dx[T]`` (batch, Nx).  With ``theta_grad`` the compiled loop
    also accumulates ``dtheta = dL/dtheta`` (``nl_vjp_theta`` at every sample)."""
    options = options or KernelOptions()
    mats = tuple(_c(m) for m in mats)
    u = _c(u)
    batch, T = u.shape[:2]
    A, B, C, D, E, F, G, H, K = mats
    nx, nu, nf = A.shape[0], B.shape[1], C.shape[1]
    gy = _c(gy)
    gx = np.zeros((batch, nx)) if gx_final is None else _c(gx_final)
    _, iopt = options.arrays(True)
    dmats = tuple(np.zeros((batch,) + m.shape) for m in mats)
    du = np.zeros((batch, T, nu))
    dx0 = np.zeros((batch, nx))
    mu = np.zeros((batch, T, nf))
    theta = _c(theta).reshape(-1)
    dtheta = np.zeros((batch, theta.size if theta_grad else 0))
    if T == 0:
        return BackwardResult(
            tuple(d.sum(0) for d in dmats), du, gx.copy(), mu, dtheta.sum(0) if theta_grad else None
        )
    _run_items(
        nl.module.backward_item,
        batch,
        options.threads,
        *mats,
        theta,
        u,
        _c(v),
        _c(checkpoints),
        gy,
        gx,
        *dmats,
        du,
        dx0,
        mu,
        dtheta,
        bool(theta_grad),
        iopt,
    )
    return BackwardResult(tuple(d.sum(0) for d in dmats), du, dx0, mu, dtheta.sum(0) if theta_grad else None)


def theta_vjp(
    nl: Nonlinearity, theta: np.ndarray, v: np.ndarray, mu: np.ndarray, threads: int | None = None
) -> np.ndarray:
    """``sum_{b,n} (df/dtheta at v[b, n])' mu[b, n]`` with the compiled ``nl_vjp_theta``.

    ``v`` (batch, T, Nv) port voltages (volts), ``mu`` (batch, T, Nf) adjoints of ``f``.  The
    gradient is w.r.t. every entry of ``theta``, the derived slots of device vectors included.
    """
    theta = _c(theta).reshape(-1)
    v = _c(v)
    mu = _c(mu)
    if v.shape[:2] != mu.shape[:2] or v.shape[2] != nl.n_ports or mu.shape[2] != nl.n_outputs:
        raise ValueError(f"v {v.shape} and mu {mu.shape} do not fit the nonlinearity")
    out = np.zeros((v.shape[0], theta.size))
    _run_items(nl.module.theta_vjp_item, v.shape[0], threads, theta, v, mu, out)
    return out.sum(0)


__all__ = [
    "BackwardResult",
    "ForwardResult",
    "KernelOptions",
    "backward",
    "forward",
    "kernel_source",
    "theta_vjp",
    "warm_state",
]
