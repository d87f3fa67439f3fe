"""Device models: parameter tables and differentiable torch equations (ngspice 39 semantics).

``diode`` (junction diode, level 1) and ``bjt`` (Gummel-Poon) give currents, charges and their
Jacobians; ``constants`` holds ngspice's physical constants; ``catalog`` classifies ``.model``
parameters.  The numba twins of the equations live in ``circuitsim.kernels.devices``.
"""
