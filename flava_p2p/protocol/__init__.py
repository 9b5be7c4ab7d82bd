"""The node's brain, sans I/O: no sockets, no clock, no global RNG. Time enters as ``now``."""
