"""Wave digital filters built automatically from a netlist (docs/wdf.md)."""

from circuitsim.formulations.wdf.module import WDFModule
from circuitsim.formulations.wdf.tree import WDFTree, build_tree

__all__ = ["WDFModule", "WDFTree", "build_tree"]
