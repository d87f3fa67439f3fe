"""Mutations of the reference netlists for tests/test_fuzz.py: what a slip of the hand or a
half-edited netlist looks like (elements deleted, duplicated or retyped, nodes moved or
shorted, values zeroed, negated or scaled by 1e±12)."""

from __future__ import annotations

import random
import re
import warnings

import numpy as np
import torch

from circuitsim.errors import CircuitsimError
from circuitsim.netlist import NetlistError, parse_number

_ELEMENT = re.compile(r"^([A-Za-z]\w*)(\s+)(\S+)(\s+)(\S+)(.*)$")
_NUMBER = re.compile(r"(?<![\w.])(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?(meg|[tgkmunpf])?(?![\w.])", re.IGNORECASE)


def _lines(text: str) -> tuple[list[str], list[int]]:
    lines = text.splitlines()
    elements = [i for i, ln in enumerate(lines) if i > 0 and not ln.startswith((".", "*", "+")) and _ELEMENT.match(ln)]
    return lines, elements


def _nodes(lines: list[str], elements: list[int]) -> list[str]:
    out = {"0"}
    for i in elements:
        m = _ELEMENT.match(lines[i])
        assert m is not None
        out.update((m.group(3), m.group(5)))
    return sorted(out)


def mutate(text: str, rng: random.Random, edits: int | None = None) -> str:
    """One to three random structural edits of a netlist's element lines."""
    lines = text.splitlines()
    for _ in range(edits or rng.randint(1, 3)):
        elements = _lines("\n".join(lines))[1]
        if not elements:
            break
        i = rng.choice(elements)
        m = _ELEMENT.match(lines[i])
        if m is None:
            continue
        name, s1, a, s2, b, rest = m.groups()
        nodes = _nodes(lines, elements)
        op = rng.randrange(9)
        if op == 0:  # delete the element
            lines[i] = "* deleted"
        elif op == 1:  # move one terminal to another node, to ground, or to a new node
            node = rng.choice([*nodes, "0", "nx"])
            lines[i] = f"{name}{s1}{node}{s2}{b}{rest}" if rng.random() < 0.5 else f"{name}{s1}{a}{s2}{node}{rest}"
        elif op == 2:  # short it: both terminals on one node
            lines[i] = f"{name}{s1}{a}{s2}{a}{rest}"
        elif op == 3:  # duplicate it (new name) in parallel or in series with a new node
            lines.insert(i + 1, f"{name}X{s1}{a}{s2}{b if rng.random() < 0.5 else 'ny'}{rest}")
        elif op == 4:  # retype a two-terminal element (R <-> C <-> L <-> V <-> I)
            if name[0].upper() in "RCLVI" and not rest.strip().startswith("{"):
                lines[i] = f"{rng.choice('RCLVI')}{name[1:]}Z{s1}{a}{s2}{b}{rest}"
        else:  # change a number: zero, negative, tiny, huge, or slightly off
            nums = list(_NUMBER.finditer(lines[i]))
            if nums:
                n = rng.choice(nums)
                value = parse_number(n.group(0)) or 1.0
                new = rng.choice(["0", f"{-value:g}", f"{value * 1e-12:g}", f"{value * 1e12:g}", "1e-30", "1e30"])
                lines[i] = lines[i][: n.start()] + new + lines[i][n.end() :]
    return "\n".join(lines) + "\n"


def run_mutant(text: str, path: str, method: str = "dk", samples: int = 48) -> tuple[str, str]:
    """('ok' | 'netlist_error' | 'bad_error' | 'nan' | 'crash', detail) for one mutant netlist."""
    from circuitsim.api import METHODS
    from circuitsim.circuit.build import build_circuit
    from circuitsim.netlist import parse_string

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            circuit = build_circuit(parse_string(text, path))
            model = METHODS[method](circuit, 48000.0, circuit.input_source_name("VIN"), "out")
            x = 0.5 * torch.sin(torch.linspace(0.0, 6.0, samples, dtype=torch.float64)).unsqueeze(0)
            with torch.no_grad():
                y = model(x)
    except NetlistError as err:
        msg = str(err)
        if "\n" in msg or not msg:
            return "bad_error", msg
        return "netlist_error", msg
    except CircuitsimError as err:
        return "other_error", f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - the fuzz reports every escape
        return "crash", f"{type(err).__name__}: {err}"
    if not bool(np.isfinite(y.numpy()).all()):
        return "nan", "output is not finite"
    return "ok", ""
