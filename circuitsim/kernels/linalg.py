"""Small dense linear algebra for the compiled per-sample core, written once.

Every function here except :func:`borrow` is a plain Python template: :mod:`circuitsim.kernels.codegen`
pastes it into each generated module decorated with ``@njit(cache=True, inline="always")``, so
the forward Newton loop, its fallbacks and the adjoint loop all inline the same LU factor and
solve (Golub & Van Loan, *Matrix Computations*, 4th ed., alg. 3.4.1 and 3.4.2) and the same
matrix-vector products.  Sizes are tiny (a handful of ports), so loops beat BLAS calls.  The
exceptions are :data:`BLOCK_TEMPLATES`, the adjoint's sums over a block of samples: compiled on
their own with ``fastmath`` reassociation (the core's ``TEMPLATES``), so that their long loops over
the block vectorise; on these skinny products (a few rows, hundreds of samples) they are several
times faster than BLAS (``np.dot``) and than per-sample rank-1 updates.
"""

from __future__ import annotations

import math

from numba.core import cgutils, types
from numba.extending import intrinsic

# multiply-adds of a product above which tmv3 passes over the rows of the matrices (vectorised) instead of
# taking a dot product per output: below it the compiler unrolls the dot products whole and interleaves their
# independent sums (2.2-2.6x faster than the passes at 16-32 states), above it the serial sums of the rolled
# dot products lose (2.5x slower at 59 states); `python benchmarks/bench_kernel.py --maps`
AXPY_MACS = 2048


def _borrow_array(context, builder, aryty, value):
    src = context.make_array(aryty)(context, builder, value=value)
    dst = context.make_array(aryty)(context, builder)
    for name in ("nitems", "itemsize", "data", "shape", "strides"):
        setattr(dst, name, getattr(src, name))
    dst.meminfo = cgutils.get_null_value(dst.meminfo.type)
    dst.parent = cgutils.get_null_value(dst.parent.type)
    return dst._getvalue()


@intrinsic
def borrow(typingctx, arr):
    """A view of ``arr`` (an array, or a tuple of arrays) without reference counting (NULL meminfo).

    numba increments and decrements (atomically) the reference count of every array it copies
    into a local or passes on, which in a Newton loop costs most of the time per sample (about
    100 ns, measured with ``benchmarks/bench_kernel.py``).  On a borrowed view those operations
    are no-ops.  Valid only while the caller keeps ``arr`` alive (here: arguments of the running
    kernel).
    """
    if isinstance(arr, types.Array):

        def codegen(context, builder, sig, args):
            return _borrow_array(context, builder, sig.args[0], args[0])

        return arr(arr), codegen
    if isinstance(arr, types.BaseTuple) and all(isinstance(t, types.Array) for t in arr):

        def codegen_tuple(context, builder, sig, args):
            tup = args[0]
            for i, ty in enumerate(sig.args[0]):
                item = _borrow_array(context, builder, ty, builder.extract_value(tup, i))
                tup = builder.insert_value(tup, item, i)
            return tup

        return arr(arr), codegen_tuple
    return None


# fmt: off
# ----------------------------------------------------------------------------- templates


def small_inverse(M, n):
    # M <- M^-1 for n <= 3 by the adjugate over the determinant (Cramer's rule): one division and no
    # pivoting branches, where the LU's pivot search, swaps and n divisions in a dependency chain cost
    # more than the arithmetic (benchmarks/bench_kernel.py); False if singular
    if n == 1:
        d = M[0, 0]
        if not (abs(d) > 0.0 and abs(d) < math.inf):
            return False
        M[0, 0] = 1.0 / d
        return True
    if n == 2:
        a, b, c, d = M[0, 0], M[0, 1], M[1, 0], M[1, 1]
        det = a * d - b * c
        if not (abs(det) > 0.0 and abs(det) < math.inf):
            return False
        r = 1.0 / det
        M[0, 0] = d * r
        M[0, 1] = -b * r
        M[1, 0] = -c * r
        M[1, 1] = a * r
        return True
    a, b, c = M[0, 0], M[0, 1], M[0, 2]
    d, e, f = M[1, 0], M[1, 1], M[1, 2]
    g, h, k = M[2, 0], M[2, 1], M[2, 2]
    c0, c1, c2 = e * k - f * h, f * g - d * k, d * h - e * g  # cofactors of the first row
    det = a * c0 + b * c1 + c * c2
    if not (abs(det) > 0.0 and abs(det) < math.inf):
        return False
    r = 1.0 / det
    M[0, 0] = c0 * r
    M[0, 1] = (c * h - b * k) * r
    M[0, 2] = (b * f - c * e) * r
    M[1, 0] = c1 * r
    M[1, 1] = (a * k - c * g) * r
    M[1, 2] = (c * d - a * f) * r
    M[2, 0] = c2 * r
    M[2, 1] = (b * g - a * h) * r
    M[2, 2] = (a * e - b * d) * r
    return True


