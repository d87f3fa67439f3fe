"""Physical constants and simulator defaults exactly as ngspice 39 uses them.

Sources (ngspice-39 tree): ``src/include/ngspice/const.h`` (CHARGE, CONSTboltz, CONSTnap,
CONSTsqrt2, REFTEMP), ``src/main.c`` (``CONSTKoverQ = CONSTboltz / CHARGE``, ``CONSTe =
CONSTnap``), ``src/spicelib/devices/cktinit.c`` (default TEMP = TNOM = 300.15 K, GMIN = 1e-12 S,
RELTOL = 1e-3, EPSMIN = 1e-28) and ``src/include/ngspice/defines.h`` (MAX_EXP_ARG).

Every value is a Python float (float64); the thermal voltage is formed in the same order of
operations as ngspice (``CONSTKoverQ * Temp``) so that it is bit-identical.
"""

from __future__ import annotations

import math

CHARGE: float = 1.6021766208e-19  # elementary charge, coulombs (const.h)
BOLTZMANN: float = 1.38064852e-23  # Boltzmann constant, joules per kelvin (const.h)
K_OVER_Q: float = BOLTZMANN / CHARGE  # volts per kelvin (main.c: CONSTKoverQ)
CELSIUS_TO_KELVIN: float = 273.15  # const.h CONSTCtoK
TNOM_KELVIN: float = 300.15  # 27 degC, the default TEMP and TNOM (cktinit.c; const.h REFTEMP)
VT: float = K_OVER_Q * TNOM_KELVIN  # thermal voltage k*T/q at 300.15 K, volts (~25.865 mV)

GMIN: float = 1e-12  # siemens, added across every pn junction (cktinit.c CKTgmin)
EPSMIN: float = 1e-28  # amperes; ngspice floors the diode IS and disables IKF/IKR below it (cktinit.c)
RELTOL: float = 1e-3  # ngspice's default RELTOL; only the diode breakdown-voltage fit depends on it
CONST_E: float = math.e  # const.h CONSTnap (2.71828...), used by the reverse-bias junction branch
ROOT2: float = math.sqrt(2.0)  # const.h CONSTsqrt2, used by Vcrit
MAX_EXP_ARG: float = 709.0  # defines.h; larger arguments overflow exp() in float64

# Our own guard, not ngspice's: junction exponents are clamped at this value so that an
# evaluation far outside the physical range (a Newton iterate without limiting, or the unused
# side of a torch.where) stays finite.  ngspice never evaluates there (DEVpnjlim) and would
# overflow to inf; below it the clamp is inactive and results are identical.
EXP_LIMIT: float = 700.0

__all__ = [
    "BOLTZMANN",
    "CELSIUS_TO_KELVIN",
    "CHARGE",
    "CONST_E",
    "EPSMIN",
    "EXP_LIMIT",
    "GMIN",
    "K_OVER_Q",
    "MAX_EXP_ARG",
    "RELTOL",
    "ROOT2",
    "TNOM_KELVIN",
    "VT",
]
