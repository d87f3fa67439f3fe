"""Compiled STN inference: the recursion of :mod:`circuitsim.stn.model` as one numba loop over samples.

The weights are plain float64 arrays; the knob part of the first layer (``b1 + W1_k k̃``) and
``g`` at the DC point are folded into constants once per call, so a sample costs two small
matrix-vector products, ``2 * hidden`` tanh and the readout.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["run_compiled"]


@numba.njit(cache=True, fastmath=True, inline="always")
def _act(a: float, rational: bool) -> float:  # pragma: no cover - compiled
    if not rational:
        return np.tanh(a)
    x = min(max(a, -4.97), 4.97)  # model.rational_tanh: the [7/6] Padé approximant of tanh, clipped
    x2 = x * x
    return x * (135135.0 + x2 * (17325.0 + x2 * (378.0 + x2))) / (135135.0 + x2 * (62370.0 + x2 * (3150.0 + 28.0 * x2)))


@numba.njit(cache=True, fastmath=True)
def _loop(W1xu, c1, W2, b2, W3, Lxu, sigma, xlim, g0, w, x0, u, rational):  # pragma: no cover - compiled
    ns = x0.shape[1]
    nu = W1xu.shape[1] - ns  # input window ũ[n-1] .. ũ[n+a]
    B, T = u.shape[0], u.shape[1] - nu + 1
    H = c1.shape[0]
    y = np.empty((B, T))
    xf = np.empty((B, ns))
    h1 = np.empty(H)
    h2 = np.empty(H)
    x = np.empty(ns)
    dx = np.empty(ns)
    for b in range(B):
        for i in range(ns):
            x[i] = x0[b, i]
        for n in range(T):
            for j in range(H):  # h1 = tanh(b1 + W1 [x̃, ũ[n-1], ..., ũ[n+a], k̃])
                a = c1[j]
                for q in range(nu):
                    a += W1xu[j, ns + q] * u[b, n + q]
                for i in range(ns):
                    a += W1xu[j, i] * x[i]
                h1[j] = _act(a, rational)
            for j in range(H):  # h2 = tanh(b2 + W2 h1)
                a = b2[j]
                for i in range(H):
                    a += W2[j, i] * h1[i]
                h2[j] = _act(a, rational)
            acc = w[ns] * u[b, n + 1]
            for s in range(ns):  # d = W3 h2 + L z − g(z_dc), from x̃[n-1] for every state
                d = -g0[s]
                for q in range(nu):
                    d += Lxu[s, ns + q] * u[b, n + q]
                for i in range(ns):
                    d += Lxu[s, i] * x[i]
                for j in range(H):
                    d += W3[s, j] * h2[j]
                dx[s] = d
            for s in range(ns):  # x̃[n] = x̃[n-1] + σ d, within the safety limit (S2)
                x[s] = min(max(x[s] + sigma[s] * dx[s], -xlim[s]), xlim[s])
            for s in range(ns):  # y − y_dc = [x̃, ũ] · w
                acc += w[s] * x[s]
            y[b, n] = acc
        for i in range(ns):
            xf[b, i] = x[i]
    return y, xf


def _rational_np(a: np.ndarray) -> np.ndarray:
    x = np.clip(a, -4.97, 4.97)
    x2 = x * x
    return x * (135135.0 + x2 * (17325.0 + x2 * (378.0 + x2))) / (135135.0 + x2 * (62370.0 + x2 * (3150.0 + 28.0 * x2)))


def run_compiled(
    weights: dict[str, np.ndarray], x0: np.ndarray, u: np.ndarray, k: np.ndarray, activation: str = "tanh"
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised states ``x0`` (B, n_states), inputs ``u`` (B, T+1+a), knobs ``k`` (n_knobs,) -> (y − y_dc, x_final).

    ``u[:, j]`` is ``ũ[j-1]``: the sample before the first and the ``a`` look-ahead samples after the
    last included (``a`` follows from the width of ``W1``: n_states + a + 2 + n_knobs columns).

    ``weights``: the arrays of :meth:`circuitsim.stn.model.STNNet.arrays`; ``y − y_dc`` in volts.
    """
    W1, b1, W2, b2, W3, L = (np.asarray(weights[n], dtype=np.float64) for n in ("W1", "b1", "W2", "b2", "W3", "L"))
    ns = W3.shape[0]
    k = np.asarray(k, dtype=np.float64).reshape(-1)
    nw = W1.shape[1] - len(k)  # states and input window
    c1 = b1 + W1[:, nw:] @ k
    rational = activation == "rational"
    act = _rational_np if rational else np.tanh
    g0 = W3 @ act(b2 + W2 @ act(c1))  # the linear skip's k-part cancels against g(z_dc)
    rB = np.asarray(weights["rB"], dtype=np.float64).reshape(ns + 1, -1)
    w = np.asarray(weights["ra"], dtype=np.float64) + rB @ k
    return _loop(np.ascontiguousarray(W1[:, :nw]), c1, np.ascontiguousarray(W2), b2, np.ascontiguousarray(W3),
                 np.ascontiguousarray(L[:, :nw]), np.asarray(weights["sigma"], dtype=np.float64),
                 np.asarray(weights.get("x_lim", np.full(ns, np.inf)), dtype=np.float64), g0, w,
                 np.ascontiguousarray(x0, dtype=np.float64), np.ascontiguousarray(u, dtype=np.float64), rational)
