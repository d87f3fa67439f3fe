"""Specialised compiled loops of the WDF: linear trees, and the explicit Wright-omega diode root.

Both run the composed wave recursion of :mod:`circuitsim.formulations.wdf.realize`
(``v = G x + H s + K f``, ``y = D x + E s + F f``, ``x' = A x + B s + C f``) one sample at a time
in numba, with a hand-written discrete adjoint for the backward pass.

Explicit root (Werner et al., DAFx-15, "An improved and generalized diode clipper model for wave
digital filters"; D'Angelo et al. on the Wright omega function; docs/wdf.md eq. (9)–(10)).  A diode (or an
anti-parallel pair) at a one-port root facing port resistance ``R`` obeys
``v (1 + R g) + R sum_o s_o pn_o(s_o v) = p`` (``g`` the GMIN conductances, ``pn`` ngspice's junction
current, docs/devices.md).  Its sign is the sign of ``p``; in the frame ``u = sign(p) v`` the
forward-biased diode (``IsP``, ``VP = N Vt``) is on its exponential branch, and

    u = VP (mu - omega(mu + ln kappa)),   kappa = R IsP / ((1 + R g) VP),   mu = (c + R IsP) / ((1 + R g) VP)

solves ``u (1 + R g) + R IsP (exp(u/VP) - 1) = c`` exactly.  The reverse-biased diode of a pair
adds ``r(u) = -pn_S(-u)``, which lies in ``[0, IsS)`` with ``|r'| <= IsS/VS``; it is handled by the
fixed point ``u_{k+1} = U(p - R r(u_k))`` from ``r = 0``.  ``|dU/dc| <= 1/(1 + R g)``, so the error
after ``k`` omega evaluations is at most ``R IsS (R IsS / VS)^(k-1)`` volts: :func:`omega_steps`
picks the smallest ``k`` whose bound is below ``OMEGA_TOL`` and the caller falls back to Newton on
the compiled core when none up to ``MAX_OMEGA_STEPS`` is (docs/wdf.md).  No Newton iteration runs.

Wright omega (Lawrence, Corless & Jeffrey, ACM TOMS 38(3), 2012, "Algorithm 917"): the
series/asymptotic starting values of their regions (or the previous sample's value), then the
fourth-order Fritsch–Shafer–Crowley iteration until its residual shows machine precision.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numba import njit

from circuitsim.devices.constants import CONST_E, EXP_LIMIT

OMEGA_TOL = 1e-11  # volts: bound on the explicit root's error (1e-9 of a 10 mV peak)
MAX_OMEGA_STEPS = 6


# --------------------------------------------------------------------------- Wright omega
@njit(cache=True, inline="always", error_model="numpy")
def _omega_refine(x: float, w: float) -> float:
    """Fritsch-Shafer-Crowley steps from ``w`` until the relative error is at machine precision.

    ``r = x - w - ln w`` estimates the relative error of ``w`` as ``r / (1 + w)``; one FSC step maps a
    relative error ``e`` to O(e^4), so a step from ``|e| < 2e-4`` ends below
    1e-15 and the loop stops after it (Lawrence et al. 2012).
    """
    for _ in range(6):
        r = x - w - math.log(w)
        wp1 = 1.0 + w
        t = wp1 * (wp1 + (2.0 / 3.0) * r)
        w = w + w * r * (t - 0.5 * r) / (wp1 * (t - r))
        if abs(r) < 2e-4 * wp1:
            break
    return w


@njit(cache=True, error_model="numpy")
def omega_guess(x: float) -> float:
    """Starting value of omega(x) by region (Lawrence et al. 2012): Lambert series, Taylor at 1, asymptotic."""
    if x < -2.0:  # Lambert series of W(e^x): z - z^2 + 3/2 z^3 - 8/3 z^4 + 125/24 z^5
        z = math.exp(x)
        return z * (1.0 - z * (1.0 - z * (1.5 - z * (8.0 / 3.0 - z * (125.0 / 24.0)))))
    if x <= 1.0:
        y = x - 1.0
        return 1.0 + y * (0.5 + y * (1.0 / 16.0 + y * (-1.0 / 192.0 + y * (-1.0 / 3072.0 + y * (13.0 / 61440.0)))))
    lx = math.log(x)
    return x - lx + lx / x


@njit(cache=True, error_model="numpy", inline="always")
def wright_omega(x: float, w0: float = -1.0) -> float:
    """omega(x) for real x: the solution w of ``w + ln w = x`` (Lambert W of exp(x)).

    ``w0 > 0`` is a warm start (e.g. the previous sample's value); otherwise the regional guess.
    """
    if x < -700.0:
        return math.exp(x)
    if x < -8.0 and w0 <= 0.0:
        # the series' next term is 324/30 z^6: relative error below 11 z^5 < 1e-16 for z = e^x < e^-8
        return omega_guess(x)
    w = w0 if w0 > 0.0 else omega_guess(x)
    return _omega_refine(x, w)


@njit(cache=True, inline="always", error_model="numpy")
def _pn(vd: float, isat: float, vte: float) -> float:
    """ngspice's junction current without GMIN (docs/devices.md): exponential / cubic reverse branch."""
    if vd >= -3.0 * vte:
        return isat * (math.exp(vd / vte) - 1.0)
    a = 3.0 * vte / (vd * CONST_E)
    return -isat * (1.0 + a * a * a)


@njit(cache=True, inline="always", error_model="numpy")
def _pn_d(vd: float, isat: float, vte: float) -> tuple:
    """(i, di/dvd, di/dIs, di/dVte) of :func:`_pn`."""
    if vd >= -3.0 * vte:
        e = math.exp(vd / vte)
        return isat * (e - 1.0), isat * e / vte, e - 1.0, -isat * e * vd / (vte * vte)
    a = 3.0 * vte / (vd * CONST_E)
    a3 = a * a * a
    return -isat * (1.0 + a3), isat * 3.0 * a3 / vd, -(1.0 + a3), -isat * 3.0 * a3 / vte


@njit(cache=True, error_model="numpy", inline="always")
def _solve_u(c0: float, R: float, onerg: float, has_p: bool, isp: float, vp: float, lnk: float,
             has_s: bool, iss: float, vs: float, steps: int, linear: bool, w0: float, invk: float) -> tuple:
    """The root in the frame of the forward-biased diode: returns (u, exp(u/VP) or 0, pn of the other diode at -u).

    Full mode: ``steps`` omega evaluations of the fixed point.  Linearised mode (``linear``): one
    omega evaluation, then ``steps - 1`` corrections ``u = u1 - U'(c0) R r(u)`` with
    ``U' = 1 / ((1 + R g)(1 + omega))``; the caller allows it only where its bound holds.
    ``w0``: warm start of the first omega evaluation, or -1 (the regional guess; a warm start from
    another sample can be far enough off for the FSC step to leave the domain).  Later evaluations
    start from the previous one, whose argument differs by at most ``R IsS / VP``.
    """
    rs = 0.0
    u = 0.0
    w = w0
    ex = 0.0
    if linear and has_p:
        mu = (c0 + R * isp) * (1.0 / (onerg * vp))
        w = wright_omega(mu + lnk, w)
        u1 = vp * (mu - w)
        u = u1
        pn_s = 0.0
        if has_s:
            q = 1.0 / (w * (1.0 + w))  # one division for both 1/(1 + omega) and 1/omega
            du = R * (1.0 / onerg) * w * q
            # exp(-u1/VS): from omega when both diodes share VS = VP (exp(u1/VP) = omega/kappa)
            es1 = (1.0 + w) * q / invk if vs == vp else math.exp(-u1 / vs)
            for j in range(steps):
                if u <= 3.0 * vs:  # exponential branch: exp(-u/VS) = es1 exp(-(u-u1)/VS), |u-u1|/VS < 1e-5
                    e = -(u - u1) * (1.0 / vs)
                    pn_s = iss * (es1 * (1.0 + e * (1.0 + 0.5 * e)) - 1.0)
                else:
                    pn_s = _pn(-u, iss, vs)
                if j == steps - 1:
                    break  # pn_s is now the reverse-biased diode's current at the returned u
                u = u1 + du * pn_s
        d = (u - u1) * (1.0 / vp)  # |d| < 1e-5: exp(d) to second order is exact to rounding
        ex = w * invk * (1.0 + d * (1.0 + 0.5 * d))
        return u, ex, pn_s
    for _ in range(steps):
        c = c0 - R * rs
        if has_p:
            mu = (c + R * isp) / (onerg * vp)
            w = wright_omega(mu + lnk, w)
            u = vp * (mu - w)
        else:
            u = c / onerg
        if not has_s:
            break
        rs = -_pn(-u, iss, vs)
    if has_p:
        ex = w * invk  # exp(u/VP) = omega/kappa at the last evaluation
    return u, ex, -rs


@njit(cache=True, error_model="numpy")
def omega_forward(A, B, C, D, E, F, G, H, K, dp, sign, u, x0, steps, linear, v_out, x_out, y,  # noqa: ANN001
                  x_final):
    """Forward loop with the explicit root.  ``dp`` (Nf, 3): Is, N*Vt, GMIN per diode; ``sign`` (Nf,).

    Saves the port voltage ``v_out`` (batch, T) and the states ``x_out`` (batch, T, Nx) for the adjoint.
    Returns the number of samples whose exponent exceeded EXP_LIMIT (0 when the root was exact).
    """
    nb, T, nu = u.shape
    nx = A.shape[0]
    nf = K.shape[1]
    R = -K[0, 0] * sign[0]
    g = 0.0
    for o in range(nf):
        g += dp[o, 2]
    onerg = 1.0 + R * g
    i_fwd, i_rev = -1, -1  # at most one diode each way (checked by the caller)
    for o in range(nf):
        if sign[o] > 0:
            i_fwd = o
        else:
            i_rev = o
    lnk_f = math.log(R * dp[i_fwd, 0] / (onerg * dp[i_fwd, 1])) if i_fwd >= 0 else 0.0
    lnk_r = math.log(R * dp[i_rev, 0] / (onerg * dp[i_rev, 1])) if i_rev >= 0 else 0.0
    ik_f, ik_r = math.exp(-lnk_f), math.exp(-lnk_r)  # 1/kappa: exp(u/VP) = omega/kappa
    bad = 0
    x = np.empty(nx)
    xn = np.empty(nx)
    f = np.empty(nf)
    for b in range(nb):
        for i in range(nx):
            x[i] = x0[b, i]
        for n in range(T):
            p = 0.0
            for i in range(nx):
                p += G[0, i] * x[i]
            for j in range(nu):
                p += H[0, j] * u[b, n, j]
            if p >= 0.0:
                ip, is_, lnk, invk, sg = i_fwd, i_rev, lnk_f, ik_f, 1.0
            else:
                ip, is_, lnk, invk, sg = i_rev, i_fwd, lnk_r, ik_r, -1.0
            isp = dp[ip, 0] if ip >= 0 else 0.0
            vp = dp[ip, 1] if ip >= 0 else 1.0
            iss = dp[is_, 0] if is_ >= 0 else 0.0
            vs = dp[is_, 1] if is_ >= 0 else 1.0
            uu, ex, pn_s = _solve_u(sg * p, R, onerg, ip >= 0, isp, vp, lnk, is_ >= 0, iss, vs, steps, linear, -1.0,
                                 invk)
            v = sg * uu
            v_out[b, n] = v
            for o in range(nf):
                vd = sign[o] * v
                if o == ip:
                    if uu > EXP_LIMIT * vp:
                        bad += 1
                    f[o] = isp * (ex - 1.0)
                elif ip >= 0:
                    f[o] = pn_s  # the reverse-biased diode, vd = -u
                else:
                    f[o] = _pn(vd, dp[o, 0], dp[o, 1])
                f[o] += dp[o, 2] * vd
            yy = 0.0
            for i in range(nx):
                x_out[b, n, i] = x[i]
                yy += D[0, i] * x[i]
            for j in range(nu):
                yy += E[0, j] * u[b, n, j]
            for o in range(nf):
                yy += F[0, o] * f[o]
            y[b, n] = yy
            for i in range(nx):
                acc = 0.0
                for k in range(nx):
                    acc += A[i, k] * x[k]
                for j in range(nu):
                    acc += B[i, j] * u[b, n, j]
                for o in range(nf):
                    acc += C[i, o] * f[o]
                xn[i] = acc
            for i in range(nx):
                x[i] = xn[i]
        for i in range(nx):
            x_final[b, i] = x[i]
    return bad


@njit(cache=True, error_model="numpy")
def omega_backward(A, B, C, D, E, F, G, H, K, dp, sign, u, v_s, x_s, gy, gx, dm, ddp, du, dx0):  # noqa: ANN001
    """Discrete adjoint of :func:`omega_forward` at its solutions (implicit function theorem at the root).

    With ``J = df/dv`` and ``M = 1 - K J``: ``w = J.gf / M`` (= dL/dp), ``mu = gf + K w``,
    ``xbar[n] = A' xbar[n+1] + D' ybar[n] + G' w``; the same recursion as the shared core's adjoint
    (circuitsim/kernels/statespace.py), for one port.  ``dm`` holds dA..dK flattened in order.
    """
    nb, T, nu = u.shape
    nx = A.shape[0]
    nf = K.shape[1]
    xb = np.empty(nx)
    xbn = np.empty(nx)
    f = np.empty(nf)
    J = np.empty(nf)
    gf = np.empty(nf)
    dIs = np.empty(nf)
    dV = np.empty(nf)
    oA = 0
    oB = oA + nx * nx
    oC = oB + nx * nu
    oD = oC + nx * nf
    oE = oD + nx
    oF = oE + nu
    oG = oF + nf
    oH = oG + nx
    oK = oH + nu
    for b in range(nb):
        for i in range(nx):
            xb[i] = gx[b, i]
        for n in range(T - 1, -1, -1):
            v = v_s[b, n]
            for o in range(nf):
                vd = sign[o] * v
                i_, di, dis, dvt = _pn_d(vd, dp[o, 0], dp[o, 1])
                f[o] = i_ + dp[o, 2] * vd
                J[o] = sign[o] * (di + dp[o, 2])
                dIs[o] = dis
                dV[o] = dvt
            ybar = gy[b, n]
            kj = 0.0
            for o in range(nf):
                kj += K[0, o] * J[o]
            jg = 0.0
            for o in range(nf):
                acc = F[0, o] * ybar
                for i in range(nx):
                    acc += C[i, o] * xb[i]
                gf[o] = acc
                jg += J[o] * acc
            w = jg / (1.0 - kj)
            for o in range(nf):
                mu = gf[o] + K[0, o] * w
                vd = sign[o] * v
                ddp[o, 0] += mu * dIs[o]
                ddp[o, 1] += mu * dV[o]
                ddp[o, 2] += mu * vd
            # matrix gradients and the input
            for i in range(nx):
                xi = x_s[b, n, i]
                for k in range(nx):
                    dm[oA + k * nx + i] += xb[k] * xi
                dm[oD + i] += ybar * xi
                dm[oG + i] += w * xi
            for j in range(nu):
                uj = u[b, n, j]
                for k in range(nx):
                    dm[oB + k * nu + j] += xb[k] * uj
                dm[oE + j] += ybar * uj
                dm[oH + j] += w * uj
                acc = E[0, j] * ybar + H[0, j] * w
                for k in range(nx):
                    acc += B[k, j] * xb[k]
                du[b, n, j] = acc
            for o in range(nf):
                for k in range(nx):
                    dm[oC + k * nf + o] += xb[k] * f[o]
                dm[oF + o] += ybar * f[o]
                dm[oK + o] += w * f[o]
            for i in range(nx):
                acc = D[0, i] * ybar + G[0, i] * w
                for k in range(nx):
                    acc += A[k, i] * xb[k]
                xbn[i] = acc
            for i in range(nx):
                xb[i] = xbn[i]
        for i in range(nx):
            dx0[b, i] = xb[i]


@njit(cache=True, error_model="numpy")
def linear_forward(A, B, D, E, u, x0, x_out, y, x_final, save):  # noqa: ANN001
    """``y = D x + E s``, ``x' = A x + B s`` per sample (a WDF without nonlinearity)."""
    nb, T, nu = u.shape
    nx = A.shape[0]
    x = np.empty(nx)
    xn = np.empty(nx)
    for b in range(nb):
        for i in range(nx):
            x[i] = x0[b, i]
        for n in range(T):
            yy = 0.0
            for i in range(nx):
                yy += D[0, i] * x[i]
                if save:
                    x_out[b, n, i] = x[i]
            for j in range(nu):
                yy += E[0, j] * u[b, n, j]
            y[b, n] = yy
            for i in range(nx):
                acc = 0.0
                for k in range(nx):
                    acc += A[i, k] * x[k]
                for j in range(nu):
                    acc += B[i, j] * u[b, n, j]
                xn[i] = acc
            for i in range(nx):
                x[i] = xn[i]
        for i in range(nx):
            x_final[b, i] = x[i]


@njit(cache=True, error_model="numpy")
def linear_backward(A, B, D, E, u, x_s, gy, gx, dA, dB, dD, dE, du, dx0):  # noqa: ANN001
    """Adjoint of :func:`linear_forward`: ``xbar[n] = A' xbar[n+1] + D' ybar[n]``, ``ubar = B' xbar + E' ybar``,
    ``dA += xbar[n+1] x[n]'``, ``dB += xbar[n+1] s[n]'``, ``dD += ybar x[n]'``, ``dE += ybar s[n]'`` (one pass)."""
    nb, T, nu = u.shape
    nx = A.shape[0]
    xb = np.empty(nx)
    xbn = np.empty(nx)
    for b in range(nb):
        for i in range(nx):
            xb[i] = gx[b, i]
        for n in range(T - 1, -1, -1):
            ybar = gy[b, n]
            for j in range(nu):
                uj = u[b, n, j]
                acc = E[0, j] * ybar
                for k in range(nx):
                    dB[k, j] += xb[k] * uj
                    acc += B[k, j] * xb[k]
                dE[0, j] += ybar * uj
                du[b, n, j] = acc
            for i in range(nx):
                xi = x_s[b, n, i]
                for k in range(nx):
                    dA[k, i] += xb[k] * xi
                dD[0, i] += ybar * xi
                acc = D[0, i] * ybar
                for k in range(nx):
                    acc += A[k, i] * xb[k]
                xbn[i] = acc
            for i in range(nx):
                xb[i] = xbn[i]
        for i in range(nx):
            dx0[b, i] = xb[i]


def omega_steps(R: float, dp: np.ndarray) -> tuple[int, bool] | None:
    """(evaluations per sample, linearised?) for an error bound below OMEGA_TOL volts, or None (Newton).

    Full fixed point: error ``<= e1 L^(k-1)`` with ``e1 = R IsS``, ``L = R IsS / VS`` (module docstring).
    Linearised corrections around the first omega solution add the Taylor remainder
    ``E2 = (R IsS)^2 / (2 VP)`` (``|U''| <= 1/VP``): error ``<= e1 L^(k-1) + E2 / (1 - L)``; used when that
    meets the tolerance and ``R IsS / VP < 1e-5`` (so the second-order exp update is exact to rounding).
    """
    if len(dp) == 1:
        return (1, False) if R > 0 else None
    e1 = R * float(np.max(dp[:, 0]))
    lip = R * float(np.max(dp[:, 0] / dp[:, 1]))
    vmin = float(np.min(dp[:, 1]))
    e2 = e1 * e1 / (2.0 * vmin)
    if lip < 1.0 and e1 / vmin < 1e-5:
        for k in range(1, MAX_OMEGA_STEPS + 1):
            if e1 * lip ** (k - 1) + e2 / (1.0 - lip) <= OMEGA_TOL:
                return k, True
    for k in range(1, MAX_OMEGA_STEPS + 1):
        if e1 * lip ** (k - 1) <= OMEGA_TOL:
            return k, False
    return None


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float64).numpy())


