"""Four exponentials in one call of glibc's vector math library (libmvec), for the generated device code.

A Gummel-Poon evaluation takes up to five ``exp`` of the port voltages (the junction currents, the
leakage currents, the transit-time factor ``exp(vbc/(1.44 VTF))``; docs/devices.md, "BJT").  Each is a
call of libm's scalar ``exp``, around which the compiled code spills and reloads every live floating-point
register (the x86-64 System V ABI saves none of them across calls).  libmvec's ``_ZGVdN4v_exp`` takes four
arguments in one AVX2 register in about the time of one scalar call; glibc states a maximum error of 4 ulp for
libmvec's functions (the scalar ``exp``: within 1), which ``tests/test_devices.py`` checks against ``math.exp``.
:meth:`circuitsim.devices.program.Program.numba_eval_source` batches the exponentials of a device
evaluation into :func:`vexp4` calls where :data:`AVAILABLE` (glibc on x86-64 with AVX2), and keeps the
scalar calls elsewhere.  ``benchmarks/bench_devices.py --eval`` measures the difference.
"""

from __future__ import annotations

import platform
import sys

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 4
_SYMBOL = "_ZGVdN4v_exp"  # the x86-64 vector function ABI name: AVX2 ("d"), unmasked ("N"), 4 lanes, vector arg


def _load() -> bool:
    # libmvec is part of glibc >= 2.22 on x86-64; its AVX2 variant needs an AVX2 CPU
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    try:
        import llvmlite.binding as llvm

        if not llvm.get_host_cpu_features().get("avx2", False):
            return False
        llvm.load_library_permanently("libmvec.so.1")  # resolves _SYMBOL for the JIT, cached code included
        return llvm.address_of_symbol(_SYMBOL) is not None
    except (OSError, RuntimeError, ImportError):
        return False


AVAILABLE: bool = _load()


@intrinsic
def vexp4(typingctx, a, b, c, d):  # noqa: ANN001, ANN201 (numba intrinsic)
    """``(exp(a), exp(b), exp(c), exp(d))`` in one libmvec call (numba code only; needs :data:`AVAILABLE`)."""
    from llvmlite import ir

    sig = types.UniTuple(types.float64, LANES)(types.float64, types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        vt = ir.VectorType(ir.DoubleType(), LANES)
        vec = ir.Constant(vt, ir.Undefined)
        for i, x in enumerate(args):
            vec = builder.insert_element(vec, x, ir.IntType(32)(i))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]), _SYMBOL)
        r = builder.call(fn, [vec])
        outs = [builder.extract_element(r, ir.IntType(32)(i)) for i in range(LANES)]
        return context.make_tuple(builder, signature.return_type, outs)

    return sig, codegen


__all__ = ["AVAILABLE", "LANES", "vexp4"]
