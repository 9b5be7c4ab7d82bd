"""One log pipeline: structlog events and third-party stdlib records render alike."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from flava_p2p.runtime.logs import bind_node, configure_logging


class TestLogs:
    def test_stdlib_records_render_as_json_with_the_node_context(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A library's logging record and our own event are both JSON with peer_id bound."""
        configure_logging("json", "info")
        try:
            bind_node("12D3KooWexample")
            structlog.get_logger("flava.node").info("round done", round=3)
            logging.getLogger("opacus").warning("secure mode is %s", "off")
            logging.getLogger("aiohttp.access").info("GET /status")  # below WARNING: hidden
            lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x]
        finally:
            structlog.contextvars.clear_contextvars()
            configure_logging("console", "info")
        assert [e["event"] for e in lines] == ["round done", "secure mode is off"]
        assert all(e["peer_id"] == "12D3KooWexample" for e in lines)
        assert lines[0]["round"] == 3 and lines[1]["logger"] == "opacus"
        assert {e["level"] for e in lines} == {"info", "warning"}
