"""The ``.stn`` file: an uncompressed NumPy ``.npz`` archive of the weights plus one JSON metadata entry.

Documented in ``docs/stn.md``.  Entries: ``metadata`` (a 0-d unicode array holding JSON) and one
float64 array per weight (``W1 b1 W2 b2 W3 L ra rB``).  Read with ``allow_pickle=False``: a file
never runs code.  :func:`check_compatible` gives the one-line refusals (another netlist, another
rate, another input source or output node, a fixed value changed).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from circuitsim.errors import CircuitsimError
from circuitsim.stn.model import STNNet

FORMAT = "circuitsim-stn"
VERSION = 1


class STNFileError(CircuitsimError, ValueError):
    """A ``.stn`` file that cannot be used: unreadable, another format/version, or for another circuit/rate."""


def netlist_hash(netlist) -> str:  # noqa: ANN001 - circuitsim.netlist.ast.Netlist
    """SHA-256 of the exact text of every file the netlist read (main file, then includes, in reading order)."""
    h = hashlib.sha256()
    for lines in netlist.sources.values():
        h.update("".join(lines).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class STNFile:
    """Weights (float64 arrays, :attr:`STNNet.WEIGHTS`) and metadata (see ``docs/stn.md``)."""

    arrays: dict[str, np.ndarray]
    metadata: dict = field(default_factory=dict)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the file (``.stn`` is added to a path without a suffix); refuses to replace one unless asked."""
        p = Path(path)
        if p.suffix == "":
            p = p.with_suffix(".stn")
        if p.exists() and not overwrite:
            raise STNFileError(f"{p} exists; use --overwrite (overwrite=True) to replace it")
        meta = {"format": FORMAT, "version": VERSION, **self.metadata}
        with open(p, "wb") as fh:
            np.savez(fh, metadata=np.array(json.dumps(meta, indent=1)), **{k: np.asarray(v, dtype=np.float64)
                                                                         for k, v in self.arrays.items()})
        return p

    @classmethod
    def load(cls, path: str | Path) -> STNFile:
        """Read and check format and version; one-line :class:`STNFileError` otherwise."""
        p = Path(path)
        if not p.is_file():
            raise STNFileError(f"{p}: no such STN file")
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["metadata"][()]))
                arrays = {k: np.asarray(z[k], dtype=np.float64) for k in z.files if k != "metadata"}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise STNFileError(f"{p}: not a circuitsim STN file ({str(exc).splitlines()[0] if str(exc) else exc})") \
                from None
        if meta.get("format") != FORMAT:
            raise STNFileError(f"{p}: not a circuitsim STN file (format '{meta.get('format')}')")
        if meta.get("version") != VERSION:
            raise STNFileError(f"{p}: STN format version {meta.get('version')} is not supported (this circuitsim "
                               f"reads version {VERSION}); distil again")
        missing = [n for n in (*STNNet.WEIGHTS, "sigma") if n not in arrays]
        needed = ("netlist", "sample_rate", "input_source", "output_node", "states", "knobs", "normalisation", "hidden")
        missing += [k for k in needed if k not in meta]
        if missing:
            raise STNFileError(f"{p}: STN file lacks {', '.join(missing)}")
        obj = cls(arrays, meta)
        obj.path = p
        return obj

    def check_compatible(self, circuit, sample_rate: float, input_source: str, output_node: str,  # noqa: ANN001
                         values: Mapping[str, float]) -> None:
        """Refuse (one line) a file distilled from another netlist, at another rate or with other fixed values."""
        meta = self.metadata
        name = getattr(self, "path", "the STN file")
        digest = netlist_hash(circuit.netlist)
        if digest != meta["netlist"]["sha256"]:
            raise STNFileError(f"{name} was distilled from another netlist ({meta['netlist']['name']}, sha256 "
                               f"{meta['netlist']['sha256'][:12]}), not {Path(circuit.netlist.path).name} "
                               f"(sha256 {digest[:12]}); distil it again")
        if abs(float(sample_rate) - float(meta["sample_rate"])) > 1e-9 * float(meta["sample_rate"]):
            raise STNFileError(f"{name} runs at {meta['sample_rate']:g} Hz, not {sample_rate:g} Hz; resample the "
                               f"audio or distil again with --sample-rate {sample_rate:g}")
        if input_source.upper() != meta["input_source"].upper() or output_node.lower() != meta["output_node"].lower():
            raise STNFileError(f"{name} models {meta['input_source']} -> v({meta['output_node']}), not "
                               f"{input_source} -> v({output_node})")
        for key, v in meta.get("fixed", {}).items():
            now = values.get(key)
            if now is not None and abs(now - v) > 1e-9 * max(abs(v), 1e-30):
                raise STNFileError(f"{name} was distilled with {key}={v:g} held fixed, not {now:g}; distil again "
                                   f"with --knobs {key} to vary it")
