"""Speech data: audio I/O, front ends (the frozen pretrained encoder, log-mel), the feature
cache, corpora (Speech Commands layout, import, espeak-ng synthesis) and partitioners.

Nothing here learns from private data; that is ``learning/``.
"""
