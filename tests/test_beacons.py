"""LAN discovery by multicast beacons, with real `flava-node` processes and real sockets.

Beacons are confined to this host: the group is joined on 127.0.0.1 and sent with
IP_MULTICAST_IF = 127.0.0.1 and TTL 1, so nothing leaves the loopback interface.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from flava_p2p.config import NetworkConfig
from flava_p2p.errors import FlavaError
from flava_p2p.runtime.multicast import open_beacon_socket


@pytest.mark.slow  # subprocesses / long run: `scripts/test.sh --slow`
def test_nodes_without_bootstrap_find_each_other_by_beacons(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """Three nodes with no bootstrap address discover all others from beacons alone."""
    # Prepare: a random group port so parallel runs on one host do not hear each other.
    from flava_p2p.testing import cluster as lc

    group = f"239.255.70.71:{random.Random().randint(20000, 60000)}"
    beacons = {
        "multicast_beacons": True,
        "beacon_group": group,
        "beacon_interface": "127.0.0.1",
        "beacon_period_s": 0.5,
    }
    homes = lc.prepare(tiny_corpus, tmp_path, 3, overrides={"network": beacons})
    cluster = lc.Cluster(homes)
    try:
        # Execute
        for i in range(3):
            cluster.start(i, bootstrap=[])
        ids = [cluster.wait_ready(i)["peer_id"] for i in range(3)]
        deadline = time.time() + 60
        views: list[set[str]] = []
        while time.time() < deadline:
            views = [{p["peer_id"] for p in cluster.status(i)["peers"]} for i in range(3)]
            if all(views[i] == set(ids) - {ids[i]} for i in range(3)):
                break
            time.sleep(0.5)
        # Assert
        assert all(views[i] == set(ids) - {ids[i]} for i in range(3)), (views, cluster.tail(0))
        counters = cluster.status(0)["counters"]
        assert counters.get("beacons_sent", 0) > 0
    finally:
        cluster.stop_all()


class TestBeaconConfig:
    def test_group_must_be_multicast(self) -> None:
        """A unicast beacon group is refused with the expected form in the message."""
        with pytest.raises(ValueError, match="multicast"):
            NetworkConfig(beacon_group="192.0.2.1:7947")

    def test_group_needs_port(self) -> None:
        """A group without a port is refused."""
        with pytest.raises(ValueError, match="group:port"):
            NetworkConfig(beacon_group="239.255.70.71")

    def test_bad_interface_is_a_clear_error(self) -> None:
        """Joining on an address this host does not have fails with what to change."""
        with pytest.raises(FlavaError, match="beacon_interface"):
            open_beacon_socket(("239.255.70.71", 7947), "192.0.2.254")
