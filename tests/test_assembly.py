"""One node assembly: a simulated node and a real node built from the same settings match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flava_p2p.config import NodeConfig, load_config
from flava_p2p.identity import make_multiaddr
from flava_p2p.node.assembly import ModelIdentity, assemble_core, core_spec, snapshot
from flava_p2p.protocol.node import NodeCore
from flava_p2p.runtime.driver import read_network_key
from flava_p2p.sim.runner import Simulation
from flava_p2p.sim.scenario import Scenario


def fingerprint(core: NodeCore) -> dict[str, Any]:
    """Everything about an assembled core that its settings decide."""
    mn = core.message_noise
    return {
        "peer_id": core.identity.peer_id,
        "gossip": core.cfg.model_dump(),
        "network_id": core.wire.network_id,
        "mtu": core.wire.mtu,
        "network_key": core.wire.network_key,
        "message_noise": None if mn is None else (mn.clip, mn.noise_multiplier, mn.delta),
        "beacon": core.beacon,
        "bootstrap": core.bootstrap,
        "advertised": core.advertised,
        "schema": core.schema,
        "genesis": core.genesis_hash,
        "schema_card": core.schema_card,
        "round": core.round,
    }


class TestAssembly:
    def test_simulated_and_real_node_assemble_identically(self, tmp_path: Path) -> None:
        """Message noise, beacons, the network key, MTU, bootstrap, gossip, model identity:
        node 1 of a simulation and a real node configured the same way get equal cores."""
        sc = Scenario.model_validate(
            {
                "nodes": 3,
                "rounds": 2,
                "topology": {"kind": "discovered"},
                "learner": {"kind": "none"},
                "gossip": {"period_s": 4.0, "fanout": 3, "aggregation": "clipped"},
                "privacy": {"epsilon": 3, "message_noise_multiplier": 1.3, "message_clip": 2.5},
                "node": {
                    "mtu": 1000,
                    "network_key": True,
                    "multicast_beacons": True,
                    "beacon_period_s": 2.0,
                },
            }
        )
        sim = Simulation(sc, seed=4)
        simulated = sim.net.nodes[1]

        # The real node: the same settings written as an operator's node.yaml.
        assert sim.network_key is not None
        (tmp_path / "net.key").write_bytes(sim.network_key)
        boot_host, boot_port = sim.net.address(0)
        boot = make_multiaddr(boot_host, boot_port, sim.identities[0].peer_id)
        (tmp_path / "node.yaml").write_text(
            "network:\n"
            "  network_id: flava-sim\n"
            "  mtu: 1000\n"
            f"  bootstrap: ['{boot}']\n"
            "  network_key_file: net.key\n"
            "  multicast_beacons: true\n"
            "  beacon_period_s: 2.0\n"
            "gossip: {period_s: 4.0, fanout: 3, aggregation: clipped}\n"
            "privacy: {epsilon: 3, message_noise_multiplier: 1.3, message_clip: 2.5}\n"
        )
        cfg = load_config(tmp_path / "node.yaml", NodeConfig)
        model = ModelIdentity(sim.learners.genesis, sim.learners.schema, {})
        real = assemble_core(
            core_spec(
                cfg,
                sim.identities[1],
                model,
                advertised=[sim._address(1)],
                network_key=read_network_key(tmp_path / "net.key"),
                rng_seed="real",
            ),
            first_seq=0,
            noise_rng=np.random.default_rng(),
        )
        assert fingerprint(real) == fingerprint(simulated)
        assert real.message_noise is not None and real.beacon is not None
        assert real.wire.network_key is not None

    def test_restart_restores_through_the_same_path(self) -> None:
        """A churned simulated node comes back with the model, round, view and message-noise
        releases it had (the Resume record a real node restores from its checkpoint)."""
        sc = Scenario.model_validate(
            {
                "nodes": 4,
                "rounds": 6,
                "learner": {"kind": "synthetic"},
                "privacy": {"epsilon": None, "message_noise_multiplier": 2.0},
            }
        )
        sim = Simulation(sc, seed=1)
        sim.net.start()
        sim.net.run_until(30.0)
        before = snapshot(sim.net.nodes[2])
        assert before.message_releases > 0 and before.round > 0
        sim._set_up(2, False)
        sim._set_up(2, True)
        after = snapshot(sim.net.nodes[2])
        np.testing.assert_array_equal(after.model, before.model)
        assert (after.round, after.message_releases) == (before.round, before.message_releases)
        assert {d.peer_id for d in after.view} == {d.peer_id for d in before.view}
        assert sim.net.nodes[2].wire.next_seq >= 1

    def test_simulated_beacons_let_nodes_find_each_other(self) -> None:
        """With multicast beacons and no bootstrap at all, simulated nodes discover everyone
        (the virtual network delivers a group datagram to every node, like a LAN)."""
        sc = Scenario.model_validate(
            {
                "nodes": 5,
                "rounds": 3,
                "topology": {"kind": "discovered"},
                "learner": {"kind": "none"},
                "node": {"multicast_beacons": True, "beacon_period_s": 1.0},
            }
        )
        sim = Simulation(sc, seed=2)
        for core in sim.net.nodes:
            core.bootstrap = []
        sim.net.start()
        sim.net.run_until(10.0)
        assert all(len(core.view) == 4 for core in sim.net.nodes)
        assert all(core.counters.get("beacons_sent", 0) >= 5 for core in sim.net.nodes)
