"""State-trained neural networks (Parker, Esqueda & Bergner, DAFx-19) distilled from the white-box model.

``distill`` (training), ``STNFile`` (the ``.stn`` format), and the pieces: ``excitation``,
``teacher``, ``model``, ``inference``.  The module for simulation is
:class:`circuitsim.formulations.stn.STNModule` (``circuitsim.load(..., method="stn", weights=...)``).
See ``docs/stn.md``.
"""

from circuitsim.stn.fileformat import STNFile, STNFileError
from circuitsim.stn.training import distill

__all__ = ["STNFile", "STNFileError", "distill"]
