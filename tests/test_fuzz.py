"""Seeded mutation fuzz of the reference netlists (docs/netlists.md, "Degenerate circuits").

Each mutant (tests/fuzz_mutations.py: elements deleted, duplicated, retyped or shorted, nodes
moved, values zeroed, negated or scaled by 1e±12) is parsed, built and run for a few samples
through the MNA formulation (the checks live in the system layer that every formulation
assembles through; MNA needs no kernel compile per topology, so 150 mutants take about a
minute).  The mutants that used to crash DK (``torch.linalg.solve: ... singular``) are replayed
through DK below.  A mutant must either give a finite output or stop with one of the
project's one-line errors: a NetlistError naming the file and line or the elements involved,
or (for a circuit that is valid but has no solution the solver can find, such as a negative
capacitance that makes it unstable) a NewtonError naming the sample.  Never a traceback of
another type (``torch.linalg.solve: ... singular``, ``SVD did not converge``), never NaN.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fuzz_mutations import mutate, run_mutant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NETLISTS = sorted((Path(__file__).parent.parent / "netlists").glob("*.cir"))
TEXTS = {p.name: p.read_text() for p in NETLISTS}
SEEN: dict[str, int] = {}


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(TEXTS)), seed=st.integers(0, 2**32 - 1))
def test_mutants_run_or_stop_with_a_one_line_error(name: str, seed: int) -> None:
    text = mutate(TEXTS[name], random.Random(seed))
    outcome, detail = run_mutant(text, f"{name}.mutant", method="mna", samples=24)
    SEEN[outcome] = SEEN.get(outcome, 0) + 1
    assert outcome in ("ok", "netlist_error", "other_error"), (outcome, detail, text)
    if outcome == "other_error":
        assert detail.startswith("NewtonError: ") and "\n" not in detail, detail


def test_the_fuzz_exercised_both_outcomes() -> None:
    """Guard against a mutator that only breaks the parser (or never breaks anything)."""
    if not SEEN:  # run on its own: replay a few mutants
        for seed in range(30):
            name = sorted(TEXTS)[seed % len(TEXTS)]
            outcome, _ = run_mutant(mutate(TEXTS[name], random.Random(seed)), "m.cir", method="mna", samples=24)
            SEEN[outcome] = SEEN.get(outcome, 0) + 1
    assert SEEN.get("ok", 0) > 0 and SEEN.get("netlist_error", 0) > 0, SEEN


DIODE_CLIPPER = TEXTS["diode_clipper.cir"]
# (edit of the diode clipper, what the one-line error must say): DK used to end these in a traceback
DK_CASES = [
    # a node joined only through a junction: M = G + 2/T Cm singular ("torch.linalg.solve: ... singular")
    (("D2 0 out D1N914", "D2 0e-12 out D1N914"), "M = G + 2/T Cm is singular"),
    (("D1 out 0 D1N914", "D1 out nx D1N914"), "elements D1"),
    # an infinite or NaN stamp ("SVD did not converge" in the state basis, NaN everywhere)
    (("C1 out 0 10n", "C1 out 0 {1/0}"), "C1:"),
    (("C1 out 0 10n", "C1 out 0 {0/0}"), "C1: the value nan"),
]


@pytest.mark.parametrize("edit, message", DK_CASES, ids=[m for _, m in DK_CASES])
def test_dk_degenerate_mutants_are_netlist_errors(edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in DIODE_CLIPPER
    outcome, detail = run_mutant(DIODE_CLIPPER.replace(old, new), "clipper.cir", method="dk")
    assert outcome == "netlist_error" and message in detail, (outcome, detail)


# (reference netlist, seed of tests/fuzz_mutations.mutate): MNA mutants that ended in a traceback.  1464 retypes the
# emitter resistor of bjt_common_emitter.cir into a -22 V source; plain Newton's first step puts the junctions at
# -1e289 V, where the compiled device code raised ZeroDivisionError (numba's Python error model) instead of giving
# the inf/NaN that makes Newton fall back to its junction-limited restart
MNA_REPLAYS = [("bjt_common_emitter.cir", 1464)]


@pytest.mark.parametrize("name, seed", MNA_REPLAYS, ids=[f"{n}-{s}" for n, s in MNA_REPLAYS])
def test_mna_mutant_replays(name: str, seed: int) -> None:
    outcome, detail = run_mutant(mutate(TEXTS[name], random.Random(seed)), f"{name}.mutant", method="mna", samples=24)
    assert outcome == "ok" or (outcome == "other_error" and detail.startswith("NewtonError: ")), (outcome, detail)
