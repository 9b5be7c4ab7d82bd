"""Private learning: models and heads, the DP-SGD trainer (Opacus, and the closed-form step of
linear heads), the privacy ledger, message-level noise, checkpoints, inference.

Speech data (audio, front ends, the pretrained encoder, corpora) lives in ``speech/``.
"""
