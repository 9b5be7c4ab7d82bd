"""Task cards, label subsets, the watched clip folder and per-clip privacy accounting."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from flava_p2p.config import (
    ConfigError,
    FeatureConfig,
    GossipConfig,
    PrivacyConfig,
    TrainingConfig,
)
from flava_p2p.errors import FlavaError
from flava_p2p.identity import Identity
from flava_p2p.learning.checkpoint import load_checkpoint
from flava_p2p.learning.ledger import LedgerError, PrivacyLedger
from flava_p2p.learning.trainer import LocalTrainer
from flava_p2p.protocol.node import NodeCore, SchemaMismatch
from flava_p2p.sim.virtual_network import LinkModel, VirtualNetwork
from flava_p2p.speech.clip_folder import ClipFolder
from flava_p2p.speech.dataset import FeatureSet, load_features, scan_corpus
from flava_p2p.task import TaskCard, load_task
from flava_p2p.wire.messages import DpInfo

REPO = Path(__file__).resolve().parents[1]
CARDS = sorted((REPO / "configs" / "tasks").glob("*.yaml"))


# ----------------------------------------------------------------------------- task cards
class TestTaskCard:
    def test_shipped_cards_load(self) -> None:
        """Every card in configs/tasks validates; kinds cover keywords and emotion."""
        cards = [load_task(p) for p in CARDS]
        assert {c.kind for c in cards} >= {"keyword_spotting", "speech_emotion"}
        assert len({c.digest for c in cards}) == len(cards)

    def test_digest_ignores_comments_and_key_order(self, tmp_path: Path) -> None:
        a = tmp_path / "a.yaml"
        b = tmp_path / "b.yaml"
        a.write_text("name: t\nlabels: [x, y]\n# a comment\nprivacy: {target_epsilon: 4}\n")
        b.write_text("privacy:\n  target_epsilon: 4.0\nlabels: [x, y]\nname: t\n")
        assert load_task(a).digest == load_task(b).digest
        c = tmp_path / "c.yaml"
        c.write_text("name: t\nlabels: [y, x]\nprivacy: {target_epsilon: 4}\n")
        assert load_task(c).digest != load_task(a).digest  # label order is the model's

    @pytest.mark.parametrize(
        ("body", "needle"),
        [
            ("name: t\nlabels: [a, a]\n", "repeated"),
            ("name: t\nlabels: [a, b]\nlables: [c]\n", "lables"),
            ("name: t\nlabels: [yes, no]\n", "valid string"),  # YAML booleans
            ("name: t\nlabels: [a, b]\nsample_rate: 8000\n", "16000"),
            ("name: t\nlabels: [a, 'x/y']\n", "folder names"),
            ("- not a mapping\n", "mapping"),
        ],
    )
    def test_bad_cards_are_clear(self, tmp_path: Path, body: str, needle: str) -> None:
        p = tmp_path / "card.yaml"
        p.write_text(body)
        with pytest.raises(ConfigError, match=needle):
            load_task(p)

    def test_missing_card_is_clear(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read the task card"):
            load_task(tmp_path / "nope.yaml")


# ----------------------------------------------------------------- labels from the card
def _card(labels: list[str], name: str = "t", eps: float = 8.0, planned: int = 2000) -> TaskCard:
    return TaskCard.model_validate(
        {
            "name": name,
            "labels": labels,
            "privacy": {"target_epsilon": eps, "planned_steps": planned},
        }
    )


def _trainer(fs: FeatureSet, card: TaskCard, **kw: object) -> LocalTrainer:
    return LocalTrainer(
        fs,
        model_cfg=card.model,
        feature_cfg=card.features,
        training=TrainingConfig(batch_size=8),
        privacy=PrivacyConfig(
            target_epsilon=card.privacy.target_epsilon, planned_steps=card.privacy.planned_steps
        ),
        task=card.ident,
        **kw,  # type: ignore[arg-type]
    )


class TestLabelSubsets:
    def test_unknown_folders_counted_missing_labels_fine(self, tiny_corpus: Path) -> None:
        """With a card's labels, a folder that is no label is counted (not read); labels with
        no folder are just absent; the label order is the card's."""
        found = scan_corpus(tiny_corpus).labels
        keep = [lab for lab in found if lab not in ("_silence_",)]
        card_labels = [*reversed(keep), "never_recorded"]
        scan = scan_corpus(tiny_corpus, labels=card_labels)
        assert scan.labels == card_labels
        assert set(scan.unknown_labels) == {"_silence_"} and scan.unknown_labels["_silence_"] > 0
        assert {u.label for u in scan.utterances} == set(keep)

    def test_nodes_with_different_label_subsets_share_one_schema(self, tiny_corpus: Path) -> None:
        """Two nodes holding disjoint label subsets of one card train the same model (same
        schema hash, same output size); a folder-derived label list would not."""
        labels = scan_corpus(tiny_corpus).labels
        card = _card(labels)
        full = load_features(scan_corpus(tiny_corpus, labels=labels), FeatureConfig())
        half = len(labels) // 2
        idx_a = [i for i, y in enumerate(full.labels.tolist()) if y < half]
        idx_b = [i for i, y in enumerate(full.labels.tolist()) if y >= half]
        ta, tb = _trainer(full.subset(idx_a), card), _trainer(full.subset(idx_b), card)
        assert ta.schema == tb.schema
        assert ta.get_flat().shape == tb.get_flat().shape
        assert ta.schema_card["task"] == card.ident
        other = _trainer(full.subset(idx_a), _card(labels, name="t2"))
        assert other.schema != ta.schema


