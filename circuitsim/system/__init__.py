"""The circuit's equations in MNA row space (unknowns, stamps, device blocks), shared by every formulation.

This layer sits below ``solvers/`` and ``formulations/`` (docs/architecture.md): it imports
``circuit/``, ``devices/`` and ``kernels/`` only.
"""

from circuitsim.system.mna_system import DTYPE, MNAMatrices, MNATopology

__all__ = ["DTYPE", "MNAMatrices", "MNATopology"]
