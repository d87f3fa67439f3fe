"""Which ``.model`` parameters each device family models, accepts silently, or only warns about."""

from __future__ import annotations

from typing import Literal

from circuitsim.devices.bjt import BJT_ALIASES, BJT_DEFAULTS, BJT_SILENT, BJT_UNMODELLED
from circuitsim.devices.diode import DIODE_ALIASES, DIODE_DEFAULTS, DIODE_SILENT, DIODE_UNMODELLED

Status = Literal["modelled", "silent", "unmodelled", "unknown"]

_TABLES = {
    "D": (DIODE_DEFAULTS, DIODE_SILENT, DIODE_UNMODELLED),
    "NPN": (BJT_DEFAULTS, BJT_SILENT, BJT_UNMODELLED),
    "PNP": (BJT_DEFAULTS, BJT_SILENT, BJT_UNMODELLED),
}

# Alternative spellings ngspice accepts for the same parameter (checked against ngspice 39).
ALIASES = {"D": DIODE_ALIASES, "NPN": BJT_ALIASES, "PNP": BJT_ALIASES}


def canonical_name(model_type: str, param: str) -> str:
    """The canonical spelling of a model parameter (``CJ0`` -> ``CJO``)."""
    return ALIASES.get(model_type, {}).get(param.upper(), param.upper())


def model_parameter_status(model_type: str, param: str) -> Status:
    """Whether ``param`` of a ``model_type`` card is modelled, silently accepted, warned about or unknown."""
    defaults, silent, unmodelled = _TABLES[model_type]
    p = canonical_name(model_type, param)
    if p in defaults:
        return "modelled"
    if p in silent:
        return "silent"
    if p in unmodelled:
        return "unmodelled"
    return "unknown"


def model_defaults(model_type: str) -> dict[str, float]:
    """Every modelled parameter of a family with ngspice's default value."""
    return dict(_TABLES[model_type][0])