def lu_factor(M, piv, n):
    # in-place LU with partial pivoting, P M = L U (Golub & Van Loan alg. 3.4.1); False if singular.
    # The diagonal holds 1/U_kk (the elimination needs it anyway), so that lu_solve multiplies: a
    # division costs ~14 cycles of latency in the solve's dependency chain, a multiplication 4.
    # n <= 3 (sizes are compile-time constants): the factors are M^-1 itself (small_inverse).
    if n <= 3:
        for k in range(n):
            piv[k] = k
        return small_inverse(M, n)
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
        M[k, k] = inv
        for i in range(k + 1, n):
            lik = M[i, k] * inv
            M[i, k] = lik
            for j in range(k + 1, n):
                M[i, j] -= lik * M[k, j]
    return True


def lu_solve(M, piv, b, n):
    # b <- (P^T L U)^-1 b in place, with the factors of lu_factor (alg. 3.4.2; diagonal 1/U_kk); n <= 3:
    # b <- M b with M the inverse
    if n <= 3:
        b0 = b[0]
        b1 = b[1] if n > 1 else 0.0
        b2 = b[2] if n > 2 else 0.0
        for i in range(n):
            b[i] = M[i, 0] * b0 + (M[i, 1] * b1 if n > 1 else 0.0) + (M[i, 2] * b2 if n > 2 else 0.0)
        return
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
        b[i] = s * M[i, i]


def lu_solve_t(M, piv, b, n):
    # b <- (P^T L U)^-T b in place, with the factors of lu_factor: the transposed system U' L' P x = b by forward
    # substitution with U' (diagonal 1/U_kk), back substitution with L' (unit diagonal), then x = P' z (the swaps
    # undone last first; Golub & Van Loan sec. 3.4.2 applied to M' = U' L' P).  The adjoint solves M' w = r with the
    # factors of M itself, without a transposed copy of M; n <= 3: b <- M' b with M the inverse
    if n <= 3:
        b0 = b[0]
        b1 = b[1] if n > 1 else 0.0
        b2 = b[2] if n > 2 else 0.0
        for i in range(n):
            b[i] = M[0, i] * b0 + (M[1, i] * b1 if n > 1 else 0.0) + (M[2, i] * b2 if n > 2 else 0.0)
        return
    for i in range(n):
        s = b[i]
        for j in range(i):
            s -= M[j, i] * b[j]
        b[i] = s * M[i, i]
    for i in range(n - 1, -1, -1):
        s = b[i]
        for j in range(i + 1, n):
            s -= M[j, i] * b[j]
        b[i] = s
    for k in range(n - 1, -1, -1):
        r = piv[k]
        if r != k:
            t = b[k]
            b[k] = b[r]
            b[r] = t


def solve_into(M, piv, rhs, out, n):
    # out = M^-1 rhs, factoring M in place (M then holds its LU factors); False if M is singular
    for i in range(n):
        out[i] = rhs[i]
    if not lu_factor(M, piv, n):
        return False
    lu_solve(M, piv, out, n)
    return True


def mv(out, M, a, rows, cols, acc):
    # out = M a (acc False) or out += M a (acc True), M rows x cols; the sizes are passed in so
    # that compile-time constants unroll the loops
    for i in range(rows):
        s = out[i] if acc else 0.0
        for j in range(cols):
            s += M[i, j] * a[j]
        out[i] = s


def tmv3_takes_dots(rows, n1, n2, n3):
    # whether tmv3 takes a dot product per output row (True) or passes over the rows of the matrices: up to
    # AXPY_MACS multiply-adds.  Plain Python too: codegen.sized_module calls it where the sizes of a call are
    # compile-time constants, to paste the chosen loop order in place of tmv3
    return rows * (n1 + n2 + n3) <= AXPY_MACS


def tmv3_dots(out, M1, a, n1, M2, b, n2, M3, c, n3, rows, acc=False):
    # tmv3 by dot products: out[i] = (out[i] if acc) + sum_j M1[j, i] a[j] + ..., the sum of each row in a
    # register (the compiler unrolls the dot products whole and interleaves their independent sums)
    for i in range(rows):
        s = out[i] if acc else 0.0
        for j in range(n1):
            s += M1[j, i] * a[j]
        for j in range(n2):
            s += M2[j, i] * b[j]
        for j in range(n3):
            s += M3[j, i] * c[j]
        out[i] = s


