"""The task card: what a network learns, agreed by every peer.

One small YAML file names the task, its kind, the *ordered* label list, the front end (encoder
and sample rate), the model head and the DP bound every clip is held to. Its SHA-256 (of the
validated, canonical form, so comments and key order do not matter) enters the model schema
that peers compare when they meet: a node with another card is refused with an error naming
both cards. Because the label list comes from the card and not from the node's folders, a
device holding clips of only some labels trains the same model as everyone else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from flava_p2p.config import (
    ConfigError,
    FeatureConfig,
    ModelConfig,
    NodeConfig,
    _Strict,
    check_model_frontend,
    validate_config,
)

TaskKind = Literal["keyword_spotting", "speech_emotion", "audio_classification"]


class TaskPrivacy(_Strict):
    """The DP bound of the task: every clip's (ε, δ), example-level, never exceeds it."""

    target_epsilon: float = Field(default=8.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    planned_steps: int = Field(default=2000, ge=1)
    """Steps in which one clip may be sampled before its budget is spent and it retires."""


class TaskCard(_Strict):
    """A network-wide task: peers merge models only when their cards hash the same."""

    name: str = Field(min_length=1, max_length=64)
    kind: TaskKind = "keyword_spotting"
    description: str = ""
    labels: list[str] = Field(min_length=2, max_length=1000)
    """Ordered: label i is output i of every node's model."""
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    privacy: TaskPrivacy = TaskPrivacy()
    identity_work_bits: int = Field(default=22, ge=0, le=32)
    """Proof of work on every PeerID of the task's network (Sybil cost): ~2^bits hashes to mint
    an identity (22 bits: ~2 s on one core here, once per identity; the nonce is kept in the
    node's home), one hash to check it. Peers without it are ignored."""

    @field_validator("labels")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not x or "/" in x or x.startswith(".") or x != x.strip()]
        if bad:
            raise ValueError(
                f"label names are folder names: not empty, no '/', no leading dot or spaces "
                f"({bad[:3]})"
            )
        dupes = sorted({x for x in v if v.count(x) > 1})
        if dupes:
            raise ValueError(f"labels must be distinct; repeated: {dupes}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_sample_rate(cls, data: Any) -> Any:
        # One source of truth: the card's top-level sample_rate is the front end's.
        if isinstance(data, dict) and isinstance(data.get("features", {}), dict):
            feats = dict(data.get("features") or {})
            rate = data.get("sample_rate", feats.get("sample_rate", 16000))
            if feats.get("sample_rate", rate) != rate:
                raise ValueError(
                    f"sample_rate {rate} and features.sample_rate {feats['sample_rate']} differ; "
                    f"give it once, at the top level"
                )
            feats["sample_rate"] = rate
            data = {**data, "sample_rate": rate, "features": feats}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TaskCard:
        check_model_frontend(self.model.name, self.features.kind)
        return self

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical card (validated values; comments and key order ignored)."""
        blob = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def ident(self) -> str:
        """How the card is named in logs and refusals: ``name (sha256 0123456789ab)``."""
        return f"{self.name} (sha256 {self.digest[:12]})"


def load_task(path: str | Path) -> TaskCard:
    """Read and validate a task card; errors name the file and the bad field."""
    p = Path(path)
    try:
        data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"{p}: cannot read the task card ({exc.strerror}). Pass a YAML file such as "
            f"configs/tasks/fsdd_digits.yaml."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a task card is a YAML mapping (name, kind, labels, …).")
    return validate_config(data, TaskCard, str(p))


def apply_task(cfg: NodeConfig, card: TaskCard) -> NodeConfig:
    """The node config with the card's front end, model and DP bound in force.

    The card wins over node.yaml for everything peers must share; node-local privacy settings
    (the accountant, message-level noise) stay the node's own.
    """
    privacy = cfg.privacy.model_copy(update=card.privacy.model_dump())
    network = cfg.network.model_copy(update={"identity_work_bits": card.identity_work_bits})
    return cfg.model_copy(
        update={
            "features": card.features,
            "model": card.model,
            "privacy": privacy,
            "network": network,
        }
    )
