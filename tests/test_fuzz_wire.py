"""A short run of scripts/fuzz_wire.py: random and mutated datagrams through the receive path."""

from __future__ import annotations

import pytest
from conftest import load_script


@pytest.mark.parametrize("network_key", [False, True])
def test_short_fuzz_run(network_key: bool) -> None:
    """20k datagrams: no exception escapes, no forgery is accepted, legit traffic still flows."""
    result = load_script("fuzz_wire").run_fuzz(20_000, seed=3, network_key=network_key)
    assert result["uncaught_exceptions"] == 0, result["exception_examples"]
    assert result["accepted_forgeries"] == 0
    assert result["accepted_legitimate"] > 0
    assert sum(result["rejections_by_reason"].values()) > 15_000