class OmegaFunction(torch.autograd.Function):
    """``y, x_final, v_last = OmegaFunction.apply(A..K, dp, u, x0, sign, steps)`` (differentiable in all tensors)."""

    @staticmethod
    def forward(ctx: Any, A, B, C, D, E, F, G, H, K, dp, u, x0, sign, steps, linear):  # noqa: ANN001
        mats = tuple(_np(m) for m in (A, B, C, D, E, F, G, H, K))
        un, xn, dpn = _np(u), _np(x0), _np(dp)
        nb, T, _ = un.shape
        v_s = np.empty((nb, T))
        x_s = np.empty((nb, T, mats[0].shape[0]))
        y = np.empty((nb, T))
        xf = np.empty((nb, mats[0].shape[0]))
        bad = omega_forward(*mats, dpn, sign, un, xn, steps, linear, v_s, x_s, y, xf)
        if bad:
            raise OverflowError("explicit WDF root: junction exponent beyond EXP_LIMIT")
        ctx.saved = (mats, dpn, sign, un, v_s, x_s)
        vl = torch.from_numpy(v_s[:, -1:].copy()) if T else torch.zeros(nb, 1, dtype=torch.float64)
        ctx.mark_non_differentiable(vl)
        return torch.from_numpy(y), torch.from_numpy(xf), vl

    @staticmethod
    def backward(ctx: Any, gy, gx, _gv):  # noqa: ANN001
        mats, dpn, sign, un, v_s, x_s = ctx.saved
        nb, T, nu = un.shape
        gy_n = np.zeros((nb, T)) if gy is None else _np(gy)
        gx_n = np.zeros(x_s.shape[0::2]) if gx is None else _np(gx)
        sizes = [m.size for m in mats]
        dm = np.zeros(sum(sizes))
        ddp = np.zeros_like(dpn)
        du = np.empty_like(un)
        dx0 = np.empty((nb, mats[0].shape[0]))
        omega_backward(*mats, dpn, sign, un, v_s, x_s, gy_n, gx_n, dm, ddp, du, dx0)
        grads = []
        off = 0
        for m in mats:
            grads.append(torch.from_numpy(dm[off : off + m.size].reshape(m.shape).copy()))
            off += m.size
        return (*grads, torch.from_numpy(ddp), torch.from_numpy(du), torch.from_numpy(dx0), None, None, None)


