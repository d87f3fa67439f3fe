"""Shared test configuration.

``@pytest.mark.requires_ngspice`` (or ``pytestmark = pytest.mark.requires_ngspice``) marks a test
that runs ngspice.  Without ngspice it is skipped on a developer machine but *fails* under CI
(``CI=true``), so a missing install step can never turn the reference comparisons green.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def ngspice_missing() -> str | None:
    """Why ngspice cannot be used here (None when both the binary and the shared library are usable)."""
    from circuitsim.spice import ngspice_available

    if shutil.which("ngspice") is None:
        return "the ngspice binary is not on PATH"
    if not ngspice_available():
        return "ngspice cannot be run"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_ngspice: runs ngspice (fails under CI=true when it is missing)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_ngspice") is None:
        return
    why = ngspice_missing()
    if why is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {why}: the reference comparisons must run in CI", pytrace=False)
    pytest.skip(why)
