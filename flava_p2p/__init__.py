"""FLAVA-P2P: serverless, privacy-preserving gossip learning of speech models."""

__version__ = "0.1.0"
