"""A short run of scripts/fuzz_wire.py: random and mutated datagrams through the receive path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_wire.py"


def load_fuzzer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_wire", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("network_key", [False, True])
def test_short_fuzz_run(network_key: bool) -> None:
    """20k datagrams: no exception escapes, no forgery is accepted, legit traffic still flows."""
    result = load_fuzzer().run_fuzz(20_000, seed=3, network_key=network_key)
    assert result["uncaught_exceptions"] == 0, result["exception_examples"]
    assert result["accepted_forgeries"] == 0
    assert result["accepted_legitimate"] > 0
    assert sum(result["rejections_by_reason"].values()) > 15_000
