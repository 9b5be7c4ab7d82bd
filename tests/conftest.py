"""Shared pytest setup: the ``slow`` marker gate."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Keep the tests' feature cache out of the user's (subprocesses inherit the variable)."""
    if "FLAVA_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["FLAVA_CACHE_DIR"] = tempfile.mkdtemp(prefix="flava-test-cache-")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow") or os.environ.get("FLAVA_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with `scripts/test.sh --slow` or FLAVA_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real espeak-ng corpus: 6 speakers × 3 words (+unknown, silence) × 2 takes."""
    from flava_p2p.speech.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(
        out,
        n_speakers=6,
        takes=2,
        words=["yes", "no", "stop"],
        seed=7,
        holdout_fraction=0.17,
        workers=2,
    )
    return out


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (registered, so its dataclasses work)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"flava_scripts_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
