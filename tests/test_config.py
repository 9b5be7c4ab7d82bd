"""Config loading: the shipped examples validate; bad files give one clear, located message."""

from __future__ import annotations

from pathlib import Path

import pytest

from flava_p2p.cli.node import main as node_main
from flava_p2p.config import ConfigError, NodeConfig, load_config

REPO = Path(__file__).resolve().parents[1]


class TestShippedConfigs:
    def test_node_example_validates(self) -> None:
        """configs/node.yaml loads and equals the documented defaults."""
        cfg = load_config(REPO / "configs" / "node.yaml", NodeConfig)
        assert cfg == NodeConfig()

    def test_empty_file_means_defaults(self, tmp_path: Path) -> None:
        """An empty YAML file is a valid config with every default."""
        f = tmp_path / "n.yaml"
        f.write_text("")
        assert load_config(f) == NodeConfig()


class TestBadConfigs:
    def _error(self, tmp_path: Path, text: str) -> str:
        f = tmp_path / "node.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(f)
        return str(info.value)

    def test_wrong_type_names_file_field_and_value(self, tmp_path: Path) -> None:
        """A string where an int belongs: the message has the file, dotted path and bad value."""
        msg = self._error(tmp_path, "gossip:\n  fanout: three\n")
        assert "node.yaml" in msg
        assert "gossip.fanout" in msg
        assert "'three'" in msg
        assert "integer" in msg

    def test_unknown_key_lists_allowed_keys(self, tmp_path: Path) -> None:
        """A typo'd key is rejected and the message lists the keys allowed at that level."""
        msg = self._error(tmp_path, "gossip:\n  fanut: 3\n")
        assert "gossip.fanut: unknown key" in msg
        assert "fanout" in msg and "period_s" in msg

    def test_out_of_range_says_the_bound(self, tmp_path: Path) -> None:
        """A value outside its range names the bound."""
        msg = self._error(tmp_path, "network:\n  mtu: 100\n")
        assert "network.mtu" in msg and "512" in msg

    def test_bad_choice_lists_choices(self, tmp_path: Path) -> None:
        """An invalid enum value lists the allowed values."""
        msg = self._error(tmp_path, "privacy:\n  accountant: gdp\n")
        assert "privacy.accountant" in msg and "'rdp'" in msg and "'prv'" in msg

    def test_all_problems_reported_at_once(self, tmp_path: Path) -> None:
        """Several mistakes are reported together, so the user fixes them in one pass."""
        msg = self._error(tmp_path, "seed: -1\nlogging:\n  level: loud\n")
        assert "2 problems" in msg and "seed" in msg and "logging.level" in msg

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file says so and how to create one."""
        with pytest.raises(ConfigError, match=r"not found.*flava-node init"):
            load_config(tmp_path / "absent.yaml")

    def test_invalid_yaml_gives_line(self, tmp_path: Path) -> None:
        """Broken YAML syntax reports the line."""
        msg = self._error(tmp_path, "gossip:\n  fanout: [1,\n")
        assert "invalid YAML" in msg and "line" in msg

    def test_non_mapping_top_level(self, tmp_path: Path) -> None:
        """A YAML list at top level is refused with a hint."""
        msg = self._error(tmp_path, "- a\n- b\n")
        assert "mapping" in msg

    def test_non_finite_epsilon(self, tmp_path: Path) -> None:
        """An infinite ε is refused with the way to switch DP off instead."""
        msg = self._error(tmp_path, "privacy:\n  target_epsilon: .inf\n")
        assert "enabled: false" in msg


class TestConfigCli:
    def test_check_ok(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`flava-node config check` accepts the shipped example."""
        assert node_main(["config", "check", str(REPO / "configs" / "node.yaml")]) == 0
        assert "OK" in capsys.readouterr().out

    def test_check_bad_exits_2_without_traceback(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad config exits 2 and prints the clear message, not a traceback."""
        f = tmp_path / "bad.yaml"
        f.write_text("gossip:\n  fanout: x\n")
        assert node_main(["--log-format", "json", "config", "check", str(f)]) == 2
        err = capsys.readouterr().err
        assert "gossip.fanout" in err and "Traceback" not in err
