"""Port-Hamiltonian formulation (Falaize & Hélie 2016): structure from the netlist, discrete-gradient step.

See docs/phs.md.  ``PHSModule`` is registered as method ``"phs"``.
"""

from circuitsim.formulations.phs.energy import CSV_COLUMNS, EnergyReport, read_csv
from circuitsim.formulations.phs.module import PHSModule, PHSState
from circuitsim.formulations.phs.structure import Branch, PHStructure, analyse

__all__ = ["CSV_COLUMNS", "Branch", "EnergyReport", "PHSModule", "PHSState", "PHStructure", "analyse", "read_csv"]
