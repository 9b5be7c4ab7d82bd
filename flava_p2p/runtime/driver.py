"""The asyncio node driver: UDP socket ↔ CoreLoop(NodeCore) ↔ one timer, training in an executor.

Like aioquic's asyncio adapter: on a datagram, feed the core; then process events, transmit,
and re-arm the single timer (``runtime/core_loop.py``, which tests also run on a manual clock).
Sockets are asyncio's own datagram endpoints. DP-SGD runs in a one-thread executor so the loop
(and the status API) stay responsive. Crash safety: the model and privacy ledger are persisted
by the trainer around every training burst; the seqno reservation is persisted before a
datagram with a new seqno block leaves; view and round are saved every few seconds and on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from flava_p2p.attacks import AttackSpec, flip_labels
from flava_p2p.attacks.network import NetworkAttacker
from flava_p2p.config import NodeConfig
from flava_p2p.errors import FlavaError
from flava_p2p.identity import (
    Identity,
    load_keystore,
    make_multiaddr,
    parse_libp2p_multiaddr,
    parse_multiaddr,
)
from flava_p2p.learning.trainer import LocalTrainer, genesis_model
from flava_p2p.node.assembly import (
    ModelIdentity,
    assemble_core,
    attach_attack,
    core_spec,
)
from flava_p2p.protocol.carriers import carriers_of, libp2p_endpoint, libp2p_peer
from flava_p2p.protocol.node import (
    Addr,
    Event,
    Graylisted,
    ModelMerged,
    NodeCore,
    PeerJoined,
    PeerLeft,
    SchemaMismatch,
    TrainRequest,
    Vec,
)
from flava_p2p.runtime.core_loop import AsyncioScheduler, CoreLoop
from flava_p2p.runtime.kernel_filter import MAX_FILTERED, set_drop_filter
from flava_p2p.runtime.logs import bind_node
from flava_p2p.runtime.multicast import enable_multicast_send, open_beacon_socket, parse_group
from flava_p2p.runtime.state import (
    SEQ_BLOCK,
    STATE_FILE,
    NodeState,
    capture,
    load_or_mint_work,
    resume_record,
)
from flava_p2p.speech.clip_folder import ClipFolder, FolderChange
from flava_p2p.speech.dataset import FeatureSet, load_features, scan_corpus
from flava_p2p.task import TaskCard, apply_task, load_task
from flava_p2p.wire.messages import DpInfo

if TYPE_CHECKING:
    from flava_p2p.runtime.libp2p_transport import Libp2pTransport

log = structlog.get_logger("flava.node")

STATE_SAVE_PERIOD_S = 5.0
EVAL_EVERY_ROUNDS = 2


def resolve(home: Path, path: Path) -> Path:
    """Config paths are relative to the node home."""
    return path if path.is_absolute() else home / path


class NodeRunner:
    """One running node (``flava-node run``)."""

    def __init__(self, home: Path, cfg: NodeConfig, attack: AttackSpec | None = None) -> None:
        self.home = home
        self.cfg = cfg
        self.attack = attack
        self.started_at = time.time()
        self.counters: dict[str, int] = {}
        self.accuracy: dict[str, Any] = {}
        self.last_train: dict[str, Any] = {}
        self._training = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flava-train")
        self._stop = asyncio.Event()
        self.net_attacker = (
            NetworkAttacker(attack, np.random.default_rng())
            if attack is not None and attack.kind == "network"
            else None
        )
        self._kernel_filtered: list[tuple[str, int]] = []
        self.task: TaskCard | None = None
        self.own_work = b""
        """Our identity-work nonce (``network.identity_work_bits``)."""
        self.carriers = carriers_of(cfg.network.transport)
        self.transport: asyncio.DatagramTransport | None = None
        self.sock: Any = None
        self.beacon_transport: asyncio.DatagramTransport | None = None
        self.addresses: list[str] = []
        self.libp2p: Libp2pTransport | None = None
        self.libp2p_links: dict[bytes, bool] = {}
        """Connected libp2p peers → whether the connection is relayed (refreshed every save)."""
        self._libp2p_boot: dict[bytes, list[str]] = {}

    # ------------------------------------------------------------------ setup
    def _load_identity(self) -> Identity:
        passphrase = None
        if self.cfg.identity.passphrase_env:
            passphrase = os.environ.get(self.cfg.identity.passphrase_env)
        return load_keystore(resolve(self.home, self.cfg.identity.keystore), passphrase)

    def _load_data(self) -> tuple[FeatureSet, FeatureSet | None]:
        """First scan of the node's clips (``data.root`` and the inbox) and its eval set."""
        cfg = self.cfg
        root = resolve(self.home, cfg.data.root)
        cache = resolve(self.home, cfg.data.cache_dir or Path("cache"))
        threads = cfg.training.threads
        if self.task is None:
            scan_corpus(root)  # without a card the folders name the labels: they must exist
        inbox = resolve(self.home, cfg.data.inbox)
        inbox.mkdir(parents=True, exist_ok=True)
        labels = self.task.labels if self.task else None
        self.clips = ClipFolder([root, inbox], labels, cfg.features, cache, threads)
        first = self.clips.scan()
        self._report_folder(first, initial=True)
        fs = self.clips.feature_set(None)
        evaluation = fs.split("validation") if len(fs.split("validation")) else None
        if cfg.data.eval_root is not None:
            evaluation = self._other_folder(cfg.data.eval_root, "data.eval_root", cache)
        self.reference_set: FeatureSet | None = None
        if cfg.data.reference is not None:
            self.reference_set = self._other_folder(cfg.data.reference, "data.reference", cache)
        return self._train_view(), evaluation

    def _other_folder(self, folder: Path, key: str, cache: Path) -> FeatureSet:
        """Features of a clip folder besides the node's own (held-out or reference clips),
        which must carry the training labels."""
        labels = self.task.labels if self.task else None
        scan = scan_corpus(resolve(self.home, folder), labels=labels)
        fs = load_features(scan, self.cfg.features, cache_dir=cache,
                           threads=self.cfg.training.threads)  # fmt: skip
        if fs.label_names != self.clips.labels:
            raise FlavaError(
                f"{key} labels {fs.label_names} differ from the training labels "
                f"{self.clips.labels}; both folders need the same label sub-folders (or "
                f"use a task card, which fixes the labels)."
            )
        return fs

    def _train_view(self) -> FeatureSet:
        train = self.clips.feature_set("train")
        if self.attack is not None and self.attack.name == "label_flip":
            train.labels = torch_tensor(flip_labels(train.labels.numpy(), len(train.label_names)))
        return train

    def _report_folder(self, change: FolderChange, initial: bool = False) -> None:
        """Log what a scan found: new/removed clips, unusable files, non-label folders."""
        for path, reason in list(change.rejected.items())[:5]:
            log.warning("clip rejected", file=path, reason=reason)
        self.counters["clips_rejected"] = self.counters.get("clips_rejected", 0) + len(
            change.rejected
        )
        if initial and self.clips.unknown_labels:
            log.warning(
                "folders that are not labels of the task are ignored",
                folders=self.clips.unknown_labels,
                labels=self.clips.labels,
            )
        if change.changed and not initial:
            log.info(
                "data changed",
                added=change.added,
                removed=change.removed,
                clips=sum(self.clips.counts().values()),
            )

    async def _watch_loop(self, period: float) -> None:
        """Rescan the data folders; new clips join training without a restart."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            try:
                # On the training thread: a rescan never races a training burst.
                change = await loop.run_in_executor(self._executor, self._rescan)
                self._report_folder(change)
            except Exception:  # a bad folder must not stop the node; it is logged
                log.exception("rescanning the data folder failed")
                self._count("rescan_failed")

    def _rescan(self) -> FolderChange:
        change = self.clips.scan()
        if change.changed:
            self.train_set = self._train_view()
            new = self.trainer.update_data(self.train_set)
            self.counters["clips_new_budget"] = self.counters.get("clips_new_budget", 0) + new
        return change

    async def run(self) -> None:
        """Start everything, serve until SIGINT/SIGTERM or :meth:`stop`, then shut down cleanly."""
        import torch

        torch.set_num_threads(self.cfg.training.threads)
        cfg = self.cfg
        self.identity = self._load_identity()
        bind_node(self.identity.peer_id_str)
        self.task = load_task(resolve(self.home, cfg.task)) if cfg.task is not None else None
        if self.task is not None:
            cfg = self.cfg = apply_task(cfg, self.task)
        self.train_set, self.eval_set = self._load_data()
        self.trainer = self._make_trainer()
        _, _, n_feat, n_frames = self.train_set.features.shape
        genesis = genesis_model(
            cfg.model, len(self.train_set.label_names), n_feat, n_frames, cfg.network.genesis_seed
        )
        genesis_vec = np.concatenate([p.detach().numpy().reshape(-1) for p in genesis.parameters()])

        # Before any socket opens: minting blocks (in a thread, so signals still work).
        self.own_work = await asyncio.to_thread(
            load_or_mint_work,
            self.home,
            self.identity.peer_id,
            cfg.network.network_id,
            cfg.network.identity_work_bits,
        )
        state_path = self.home / STATE_FILE
        self.state = NodeState.load(state_path)
        first_seq = self.state.seq_reserved
        self.state.seq_reserved = first_seq + SEQ_BLOCK
        self.state.save(state_path)

        loop = asyncio.get_running_loop()
        await self._open_sockets(loop)
        self.core = self._build_core(genesis_vec, first_seq)
        self.core_loop = CoreLoop(
            self.core,
            AsyncioScheduler(loop),
            self._send,
            self._on_event,
            self._persist_reservation,
        )

        from flava_p2p.runtime.api import start_api

        self.api_runner, api_url = await start_api(self, cfg.api.host, cfg.api.port)
        (self.home / "status.json").write_text(
            json.dumps(
                {
                    "api": api_url,
                    "pid": os.getpid(),
                    "peer_id": self.identity.peer_id_str,
                    "addresses": self.addresses,
                }
            )
        )
        log.info(
            "node started",
            peer_id=self.identity.peer_id_str,
            addresses=self.addresses,
            api=api_url,
            epsilon=self.epsilon(),
            first_seq=first_seq,
            attack=self.attack.name if self.attack else None,
        )

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        self.core_loop.start()
        tasks = [asyncio.create_task(self._save_loop())]
        if self.net_attacker is not None:
            tasks.append(asyncio.create_task(self._network_attack_loop()))
        if cfg.data.watch_period_s is not None:
            tasks.append(asyncio.create_task(self._watch_loop(cfg.data.watch_period_s)))
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._shutdown()

    async def _open_sockets(self, loop: asyncio.AbstractEventLoop) -> None:
        """The gossip socket (and the beacon socket when multicast discovery is on), and the
        libp2p host when ``network.transport`` includes it."""
        net = self.cfg.network
        if "udp" in self.carriers:
            host, port, _ = parse_multiaddr(net.listen)
            self.transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self._on_datagram, self._count), local_addr=(host, port)
            )
            self.sock = self.transport.get_extra_info("socket")
            bound_port = int(self.transport.get_extra_info("sockname")[1])
            self.addresses = [make_multiaddr(host, bound_port, self.identity.peer_id)]
            if net.multicast_beacons:
                group = parse_group(net.beacon_group)
                enable_multicast_send(self.sock, net.beacon_interface)
                sock = open_beacon_socket(group, net.beacon_interface)
                self.beacon_transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self._on_datagram, self._count), sock=sock
                )
        if "libp2p" in self.carriers:
            await self._open_libp2p(loop)

    async def _open_libp2p(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the libp2p host in its trio thread; advertise its (and relayed) addresses."""
        from flava_p2p.runtime.libp2p_transport import Libp2pTransport, RelayService
        from flava_p2p.runtime.trio_bridge import TrioThread

        net = self.cfg.network
        bridge = TrioThread(on_error=lambda exc: log.error("libp2p task failed", error=repr(exc)))
        bridge.start(loop)
        relay = None
        if net.relay == "serve":
            relay = RelayService(
                max_reservations=net.relay_max_reservations,
                max_circuits=net.relay_max_circuits,
                max_circuit_seconds=net.relay_max_circuit_s,
                max_circuit_bytes=net.relay_max_circuit_mb * 1024 * 1024,
            )
        self.libp2p = Libp2pTransport(
            self.identity,
            bridge,
            self._on_frame,
            listen=net.libp2p_listen,
            network_key=self._network_key(),
            relay=relay,
            relays=net.relays,
        )
        self.addresses += await self.libp2p.start()
        for text in net.bootstrap:  # the dialable addresses of libp2p bootstrap peers
            with contextlib.suppress(FlavaError):
                self._libp2p_boot.setdefault(parse_libp2p_multiaddr(text), []).append(text)
        if net.relays and not any("/p2p-circuit/" in a for a in self.addresses):
            log.warning("no relay reservation: peers cannot dial this node", relays=net.relays)

    def _network_key(self) -> bytes | None:
        path = self.cfg.network.network_key_file
        return read_network_key(resolve(self.home, path)) if path is not None else None

    def _make_trainer(self) -> LocalTrainer:
        cfg = self.cfg
        return LocalTrainer(
            self.train_set,
            model_cfg=cfg.model,
            feature_cfg=cfg.features,
            training=cfg.training,
            privacy=cfg.privacy,
            seed=cfg.seed,
            genesis_seed=cfg.network.genesis_seed,
            checkpoint_path=self.home / "model.ckpt",
            task=self.task.ident if self.task else None,
            allow_empty=True,
        )

    def _build_core(self, genesis_vec: Vec, first_seq: int) -> NodeCore:
        """The sans-I/O core with this node's wire, keys, resumed model, round and view."""
        cfg = self.cfg
        network_key = self._network_key()
        spec = core_spec(
            cfg,
            self.identity,
            ModelIdentity(
                genesis_vec, bytes.fromhex(self.trainer.schema), self.trainer.schema_card
            ),
            advertised=self.addresses,
            network_key=network_key,
            rng_seed=f"{cfg.seed}:{self.identity.peer_id_str}",
            own_work=self.own_work,
        )
        resume = resume_record(self.state, self.trainer.get_flat())
        # Message noise from OS entropy: never a seed a peer could learn.
        core = assemble_core(
            spec, first_seq=first_seq, noise_rng=np.random.default_rng(), resume=resume
        )
        if self.reference_set is not None and len(self.reference_set):
            from flava_p2p.learning.reference import reference_anchor_fn, reference_loss_fn

            n_labels, g = len(self.reference_set.label_names), self.cfg.gossip
            core.reference_loss = reference_loss_fn(
                self.trainer.model_cfg, n_labels, self.reference_set
            )
            if g.anchor_steps > 0:
                core.reference_anchor = reference_anchor_fn(
                    self.trainer.model_cfg,
                    n_labels,
                    self.reference_set,
                    g.anchor_steps,
                    g.anchor_lr,
                )
        attach_attack(core, self.attack, np.random.default_rng())
        return core

    def stop(self) -> None:
        """Ask the node to shut down (same as SIGTERM)."""
        self._stop.set()

    async def _shutdown(self) -> None:
        log.info("shutting down; saving checkpoint", round=self.core.round)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.trainer.save)
        self._save_state()
        self.core_loop.stop()
        if self.transport is not None:
            self.transport.close()
        if self.beacon_transport is not None:
            self.beacon_transport.close()
        if self.libp2p is not None:
            await self.libp2p.stop()
            self.libp2p.bridge.stop()
        await self.api_runner.cleanup()
        self._executor.shutdown(wait=True)
        with contextlib.suppress(OSError):
            (self.home / "status.json").unlink()

    # ------------------------------------------------------------------ I/O
    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        """A datagram from the unicast or the beacon socket."""
        self.core_loop.datagram_received(data, addr)

    def _on_frame(self, data: bytes, peer: bytes) -> None:
        """An envelope that came over libp2p (its sender already authenticated by Noise)."""
        self._count("libp2p_frames_in")
        self.core_loop.datagram_received(data, libp2p_endpoint(peer))

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(STATE_SAVE_PERIOD_S)
            self._save_state()
            self._refresh_kernel_filter()  # lets expired address graylistings in again
            if self.libp2p is not None:
                with contextlib.suppress(Exception):
                    links = await self.libp2p.links()
                    self.libp2p_links = {li.peer_id: li.relayed for li in links}

    def _refresh_kernel_filter(self) -> None:
        """Mirror the graylisted addresses into the socket's kernel drop filter (Linux), and
        the graylisted PeerIDs into the libp2p host (the kernel filter sees only UDP)."""
        if self.libp2p is not None:
            self.libp2p.block(set(self.core.scores.graylisted(time.time())))
        if self.sock is None:
            return
        addrs = []
        for entry in self.core.scores.graylisted_addrs(time.time()):
            host, _, port = entry.removeprefix("addr:").rpartition(":")
            addrs.append((host, int(port)))
        if addrs == self._kernel_filtered:
            return
        if set_drop_filter(self.sock, addrs):
            self._kernel_filtered = addrs
            self.counters["kernel_filtered_addresses"] = min(len(addrs), MAX_FILTERED)
        # Beacons arrive from the sender's unicast address, so the same list applies to the
        # beacon socket: a graylisted flooder cannot come back in through multicast.
        beacon = self.beacon_transport.get_extra_info("socket") if self.beacon_transport else None
        if beacon is not None and set_drop_filter(beacon, addrs):
            self.counters["kernel_filtered_beacon_addresses"] = min(len(addrs), MAX_FILTERED)

    def _save_state(self) -> None:
        capture(self.state, self.core)
        self.state.save(self.home / STATE_FILE)

    def _on_event(self, ev: Event) -> None:
        """Carry out one core event (called by the CoreLoop, on the event loop)."""
        if isinstance(ev, ModelMerged):
            # The merged model and what the screens remember, on disk before anything else
            # happens: after kill -9 the node screens the next round exactly as it would have.
            self._save_state()
        elif isinstance(ev, TrainRequest):
            if self._training:
                self._count("train_skipped_busy")
            else:
                self._training = True
                asyncio.get_running_loop().create_task(self._train(ev.round))
        elif isinstance(ev, PeerJoined):
            log.info("peer joined", peer=_short(ev.peer), view=len(self.core.view))
        elif isinstance(ev, PeerLeft):
            log.info("peer left", peer=_short(ev.peer), reason=ev.reason)
        elif isinstance(ev, SchemaMismatch):
            log.error(
                "peer trains a different model; refused (both sides must use the same "
                "encoder, front end, head and labels)",
                peer=_short(ev.peer),
                differences=list(ev.differences),
            )
        elif isinstance(ev, Graylisted):
            log.warning("graylisted", who=ev.who)
            self._refresh_kernel_filter()

    def _persist_reservation(self) -> None:
        """Before datagrams leave: persist a new seqno block / message-noise release count, so
        that after a crash no seqno is reused and no noised release goes unaccounted."""
        mn = self.core.message_noise
        self.state.reserve_before_transmit(
            self.core.wire.next_seq, mn.releases if mn is not None else None, self.home / STATE_FILE
        )

    def _send(self, datagram: bytes, addr: Addr) -> None:
        self._transmit(datagram, addr)
        if self.net_attacker is not None:
            self.net_attacker.remember(addr, datagram)

    def _transmit(self, datagram: bytes, addr: Addr) -> None:
        peer = libp2p_peer(addr)
        if peer is not None:
            if self.libp2p is None:
                self._count("send_no_libp2p")
                return
            self.libp2p.send(datagram, peer, self._libp2p_addrs(peer))
            return
        if self.transport is None:
            self._count("send_no_udp")
            return
        try:
            self.transport.sendto(datagram, addr)
        except OSError:
            self._count("send_error")

    def _libp2p_addrs(self, peer: bytes) -> list[str]:
        """Where to dial ``peer`` over libp2p: what it advertised, else its bootstrap entry."""
        desc = self.core.view.descriptor(peer)
        out = [a for a in desc.addrs if "/tcp/" in a] if desc is not None else []
        return out or self._libp2p_boot.get(peer, [])

    # ------------------------------------------------------------------ training
    async def _train(self, round_: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            base = self.core.model.copy()
            fit = await loop.run_in_executor(
                self._executor, self.trainer.fit, base, self.cfg.training.local_steps
            )
            report = fit.report
            self.last_train = {
                "round": round_,
                "steps": report.steps,
                "loss": report.loss,
                "seconds": round(report.seconds, 3),
                "budget": report.budget,
            }
            led = self.trainer.ledger
            dp = DpInfo(led.epsilon, led.delta) if led else DpInfo(None, None)
            self.core_loop.local_update(fit.weights, fit.samples, dp, base=base)
            if self.eval_set is not None and round_ % EVAL_EVERY_ROUNDS == 0:
                metrics = await loop.run_in_executor(
                    self._executor, self.trainer.evaluate, self.eval_set
                )
                self.accuracy = {**metrics, "round": round_, "n": len(self.eval_set)}
                log.info(
                    "evaluated",
                    round=round_,
                    accuracy=round(metrics["accuracy"], 4),
                    epsilon=self.epsilon(),
                    peers=len(self.core.view),
                )
        except Exception:  # a training failure must not kill networking; it is logged
            log.exception("training failed")
            self._count("train_failed")
        finally:
            self._training = False

    def epsilon(self) -> float | None:
        """Example-level ε spent so far (None without DP)."""
        led = self.trainer.ledger
        return led.epsilon if led else None

    # ------------------------------------------------------------------ attacks
    async def _network_attack_loop(self) -> None:
        """Carry out the node's network attack (``attacks/network.py``) on the real socket."""
        attacker = self.net_attacker
        assert attacker is not None
        while True:
            await asyncio.sleep(attacker.next_delay())
            targets = [a for p in self.core.view.peers() if (a := self.core.address_of(p))]
            for addr, datagram in attacker.fire(targets):
                self._transmit(datagram, addr)
                self._count("attack_datagrams")

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


class _Udp(asyncio.DatagramProtocol):
    """asyncio's datagram protocol → the node: every datagram straight to the CoreLoop."""

    def __init__(self, on_datagram: Any, count: Any) -> None:
        self._on_datagram = on_datagram
        self._count = count

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self._count("socket_error")  # e.g. ICMP port unreachable from a dead peer


def read_network_key(path: Path) -> bytes:
    """A 32-byte network key file (raw bytes or 64 hex characters)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FlavaError(f"{path}: cannot read network key ({exc}).") from None
    text = raw.strip()
    if len(text) == 64:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(text.decode())
    if len(raw) == 32:
        return raw
    raise FlavaError(f"{path}: a network key is 32 raw bytes or 64 hex characters.")


def torch_tensor(a: np.ndarray) -> Any:
    """numpy → torch without importing torch at module import time."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def _short(peer: bytes) -> str:
    from flava_p2p.identity import peer_id_to_str

    return peer_id_to_str(peer)[-8:]