class TestHandshakeRefusal:
    def test_peer_with_another_card_refused_naming_both(self, tiny_corpus: Path) -> None:
        """Same encoder, head and labels, another card (here only its DP bound differs): the
        HELLO is refused both ways and each side's SchemaMismatch names both cards."""
        labels = scan_corpus(tiny_corpus).labels
        fs = load_features(scan_corpus(tiny_corpus, labels=labels), FeatureConfig())
        mine, theirs = _card(labels, "kws"), _card(labels, "kws", eps=1.0)
        ta, tb = _trainer(fs, mine), _trainer(fs, theirs)
        assert ta.schema != tb.schema

        def still(i: int, m: np.ndarray) -> tuple[np.ndarray, int, DpInfo]:
            return m, 1, DpInfo(None, None)

        net = VirtualNetwork(link=LinkModel(), seed=0, learner=still)
        genesis = ta.get_flat()
        for i, t in enumerate([ta, ta, tb]):
            net.add(
                NodeCore(
                    Identity.from_seed(bytes([7, i]) * 16),
                    network_id="t",
                    genesis=genesis,
                    schema=bytes.fromhex(t.schema),
                    schema_card=t.schema_card,
                    gossip=GossipConfig(period_s=1.0, shuffle_period_s=0.5, ping_period_s=0.3),
                    rng=random.Random(i),
                    bootstrap=[] if i == 0 else [net.address(0)],
                )
            )
        net.start()
        net.run_until(15.0)
        a, b, odd = net.nodes
        assert b.identity.peer_id in a.view
        assert odd.identity.peer_id not in a.view and not odd.view
        found = {(i, e.peer): e for _, i, e in net.events if isinstance(e, SchemaMismatch)}
        told = found[(0, odd.identity.peer_id)].differences
        assert told == (f"task: ours {mine.ident}, theirs {theirs.ident}",)
        assert (2, a.identity.peer_id) in found


# ---------------------------------------------------------------- per-clip accounting
def _digest(i: int) -> bytes:
    return i.to_bytes(4, "big").rjust(32, b"\0")