def tmv3_axpy(out, M1, a, n1, M2, b, n2, M3, c, n3, rows, acc=False):
    # tmv3 by passes: out += a[j] M1[j, :] row after row of M (contiguous), which vectorises across i without
    # reassociating any sum (a dot product cannot: its one sum is a serial chain); each out[i] is summed in
    # the order of tmv3_dots, so both round alike
    if not acc:
        for i in range(rows):
            out[i] = 0.0
    for j in range(n1):
        aj = a[j]
        for i in range(rows):
            out[i] += M1[j, i] * aj
    for j in range(n2):
        bj = b[j]
        for i in range(rows):
            out[i] += M2[j, i] * bj
    for j in range(n3):
        cj = c[j]
        for i in range(rows):
            out[i] += M3[j, i] * cj


def tmv3(out, M1, a, n1, M2, b, n2, M3, c, n3, rows, acc=False):
    # out[i] = sum_j M1[j, i] a[j] + sum_j M2[j, i] b[j] + sum_j M3[j, i] c[j] for i < rows (acc: out[i] += the
    # same sums, added to out[i] in that order): the products
    # M1' a + M2' b + M3' c of the (stored) transposes, every sum in that order, j ascending, in both loop
    # orders (tmv3_dots, tmv3_axpy), so that both round alike.  Up to AXPY_MACS multiply-adds a dot product
    # per row (tmv3_takes_dots), above it the passes.  The forward passes A' ... H' (core.forward), the adjoint A, D,
    # G ... themselves.  Sizes are compile-time constants (NX, NU, NZ, NPHI; the output count Ny is not):
    # where all four of a call are, codegen.sized_module pastes the chosen order in place of this call, so that
    # numba types and lowers one loop order there instead of both (the constant test is decided only by LLVM)
    if tmv3_takes_dots(rows, n1, n2, n3):
        tmv3_dots(out, M1, a, n1, M2, b, n2, M3, c, n3, rows, acc)
    else:
        tmv3_axpy(out, M1, a, n1, M2, b, n2, M3, c, n3, rows, acc)


def mtv(out, M, a, rows, cols, acc):
    # out = M' a (acc False) or out += M' a (acc True), M rows x cols: column j of M dotted with a
    for j in range(cols):
        s = 0.0
        for i in range(rows):
            s += a[i] * M[i, j]
        out[j] = out[j] + s if acc else s


def outer_acc(dM, a, b, rows, cols):
    # dM += a b' (the gradient of M in the product M b, given the cotangent a of the product)
    for i in range(rows):
        ai = a[i]
        for j in range(cols):
            dM[i, j] += ai * b[j]


def rows_to_columns(dst, src, s0, L):
    # dst[i, k] = src[s0 + k, i] for k < L and every column i of src (a block of samples, one per
    # row of src, as the columns of dst)
    for i in range(src.shape[1]):
        for k in range(L):
            dst[i, k] = src[s0 + k, i]


def copy_into(dst, src, n):
    # dst[:n] = src[:n]
    for i in range(n):
        dst[i] = src[i]


def copy_matrix(dst, src, transpose):
    # dst = src, or src' when transpose
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[j, i] if transpose else src[i, j]


def scaled_step(dz, z, reltol, abstol, n):
    # max_i |dz_i| / (reltol |z_i| + abstol): <= 1 means converged; inf/nan -> inf
    s = 0.0
    for i in range(n):
        r = abs(dz[i]) / (reltol * abs(z[i]) + abstol)
        if not (r <= 1e300):
            return math.inf
        if r > s:
            s = r
    return s


def gram_acc(out, a, b, L):
    # out[i, j] += sum_{k < L} a[i, k] b[j, k]: a block's sum of the outer products a[:, k] b[:, k]',
    # the columns stored as rows so that the sums over k run over contiguous memory (and vectorise:
    # these two functions are compiled with fastmath reassociation, see BLOCK_TEMPLATES)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            s = 0.0
            for k in range(L):
                s += a[i, k] * b[j, k]
            out[i, j] += s


def mtm_block(out, M, a, L):
    # out[j, k] = sum_i M[i, j] a[i, k] for k < L: M' applied to the block's columns a[:, k]
    for j in range(M.shape[1]):
        for k in range(L):
            out[j, k] = 0.0
        for i in range(M.shape[0]):
            m = M[i, j]
            for k in range(L):
                out[j, k] += m * a[i, k]


# fmt: on
# compiled on their own (not inlined) with fastmath reassociation: listed by the core's TEMPLATES
BLOCK_TEMPLATES = ("gram_acc", "mtm_block")
TEMPLATES = (
    "small_inverse",
    "lu_factor",
    "lu_solve",
    "lu_solve_t",
    "solve_into",
    "mv",
    "tmv3_takes_dots",
    "tmv3_dots",
    "tmv3_axpy",
    "tmv3",
    "mtv",
    "outer_acc",
    "rows_to_columns",
    "copy_into",
    "copy_matrix",
    "scaled_step",
)

__all__ = ["BLOCK_TEMPLATES", "TEMPLATES", "borrow", "gram_acc", "lu_factor", "lu_solve", "lu_solve_t", "mtm_block",
           "solve_into"]
