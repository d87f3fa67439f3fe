"""circuitsim: a differentiable white-box circuit simulator for audio circuits.

>>> import circuitsim
>>> model = circuitsim.load("netlists/diode_clipper.cir", method="mna", sample_rate=384000)
>>> y = model(x)   # x: (batch, time) float64 input volts -> output volts
"""

from circuitsim.api import METHODS, load, load_circuit, register_method, render, simulate
from circuitsim.circuit.circuit import Circuit, ParamKind
from circuitsim.formulations.base import AbstractCircuitModule
from circuitsim.netlist import NetlistError
from circuitsim.solvers.newton import NewtonError
from circuitsim.stn import distill

__all__ = [
    "METHODS",
    "AbstractCircuitModule",
    "Circuit",
    "NetlistError",
    "NewtonError",
    "ParamKind",
    "distill",
    "load",
    "load_circuit",
    "register_method",
    "render",
    "simulate",
]
__version__ = "0.1.0"
