"""Learn component values from input/output recordings (``circuitsim fit``, docs/fitting.md)."""

from circuitsim.fit.data import FitData, load_input_target, load_pair
from circuitsim.fit.report import identifiability, write_report
from circuitsim.fit.trainer import FitResult, default_learnable, fit

__all__ = ["FitData", "FitResult", "default_learnable", "fit", "identifiability", "load_input_target",
           "load_pair", "write_report"]