class LinearFunction(torch.autograd.Function):
    """``y, x_final = LinearFunction.apply(A, B, D, E, u, x0)`` (differentiable)."""

    @staticmethod
    def forward(ctx: Any, A, B, D, E, u, x0):  # noqa: ANN001
        mats = tuple(_np(m) for m in (A, B, D, E))
        un, xn = _np(u), _np(x0)
        nb, T, _ = un.shape
        save = any(t.requires_grad for t in (A, B, D, E, u, x0))
        x_s = np.empty((nb, T if save else 0, mats[0].shape[0]))
        y = np.empty((nb, T))
        xf = np.empty((nb, mats[0].shape[0]))
        linear_forward(*mats, un, xn, x_s if save else np.empty((nb, T, mats[0].shape[0])), y, xf, save)
        ctx.saved = (mats, un, x_s)
        return torch.from_numpy(y), torch.from_numpy(xf)

    @staticmethod
    def backward(ctx: Any, gy, gx):  # noqa: ANN001
        (A, B, D, E), un, x_s = ctx.saved
        nb, T, _ = un.shape
        gy_n = np.zeros((nb, T)) if gy is None else _np(gy)
        gx_n = np.zeros((nb, A.shape[0])) if gx is None else _np(gx)
        dx0 = np.empty((nb, A.shape[0]))
        dA, dB, dD, dE = (np.zeros_like(m) for m in (A, B, D, E))
        du = np.empty_like(un)
        linear_backward(A, B, D, E, un, x_s, gy_n, gx_n, dA, dB, dD, dE, du, dx0)
        return tuple(torch.from_numpy(np.ascontiguousarray(g)) for g in (dA, dB, dD, dE, du, dx0))


def run_linear(mats, u: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Linear WDF recursion: ``y`` (batch, T) volts and the final state, differentiable."""
    A, B, _, D, E = mats[:5]
    return LinearFunction.apply(A, B, D, E, u, x0)


def run_omega(mats, dp: torch.Tensor, u: torch.Tensor, x0: torch.Tensor, sign: np.ndarray,  # noqa: ANN001
              steps: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """WDF recursion with the explicit diode root: ``y`` (batch, T), final state, last port voltage."""
    return OmegaFunction.apply(*mats, dp, u, x0, sign, steps[0], steps[1])


__all__ = ["MAX_OMEGA_STEPS", "OMEGA_TOL", "omega_steps", "run_linear", "run_omega", "wright_omega"]
