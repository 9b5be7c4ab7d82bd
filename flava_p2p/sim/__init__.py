"""Simulation: virtual clock and in-memory network driving the real node core."""
