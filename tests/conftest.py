"""Shared pytest setup: the ``slow`` marker gate."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow") or os.environ.get("FLAVA_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with `scripts/test.sh --slow` or FLAVA_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
