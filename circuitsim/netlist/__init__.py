"""SPICE netlist (ngspice dialect) -> :mod:`circuitsim.netlist.ast`.

>>> from circuitsim.netlist import parse_string
>>> net = parse_string("demo\\nR1 in out 2.2k\\nC1 out 0 10n\\n.end\\n")
>>> [(e.name, e.value.value) for e in net.elements]
[('R1', 2200.0), ('C1', 1e-08)]
"""

from circuitsim.netlist.errors import NetlistError, NetlistWarning
from circuitsim.netlist.expr import MATH_OPS, TORCH_OPS, evaluate, free_names, parse_expr, to_sympy
from circuitsim.netlist.parser import parse_file, parse_string
from circuitsim.netlist.units import parse_number
from circuitsim.netlist.writer import format_value, rewrite_values

__all__ = [
    "MATH_OPS",
    "TORCH_OPS",
    "NetlistError",
    "NetlistWarning",
    "evaluate",
    "format_value",
    "free_names",
    "parse_expr",
    "parse_file",
    "parse_number",
    "parse_string",
    "rewrite_values",
    "to_sympy",
]
