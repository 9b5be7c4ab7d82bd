"""Command-line entry points: ``flava-node`` (operators) and ``flava-sim`` (researchers)."""
