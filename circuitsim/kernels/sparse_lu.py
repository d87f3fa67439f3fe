"""DK's discrete system solved with a sparse Newton: the compiled hooks of ``method="sparse"``.

The residual is DK's, ``g(v) = p + K f(v) - v`` with ``P = (K,)`` (:mod:`circuitsim.kernels.statespace`),
so the module is a DK module and the core's dense Newton, fallbacks and implicit-function adjoint
apply to it unchanged.  What differs is how a sample is solved (``fm_solve``, ``FM_EXPLICIT = 1``):
``K = -Nv M^-1 W`` is dense, but ``M`` (the trapezoidal MNA matrix ``G + 2/T Cm``) is sparse, and
the push-through identity (Henderson & Searle, SIAM Review 23(1), 1981, eq. (19))::

    (I - K J)^-1 = I - Nv_U (S0 + W_U J Nv_U)^-1 W_U J

turns DK's dense ``Nv x Nv`` Newton matrix ``I - K J`` into the sparse ``S0 + W_U J Nv_U`` on the
unknowns ``U`` the devices touch, where ``S0`` is the Schur complement of the other unknowns in
``M`` (computed in torch, :mod:`circuitsim.formulations.sparse`).  Its LU runs in a fill-reducing
order fixed once in Python (minimum degree, symbolic fill, static diagonal pivots), on the matrix
stored by its fill (216 entries on the Big Muff, not 54 x 54); the assembly's device stamps, the
factorisation, solve and Newton direction are generated as straight-line code of that pattern
(:func:`lu_source`, :func:`stamp_source`), which grows with the LU's operation count and the
stamps' and direction's terms (222 multiply-adds, 288 stamp and 216 direction terms on the Big
Muff), each compiled once and called.

Stages that only ideal sources join are independent *blocks* of that matrix (the Big Muff's three
channels share only the supply and the input: three blocks of 18 unknowns and 12 ports).  ``K``
has no entry between two blocks, which :func:`sp_kf` skips (exactly: the terms it drops are zeros),
and the elimination takes the blocks' pivots in turn (the same fill and operations; consecutive
pivots of independent blocks overlap in the processor, where the blocks one after the other made
the factorisation and the direction twice as slow).  A Newton per block, each stopping on its own
(10 % fewer block iterations on the Big Muff), was slower: three serial chains, not one interleaved.
A zero or non-finite pivot, a non-finite step or no convergence returns False, and the core's
dense Newton (with its fallbacks) solves that sample.

The device outputs come from the family's generated functions called in a loop over the instances
of each variant (:func:`device_loops`), so the compiled code grows with the number of device
*variants*, not instances.  Everything here except :func:`device_loops`, :func:`lu_source`,
:func:`stamp_source` and :func:`constants` is a numba template pasted into the generated module by
:mod:`circuitsim.kernels.codegen`.

``theta`` carries, after the device parameters (from ``SP_X0``): a fingerprint of ``K`` (the
matrices the sparse factorisation was computed for; any other ``K``, e.g. a substep's, turns the
sparse solve off for the run), then ``S0`` at the fill positions.  ``fm_prepare`` writes into ``lc``
each block's part of ``K`` by columns (from ``SP_CLO``), and turns the sparse solve off for the run
when ``K`` has an entry between two blocks: the residual's ``K f`` is then a sum of column multiples
over the block's ports, a loop that vectorises, in the dense product's order of summation
(:func:`sp_kf`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np

from circuitsim.kernels.core import F_ABSTOL, F_RELTOL, in_bound, newton_stop
from circuitsim.kernels.linalg import scaled_step

# placeholders of the generated module (see circuitsim.kernels.core); the module's constants define them
NV = NF = NZ = SP_N = SP_NJ = SP_NLIM = SP_X0 = SP_NFILL = SP_MAXIT = SP_NB = 0
W_A = W_JV = W_JE = W_G = W_B = W_DZ = W_ZT = W_ZP = W_PP = W_T = W_FLAG = LC_OK = 0
_I = np.zeros(1, np.int64)
_F = np.zeros(1)
JS_OUT = JS_PORT = LIM_PORT = LIM_VT = LIM_VC = LIM_POL = _I
SP_PORTS = SP_PLO = SP_OUTS = SP_OLO = SP_CLO = SP_PBLK = SP_OBLK = _I
LIM_VTC = LIM_SGN = _F


def sp_devices(v, theta, f, jv):  # pragma: no cover - generated (device_loops)
    raise NotImplementedError


def sp_factor(a):  # pragma: no cover - generated (lu_source)
    raise NotImplementedError


def sp_solve(a, b):  # pragma: no cover - generated (lu_source)
    raise NotImplementedError


def sp_assemble(theta, a, jv):  # pragma: no cover - generated (stamp_source)
    raise NotImplementedError


def sp_direction(a, jv, g, b, dz):  # pragma: no cover - generated (stamp_source)
    raise NotImplementedError


def _pnjlim(vnew, vold, vt, vcrit):  # pragma: no cover - the nonlinearity's helper
    raise NotImplementedError


# fmt: off
# ----------------------------------------------------------------------------- inlined templates


def sp_kf(lc, p, z, phi, g, t):
    # g = p + K f - v (DK's residual) block by block, from each block's part of K by columns in lc (fm_prepare):
    # K has no entry between two blocks, so every g[i] sums the non-zero terms of sp_residual's dense loop in
    # its order (the two agree exactly), and a column's multiply-adds are independent and vectorise (over t,
    # the block's ports gathered), where the dense loop runs one row's chain of dependent additions at a time
    for blk in range(SP_NB):
        p0 = SP_PLO[blk]
        m = SP_PLO[blk + 1] - p0
        for j in range(m):
            i = SP_PORTS[p0 + j]
            t[j] = p[i] - z[i]
        c = SP_CLO[blk]
        for e in range(SP_OLO[blk], SP_OLO[blk + 1]):
            fk = phi[SP_OUTS[e]]
            for j in range(m):
                t[j] += lc[c + j] * fk
            c += m
        for j in range(m):
            g[SP_PORTS[p0 + j]] = t[j]


def sp_residual(K, p, z, phi, g):
    # g = p + K f - v (DK's residual, statespace.fm_eval) with the dense K; returns |g|^2
    n2 = 0.0
    for i in range(NV):
        s = p[i] - z[i]
        for k in range(NF):
            s += K[i, k] * phi[k]
        g[i] = s
        n2 += s * s
    return n2


def sp_limit(zold, znew, lc):
    # SPICE junction limiting (DEVpnjlim) of every junction port, in the device frame, in the
    # nonlinearity's order (kernels/nonlinearity.py's nl_limit as a loop over LIM_*)
    for i in range(SP_NLIM):
        k = LIM_PORT[i]
        s = lc[3 * i + 2]
        znew[k] = s * _pnjlim(s * znew[k], s * zold[k], lc[3 * i], lc[3 * i + 1])


# ----------------------------------------------------------------------------- hooks


def fm_prepare(P, theta, lc):
    # the limiting constants (vt, vcrit, frame sign per junction); whether K is the one the sparse
    # factorisation in theta was computed for and has no entry between two blocks (LC_OK); and each block's
    # part of K by columns (block b's column e from SP_CLO[b] + e m_b, m_b its ports; sp_kf)
    for i in range(SP_NLIM):
        lc[3 * i] = theta[LIM_VT[i]] if LIM_VT[i] >= 0 else LIM_VTC[i]
        lc[3 * i + 1] = theta[LIM_VC[i]]
        lc[3 * i + 2] = (theta[LIM_POL[i]] if LIM_POL[i] >= 0 else 1.0) * LIM_SGN[i]
    K = P[0]
    fp = 0.0
    scale = 0.0
    apart = False
    for i in range(NV):
        for k in range(NF):
            w = 1.0 + ((i * NF + k) % 7)
            fp += w * K[i, k]
            scale += w * abs(K[i, k])
            if K[i, k] != 0.0 and SP_PBLK[i] != SP_OBLK[k]:
                apart = True
    ref = theta[SP_X0]
    lc[LC_OK] = 1.0 if abs(fp - ref) <= 1e-9 * scale + 1e-300 and not apart else 0.0
    for blk in range(SP_NB):
        c = SP_CLO[blk]
        for e in range(SP_OLO[blk], SP_OLO[blk + 1]):
            for j in range(SP_PLO[blk], SP_PLO[blk + 1]):
                lc[c] = K[SP_PORTS[j], SP_OUTS[e]]
                c += 1


def fm_eval(P, p, z, theta, phi, dphi, g, M, work):
    # DK's f, J, g = p + K f - v and M = I - K J, with J from its structural non-zeros (J slots)
    K = P[0]
    jv = work[W_JE:W_JE + SP_NJ]
    sp_devices(z, theta, phi, jv)
    n2 = sp_residual(K, p, z, phi, g)
    for i in range(NV):
        for j in range(NV):
            M[i, j] = 1.0 if i == j else 0.0
    for s in range(SP_NJ):
        dphi[JS_OUT[s], JS_PORT[s]] = 0.0
    for s in range(SP_NJ):
        k = JS_OUT[s]
        j = JS_PORT[s]
        val = jv[s]
        dphi[k, j] += val
        for i in range(NV):
            M[i, j] -= K[i, k] * val
    return n2


def fm_limit(P, zold, znew, lc, work):
    sp_limit(zold, znew, lc)


def fm_solve(P, p, z, theta, phi, lc, work, fopt, est, early):
    # Newton on DK's residual with the sparse direction: the core's tolerances, stop rule (newton_stop,
    # with its quadratic constant est[0] and early accept) and bound est[1] (kernels/core.py, newton_plain);
    # predictor z[n-1] + (I - K J)^-1 (p[n] - p[n-1]) when this solve gave z[n-1]
    if lc[LC_OK] == 0.0 or work[W_FLAG] == 0.0:
        work[W_FLAG] = 1.0  # the first sample is the core's (it has the warm start); then ours
        return False
    a = work[W_A:W_A + SP_NFILL]
    jv = work[W_JV:W_JV + SP_NJ]
    g = work[W_G:W_G + NV]
    b = work[W_B:W_B + SP_N]
    dz = work[W_DZ:W_DZ + NV]
    zt = work[W_ZT:W_ZT + NV]
    zp = work[W_ZP:W_ZP + NV]
    pp = work[W_PP:W_PP + NV]
    t = work[W_T:W_T + NV]
    reltol, abstol, bound = fopt[F_RELTOL], fopt[F_ABSTOL], est[1]
    c = est[0] * 0.999
    if work[W_FLAG] == 2.0:  # a holds the LU and jv the J of the last iteration of the previous sample
        same = True
        for i in range(NV):
            if z[i] != zp[i]:
                same = False
        if same:
            for i in range(NV):
                zt[i] = p[i] - pp[i]
            sp_direction(a, jv, zt, b, dz)
            for i in range(NV):
                z[i] += dz[i]
    prev = math.inf
    for _ in range(SP_MAXIT):
        sp_devices(z, theta, phi, jv)
        sp_kf(lc, p, z, phi, g, t)  # DK's residual itself (not -Nv S0^-1 W f: on the Big Muff the two
        # differ by 5e-10 of K, from M's condition number 1e9, and the output by 6e-7 of its range)
        sp_assemble(theta, a, jv)
        if not sp_factor(a):
            work[W_FLAG] = 1.0
            return False
        sp_direction(a, jv, g, b, dz)
        step = scaled_step(dz, z, reltol, abstol, NV)
        if step == math.inf:
            work[W_FLAG] = 1.0
            return False
        done, c = newton_stop(step, prev, c, early)
        if done:
            if not in_bound(z, dz, bound):  # the core's Newton finds it too and reports it
                work[W_FLAG] = 1.0
                return False
            est[0] = c
            for s in range(SP_NJ):  # phi += J dz, as the core's accept_step
                phi[JS_OUT[s]] += jv[s] * dz[JS_PORT[s]]
            for i in range(NV):
                z[i] += dz[i]
                zp[i] = z[i]
                pp[i] = p[i]
            work[W_FLAG] = 2.0
            return True
        for i in range(NV):
            zt[i] = z[i] + dz[i]
        prev = step
        sp_limit(z, zt, lc)
        for i in range(NV):
            if zt[i] != z[i] + dz[i]:
                prev = math.inf  # a limited step says nothing about the rate
            z[i] = zt[i]
    work[W_FLAG] = 1.0
    return False


def nl_eval(v, theta, f, J, work):
    # the nonlinearity's f and J (Nonlinearity.numba_eval's contract) from the device loops; J's
    # structural zeros are left as they are (every caller passes zeros); work holds the J slots
    sp_devices(v, theta, f, work)
    for s in range(SP_NJ):
        J[JS_OUT[s], JS_PORT[s]] = 0.0
    for s in range(SP_NJ):
        J[JS_OUT[s], JS_PORT[s]] += work[s]


# fmt: on
HOOKS = (sp_kf, sp_residual, sp_limit, fm_prepare, fm_eval,
         fm_limit, fm_solve)


def _array(name: str, values: Sequence[float] | np.ndarray, dtype: str) -> str:
    vals = np.asarray(values).reshape(-1)
    body = ", ".join(repr(int(x)) if dtype == "int64" else repr(float(x)) for x in vals)
    return f"{name} = np.array([{body}], dtype=np.{dtype})\n"


def constants(ints: dict[str, Sequence[int] | np.ndarray], floats: dict[str, Sequence[float] | np.ndarray],
              scalars: dict[str, int]) -> str:
    """Module source defining the index arrays (int64), float arrays and integer constants."""
    return ("".join(f"{k} = {int(v)}\n" for k, v in scalars.items())
            + "".join(_array(k, v, "int64") for k, v in ints.items())
            + "".join(_array(k, v, "float64") for k, v in floats.items()))


def fill_index(fill: Sequence[int]) -> dict[int, int]:
    """Where ``a`` keeps the entry at the row-major position ``i n + j`` of the pattern ``fill`` (ascending)."""
    return {int(q): e for e, q in enumerate(fill)}


def lu_source(n: int, lptr: Sequence[int], lrow: Sequence[int], uptr: Sequence[int], ucol: Sequence[int],
              fill: Sequence[int]) -> str:
    """``sp_factor(a)`` and ``sp_solve(a, b)`` as straight-line code for one circuit's LU pattern.

    ``a`` is the ``n x n`` matrix stored by its fill: entry ``e`` is the one at ``fill[e]`` (row-major
    ``i n + j``, ascending), eliminated in the order ``0..n-1`` over the symbolic fill: pivot ``k``'s L column
    has the rows ``lrow[lptr[k]:lptr[k + 1]]`` and its U row the columns ``ucol[uptr[k]:uptr[k + 1]]``
    (right-looking Gaussian elimination, Golub & Van Loan alg. 3.2.1
    restricted to the pattern, static pivots; False on a zero or non-finite pivot).  The diagonal keeps the
    pivots' reciprocals, which ``sp_solve`` multiplies by (a division per row costs several multiplications'
    latency on the solve's chain).

    Every index is a literal: on the Big Muff (54 unknowns, 222 multiply-adds) the factorisation takes 135 ns
    and a solve 45 ns, against 327 ns and 189 ns as loops over index arrays (the same operations in the same
    order, so the same rounding).  The code grows with the LU's operation count, so each is compiled once
    and called (not inlined into the two solves and the factorisation's call site).
    """
    at = fill_index(fill)
    f = ["@njit(cache=True)", "def sp_factor(a):"]
    for k in range(n):
        kk = at[k * n + k]
        f += [f"    piv = a[{kk}]", "    if not (abs(piv) > 0.0 and abs(piv) < math.inf):", "        return False",
              "    inv = 1.0 / piv", f"    a[{kk}] = inv"]
        for e in range(lptr[k], lptr[k + 1]):
            i = lrow[e]
            f += [f"    lik = a[{at[i * n + k]}] * inv", f"    a[{at[i * n + k]}] = lik"]
            f += [f"    a[{at[i * n + j]}] -= lik * a[{at[k * n + j]}]" for j in ucol[uptr[k]:uptr[k + 1]]]
    f.append("    return True")
    s = ["@njit(cache=True)", "def sp_solve(a, b):", "    # b <- (L U)^-1 b with sp_factor's factors"]
    for k in range(n):
        if lptr[k + 1] > lptr[k]:
            s.append(f"    bk = b[{k}]")
        s += [f"    b[{i}] -= a[{at[i * n + k]}] * bk" for i in lrow[lptr[k]:lptr[k + 1]]]
    for k in range(n - 1, -1, -1):
        s.append(f"    s = b[{k}]")
        s += [f"    s -= a[{at[k * n + j]}] * b[{j}]" for j in ucol[uptr[k]:uptr[k + 1]]]
        s.append(f"    b[{k}] = s * a[{at[k * n + k]}]")
    s.append("    return")
    return "\n\n" + "\n".join(f) + "\n\n\n" + "\n".join(s) + "\n"


def stamp_source(n: int, x0: int, st: Sequence[tuple[int, int, float]], bw: Sequence[tuple[int, int, float]],
                 js_port: Sequence[int], nvp: Sequence[Sequence[tuple[int, float]]]) -> str:
    """``sp_assemble(theta, a, jv)`` and ``sp_direction(a, jv, g, b, dz)``, compiled once and called (as
    :func:`lu_source`'s functions).

    ``sp_assemble``: ``a = S0 + W_U J Nv_U`` (``a`` stored by its fill, :func:`lu_source`): ``S0`` (a copy of
    ``theta[x0 + 1:]``), then the device stamps ``st = (entry of a, J slot, coefficient)``, one statement per
    entry that sums its terms in their order (``a[e] = a[e] + c1 * jv[s1] + ...``: the rounding of the loop
    ``a[e] += c * jv[s]`` over them).  ``sp_direction``, straight-line: the push-through direction
    ``dz = (I - K J)^-1 g = g - Nv_U (S0 + W_U J Nv_U)^-1 W_U J g`` (``a`` holds the LU): ``b = W_U J g`` from
    the terms ``bw = (row, J slot, coefficient)`` (J slot ``s`` reads port ``js_port[s]``), ``sp_solve``, then
    ``dz_i = g_i - sum`` over ``nvp[i] = ((node, coefficient), ...)``.  Each sum runs in the order of its terms
    (the loops' order: the same rounding).  On the Big Muff (144 + 72 direction terms) the direction takes
    124 ns against 231 ns as loops.
    """
    m = ["@njit(cache=True)", "def sp_assemble(theta, a, jv):", "    for e in range(SP_NFILL):",
         f"        a[e] = theta[{x0 + 1} + e]"]
    terms: dict[int, list[str]] = {}
    for e, slot, coef in st:
        terms.setdefault(e, []).append(f" + {coef!r} * jv[{slot}]")
    m += [f"    a[{e}] = a[{e}]{''.join(t)}" for e, t in terms.items()]
    m.append("    return")
    rows: dict[int, list[tuple[int, float]]] = {}
    for r, slot, coef in bw:
        rows.setdefault(r, []).append((slot, coef))
    d = ["@njit(cache=True)", "def sp_direction(a, jv, g, b, dz):"]
    for r in range(n):
        d.append(f"    b[{r}] = 0.0")
        d += [f"    b[{r}] += {coef!r} * jv[{slot}] * g[{js_port[slot]}]" for slot, coef in rows.get(r, [])]
    d.append("    sp_solve(a, b)")
    for i, terms in enumerate(nvp):
        d.append(f"    s = g[{i}]")
        d += [f"    s -= {coef!r} * b[{node}]" for node, coef in terms]
        d.append(f"    dz[{i}] = s")
    d.append("    return")
    return "\n\n" + "\n".join(m) + "\n\n\n" + "\n".join(d) + "\n"


def device_loops(groups: Sequence[dict]) -> str:
    """``sp_devices(v, theta, f, jv)``, ``nl_vjp_theta(v, theta, mu, gtheta, work)`` and ``nl_eval`` as loops.

    Appended to the nonlinearity's source (``Nonlinearity.nb_source``), they replace its unrolled
    ``nl_eval`` and ``nl_vjp_theta`` there (numba compiles only what is called, and a later definition
    wins), so its batch evaluation for the DC point and the formulation module use the loops.

    Each group is one generated device function (``fname``, from the family's program) and its
    instances: ``n``, ``size`` (theta length), ``nport``, ``nout``, ``pol`` (whether it has a
    polarity slot) and the arrays, defined in the module constants under ``prefix``: ``_OFF`` (theta
    offsets), ``_POL`` (polarity slots), ``_SGN`` (port signs), ``_PORT`` (n, nport), ``_OUT``
    (n, nout), ``_JS`` (n, nout * nport: J slot of output k, port j).  The device sees ``s * sign * v``
    and gives ``f = s f0``, ``df/dv = sign f0'`` (``s`` the polarity), as nonlinearity.py's nl_eval.
    """
    # compiled once and called (not numba-inlined): the core has five call sites (the sparse solve, Newton,
    # both damped-Newton evaluations, the start) and numba's inliner would copy every device variant into each
    ev = ["@njit(cache=True)", "def sp_devices(v, theta, f, jv):"]
    vj = ["@njit(cache=True)", "def nl_vjp_theta(v, theta, mu, gtheta, work):"]
    for gr in groups:
        pre, fn, size, npt, no = gr["prefix"], gr["fname"], gr["size"], gr["nport"], gr["nout"]
        head = [f"    for d in range({pre}_N):", f"        off = {pre}_OFF[d]",
                f"        s = theta[{pre}_POL[d]]" if gr["pol"] else "        s = 1.0",
                f"        a = s * {pre}_SGN[d]"]
        args = ", ".join(f"a * v[{pre}_PORT[d, {j}]]" for j in range(npt))
        rets = [f"r{i}" for i in range(no * (1 + npt))]
        ev += head + [f"        {', '.join(rets)}, = {fn}({args}, theta[off:off + {size}])"]
        ev += [f"        f[{pre}_OUT[d, {k}]] = s * r{k}" for k in range(no)]
        ev += [f"        jv[{pre}_JS[d, {k * npt + j}]] = {pre}_SGN[d] * r{no + k * npt + j}"
               for k in range(no) for j in range(npt)]
        mus = ", ".join(f"s * mu[{pre}_OUT[d, {k}]]" for k in range(no))
        vj += head + [f"        {fn}_vjp({args}, theta[off:off + {size}], {mus}, gtheta[off:off + {size}])"]
    ev.append("    return")
    vj.append("    return")
    nle = f"@njit(cache=True, inline=\"always\")\n{inspect.getsource(nl_eval)}"
    return "\n\n" + "\n".join(ev) + "\n\n\n" + "\n".join(vj) + "\n\n\n" + nle


__all__ = ["HOOKS", "constants", "device_loops", "fill_index", "lu_source", "stamp_source"]
