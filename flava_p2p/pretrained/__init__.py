"""Pretrained model files shipped with the package (see NOTICE.md); data, not code."""
