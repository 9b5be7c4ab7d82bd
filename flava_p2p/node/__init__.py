"""The node assembly: where protocol and learning meet (used by the runtime and the simulator)."""
