"""Device families: each device's equations written once, and everything else generated from them.

``diode`` (junction diode, level 1) and ``bjt`` (Gummel-Poon) are registered families
(``registry``; base class in ``family``): parameter tables, instance scaling, theta layout and a
program of equations (``program``; building blocks in ``junction``) from which the torch
evaluation, the numba forward, the Jacobian and the parameter VJP are generated.  ``constants``
holds ngspice's physical constants; ``catalog`` classifies ``.model`` parameters.
"""
