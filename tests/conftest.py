"""Marks every test with its layer, the folder it lives in (markers registered in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

LAYERS = ("unit", "chart", "upstream", "chart_live", "fast_store", "stack")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = item.path.resolve().relative_to(TESTS) if item.path.resolve().is_relative_to(TESTS) else None
        if relative is not None and relative.parts[0] in LAYERS:
            item.add_marker(relative.parts[0])
