"""Which ``.model`` parameters each device family models, accepts silently, or only warns about.

The tables come from the registered families (``circuitsim/devices/registry.py``).
"""

from __future__ import annotations

from typing import Literal

from circuitsim.devices.registry import family_for_model_type

Status = Literal["modelled", "silent", "unmodelled", "unknown"]


def canonical_name(model_type: str, param: str) -> str:
    """The canonical spelling of a model parameter (``CJ0`` -> ``CJO``)."""
    fam = family_for_model_type(model_type)
    aliases = fam.aliases if fam is not None else {}
    return aliases.get(param.upper(), param.upper())


def model_parameter_status(model_type: str, param: str) -> Status:
    """Whether ``param`` of a ``model_type`` card is modelled, silently accepted, warned about or unknown."""
    fam = family_for_model_type(model_type)
    if fam is None:
        raise KeyError(model_type)
    p = canonical_name(model_type, param)
    if p in fam.defaults:
        return "modelled"
    if p in fam.silent:
        return "silent"
    if p in fam.unmodelled:
        return "unmodelled"
    return "unknown"


def model_defaults(model_type: str) -> dict[str, float]:
    """Every modelled parameter of a family with ngspice's default value."""
    fam = family_for_model_type(model_type)
    if fam is None:
        raise KeyError(model_type)
    return dict(fam.defaults)