class TestPerClipLedger:
    @pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 0.05, 300), (0.8, 0.2, 57)])
    def test_matches_google_dp_accounting(self, sigma: float, q: float, steps: int) -> None:
        """Each clip's ε (from its age) agrees with Google's dp-accounting RDP accountant for
        the same Poisson-subsampled Gaussian composition, within 1%."""
        dp_accounting = pytest.importorskip("dp_accounting")
        led = PrivacyLedger("rdp", 1e-5, 1e9, sigma, q, 10_000)
        led.admit([_digest(0)])
        led.charge(steps // 3, [_digest(0)])
        led.admit([_digest(1)])  # arrives later: its loss accrues from here only
        led.charge(steps - steps // 3, [_digest(0), _digest(1)])
        for clip, age in ((_digest(0), steps), (_digest(1), steps - steps // 3)):
            assert led.ages[clip] == age
            acc = dp_accounting.rdp.RdpAccountant()
            event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
            acc.compose(event, age)
            theirs = acc.get_epsilon(1e-5)
            assert led.epsilon_at(age) == pytest.approx(theirs, rel=0.01)
        assert led.epsilon == pytest.approx(led.epsilon_at(steps))

    @pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 0.05, 300), (0.8, 0.2, 57)])
    def test_pld_matches_google_pld_and_beats_rdp(self, sigma: float, q: float, steps: int) -> None:
        """The ``pld`` ledger's per-clip ε agrees with dp-accounting's own PLD accountant (its
        default, finer discretisation) within 1%, is never below it by more than rounding
        (pessimistic: an upper bound), and is smaller than the RDP ledger's."""
        dp_accounting = pytest.importorskip("dp_accounting")
        from dp_accounting.pld import pld_privacy_accountant

        pld = PrivacyLedger("pld", 1e-5, 1e9, sigma, q, 10_000)
        rdp = PrivacyLedger("rdp", 1e-5, 1e9, sigma, q, 10_000)
        for age in (steps // 3, steps):
            acc = pld_privacy_accountant.PLDAccountant()
            event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
            acc.compose(event, age)
            theirs = acc.get_epsilon(1e-5)
            ours = pld.epsilon_at(age)
            assert ours == pytest.approx(theirs, rel=0.01)
            assert ours >= theirs * (1 - 1e-3)
            assert ours < rdp.epsilon_at(age)

    def test_pld_plans_less_noise_for_the_same_promise(self) -> None:
        """Planned with PLD, σ is smaller than RDP's and still spends at most the target."""
        cfg = PrivacyConfig(target_epsilon=8.0, planned_steps=300, accountant="pld")
        pld = PrivacyLedger.plan(cfg, 64 / 720)
        rdp = PrivacyLedger.plan(cfg.model_copy(update={"accountant": "rdp"}), 64 / 720)
        assert pld.noise_multiplier < 0.97 * rdp.noise_multiplier
        assert 7.9 < pld.epsilon_at(300) <= 8.0
        assert pld.max_age == 300

    def test_retirement_and_fresh_budgets(self) -> None:
        """A clip stops ageing at max_age (retired); a new clip starts at 0; a removed and
        re-added clip keeps its age; ε never exceeds the target."""
        cfg = PrivacyConfig(target_epsilon=2.0, planned_steps=50)
        led = PrivacyLedger.plan(cfg, 0.1)
        old = [_digest(i) for i in range(3)]
        led.admit(old)
        assert led.allowed_steps(80, old) == 50
        led.charge(50, old)
        assert led.retired(old) == 3 and led.state_for(old) == "budget_exhausted"
        assert led.allowed_steps(10, old) == 0
        new = [_digest(9)]
        assert led.admit(new + old[:1]) == 1  # old[0] re-added: not new
        both = old + new
        assert led.state_for(both) == "training" and led.allowed_steps(10, both) == 10
        led.charge(10, both)
        assert led.ages[old[0]] == 50 and led.ages[new[0]] == 10
        assert led.epsilon <= 2.0 + 0.02
        assert led.state_for([]) == "waiting_for_data"

    def test_round_trip_and_tamper(self) -> None:
        led = PrivacyLedger("rdp", 1e-5, 8.0, 1.0, 0.1, 100)
        led.admit([_digest(1), _digest(2)])
        led.charge(7, [_digest(1)])
        back = PrivacyLedger.from_dict(led.to_dict())
        assert back.ages == led.ages and back.epsilon == led.epsilon and back.steps == 7
        d = led.to_dict()
        d["cohorts"] = [[0, [_digest(1), _digest(2)]]]  # claims clip 1 never ran
        with pytest.raises(LedgerError, match="ages"):
            PrivacyLedger.from_dict(d)
        d = led.to_dict()
        d["cohorts"] = [[99, [_digest(1)]]]  # older than the node
        with pytest.raises(LedgerError, match="older"):
            PrivacyLedger.from_dict(d)

    def test_legacy_ledger_ages_every_present_clip(self) -> None:
        """A node-lifetime ledger from before per-clip accounting: the clips present at the
        next admit are charged the node's steps (never less than was spent)."""
        legacy = {
            "accountant": "rdp",
            "delta": 1e-5,
            "target_epsilon": 8.0,
            "noise_multiplier": 1.0,
            "sample_rate": 0.1,
            "planned_steps": 100,
            "steps": 30,
            "history": [[1.0, 0.1, 30]],
            "epsilon": PrivacyLedger("rdp", 1e-5, 8, 1.0, 0.1, 100).epsilon_at(30),
        }
        led = PrivacyLedger.from_dict(legacy)
        led.admit([_digest(1)])
        assert led.ages[_digest(1)] == 30
        led.admit([_digest(2)])
        assert led.ages[_digest(2)] == 0


class TestContinuousTrainer:
    def test_retired_clips_are_never_sampled_new_clips_train(
        self, tiny_corpus: Path, tmp_path: Path
    ) -> None:
        """Half the clips train until they retire; then the trainer refuses; the other half
        arrives (update_data) and training resumes on them only, and the checkpoint keeps
        every clip's age across a restart."""
        labels = scan_corpus(tiny_corpus).labels
        fs = load_features(scan_corpus(tiny_corpus, labels=labels), FeatureConfig())
        n = len(fs)
        first, second = fs.subset(list(range(0, n, 2))), fs.subset(list(range(1, n, 2)))
        ckpt = tmp_path / "model.ckpt"
        planned = 12
        card = _card(labels, planned=planned)
        t = _trainer(first, card, checkpoint_path=ckpt, noise_seed=1)
        assert t.train(planned + 5).steps == planned
        assert t.train(3).steps == 0
        assert str(t.budget_state) == "budget_exhausted"
        assert t.retired_clips == len(first)
        eps_retired = t.ledger.epsilon if t.ledger else 0.0
        assert t.update_data(FeatureSet.concat([first, second])) == len(second)
        assert str(t.budget_state) == "training"
        r = t.train(4)
        assert r.steps == 4
        # Every sampled row in the burst belongs to the new half.
        sampled = t._poisson.any(0).nonzero().view(-1).tolist()
        new_ids = set(second.digests)
        assert sampled and all(t._clips[i] in new_ids for i in sampled)
        assert t.ledger is not None and t.ledger.epsilon == pytest.approx(eps_retired)
        restored = load_checkpoint(ckpt).ledger
        assert restored is not None and restored.ages == t.ledger.ages
        # A restarted node (same checkpoint, same clips) resumes every clip's age: the old
        # half stays retired, nothing gets a fresh budget.
        again = _trainer(FeatureSet.concat([first, second]), card, checkpoint_path=ckpt)
        assert again.ledger is not None and again.ledger.ages == t.ledger.ages
        assert again.ledger.epsilon == t.ledger.epsilon and again.retired_clips == len(first)
        np.testing.assert_array_equal(again.get_flat(), t.get_flat())

    def test_empty_start_waits_for_data(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """A node with no clips yet waits; a restart before any clip keeps waiting (its
        checkpoint says no ledger was planned); a checkpoint that drops a planned ledger is
        refused."""
        labels = scan_corpus(tiny_corpus).labels
        fs = load_features(scan_corpus(tiny_corpus, labels=labels), FeatureConfig())
        ckpt = tmp_path / "m.ckpt"
        t = _trainer(fs.subset([]), _card(labels), allow_empty=True, checkpoint_path=ckpt)
        assert str(t.budget_state) == "waiting_for_data" and t.train(5).steps == 0
        t = _trainer(fs.subset([]), _card(labels), allow_empty=True, checkpoint_path=ckpt)
        t.update_data(fs)
        assert str(t.budget_state) == "training" and t.train(2).steps == 2
        doc = load_checkpoint(ckpt)
        assert doc.ledger is not None and doc.meta["dp_planned"] is True
        from flava_p2p.learning.checkpoint import save_checkpoint

        save_checkpoint(ckpt, type(doc)(doc.meta, doc.weights, None))  # ledger removed
        with pytest.raises(FlavaError, match="no privacy ledger"):
            _trainer(fs, _card(labels), checkpoint_path=ckpt)


# -------------------------------------------------------------------- watched folder
class TestClipFolder:
    def test_new_removed_corrupt_and_unknown(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """A rescan picks up added clips (encoded once), drops removed ones, counts a corrupt
        file with its reason (once, not re-read until it changes) and non-label folders."""
        labels = scan_corpus(tiny_corpus).labels
        root = tmp_path / "data"
        for lab in labels[:2]:
            shutil.copytree(tiny_corpus / lab, root / lab)
        folder = ClipFolder([root, tmp_path / "inbox"], labels, FeatureConfig())
        first = folder.scan()
        n0 = len(folder.feature_set())
        assert first.added == n0 > 0 and folder.added_since_start == 0
        assert folder.counts()[labels[2]] == 0
        # new clips (one label into the inbox), a corrupt file, an unknown folder
        shutil.copytree(tiny_corpus / labels[2], tmp_path / "inbox" / labels[2])
        (root / labels[0] / "broken_nohash_0.wav").write_bytes(b"RIFF\x00\x00garbage")
        (root / "not_a_label").mkdir()
        (root / "not_a_label" / "x_nohash_0.wav").write_bytes(b"")
        change = folder.scan()
        added = len(list((tmp_path / "inbox" / labels[2]).iterdir()))
        assert change.added == added and change.removed == 0
        assert list(change.rejected) == [str(root / labels[0] / "broken_nohash_0.wav")]
        assert folder.unknown_labels == {"not_a_label": 1}
        assert folder.counts()[labels[2]] == added
        again = folder.scan()  # nothing changed: nothing re-read, the bad file not re-reported
        assert not again.changed and not again.rejected and len(folder.rejected) == 1
        victim = next((root / labels[1]).iterdir())
        victim.unlink()
        gone = folder.scan()
        assert gone.removed == 1 and folder.removed_since_start == 1
        assert len(folder.feature_set()) == n0 + added - 1
        assert str(victim) not in folder.feature_set().paths

    def test_reading_counts_while_a_scan_changes_the_folder(
        self, tiny_corpus: Path, tmp_path: Path
    ) -> None:
        """The node's status endpoint reads counts and rejections on the event loop while a
        rescan runs on the training thread. A scan that lands mid-read (here: forced from
        inside the read) must not break the read with 'dictionary changed size'."""
        from flava_p2p.speech.clip_folder import FolderChange
        from flava_p2p.speech.dataset import Utterance

        labels = scan_corpus(tiny_corpus).labels
        root = tmp_path / "data"
        shutil.copytree(tiny_corpus / labels[0], root / labels[0])
        folder = ClipFolder([root], labels, FeatureConfig())
        folder.scan()
        (root / labels[0] / "broken_nohash_0.wav").write_bytes(b"RIFF\x00\x00garbage")
        folder.scan()
        shutil.copytree(tiny_corpus / labels[1], root / labels[1])
        clip = next(iter(folder._clips.values()))
        interrupted: list[FolderChange] = []

        class ScanMidRead(Utterance):
            @property
            def label(self) -> str:
                if not interrupted:
                    (root / labels[0] / "broken_nohash_1.wav").write_bytes(b"RIFF")
                    interrupted.append(folder.scan())  # what a thread switch here would do
                return str(clip.utt.__dict__["label"])

        plain = clip.utt
        clip.utt = ScanMidRead.__new__(ScanMidRead)
        clip.utt.__dict__.update(plain.__dict__)
        counts = folder.counts()
        assert interrupted and interrupted[0].added > 0  # the scan did land mid-read
        assert counts[labels[0]] >= 1
        assert len(folder.rejected) == 2


class TestTrainMinPeers:
    def test_no_training_alone_then_training_with_a_peer(self) -> None:
        """gossip.train_min_peers = 1: a lone node merges nothing and spends no budget (no
        TrainRequest, counted); once a peer is in its view it trains every round."""
        from flava_p2p.protocol.node import TrainRequest

        def still(i: int, m: np.ndarray) -> tuple[np.ndarray, int, DpInfo]:
            return m, 1, DpInfo(None, None)

        cfg = GossipConfig(period_s=1.0, shuffle_period_s=0.5, ping_period_s=0.3, train_min_peers=1)
        net = VirtualNetwork(link=LinkModel(), seed=0, learner=still)
        for i in range(2):
            net.add(
                NodeCore(
                    Identity.from_seed(bytes([5, i]) * 16),
                    network_id="t",
                    genesis=np.zeros(8, np.float32),
                    schema=b"s" * 32,
                    gossip=cfg,
                    rng=random.Random(i),
                    bootstrap=[],
                )
            )
        net.start()
        net.run_until(5.0)
        a, b = net.nodes
        assert not any(isinstance(e, TrainRequest) for _, _, e in net.events)
        assert a.counters["train_waiting_for_peers"] >= 3
        b.bootstrap = [net.address(0)]  # b learns a's address: they meet
        b._next_boot = 0.0
        net.run_until(12.0)
        assert len(a.view) == 1
        assert sum(1 for _, i, e in net.events if i == 0 and isinstance(e, TrainRequest)) >= 3
