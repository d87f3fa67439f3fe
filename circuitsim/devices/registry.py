"""The registry of device families: SPICE element letter and ``.model`` type -> family.

A family is one module under ``circuitsim/devices/`` that defines ``FAMILY`` (a
:class:`~circuitsim.devices.family.DeviceFamily`); registering it is one line in
:data:`FAMILY_MODULES`.  The circuit builder, the MNA system layer and the kernels iterate over
the registered families (docs/architecture.md, "Adding a device family").
"""

from __future__ import annotations

import importlib

from circuitsim.devices.family import DeviceFamily

# one line per family
FAMILY_MODULES: tuple[str, ...] = (
    "circuitsim.devices.diode",
    "circuitsim.devices.bjt",
    "circuitsim.devices.jfet",
    "circuitsim.devices.mosfet",
)

_FAMILIES: dict[str, DeviceFamily] = {}


def register(family: DeviceFamily) -> DeviceFamily:
    """Add a family (also usable for families defined outside this package)."""
    for other in _FAMILIES.values():
        if other.name != family.name and (other.letter == family.letter
                                           or set(other.model_types) & set(family.model_types)):
            raise ValueError(f"device family {family.name} clashes with {other.name}")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, DeviceFamily]:
    """Every registered family by name (the built-in ones are imported on first use)."""
    if not _FAMILIES or any(m.rsplit(".", 1)[1] not in _LOADED for m in FAMILY_MODULES):
        for mod in FAMILY_MODULES:
            if mod.rsplit(".", 1)[1] not in _LOADED:
                _LOADED.add(mod.rsplit(".", 1)[1])
                register(importlib.import_module(mod).FAMILY)
    return _FAMILIES


_LOADED: set[str] = set()


def family(name: str) -> DeviceFamily:
    """The family called ``name`` (``"diode"``, ``"bjt"``)."""
    return families()[name]


def family_for_letter(letter: str) -> DeviceFamily | None:
    """The family of a SPICE element letter (``"D"``, ``"Q"``), or None for a non-device element."""
    for fam in families().values():
        if fam.letter == letter.upper():
            return fam
    return None


def family_for_model_type(model_type: str) -> DeviceFamily | None:
    """The family of a ``.model`` type (``"D"``, ``"NPN"``), or None."""
    for fam in families().values():
        if model_type.upper() in fam.model_types:
            return fam
    return None


def model_types() -> tuple[str, ...]:
    """Every ``.model`` type a registered family accepts."""
    return tuple(t for fam in families().values() for t in fam.model_types)


__all__ = ["FAMILY_MODULES", "families", "family", "family_for_letter", "family_for_model_type", "model_types",
           "register"]
