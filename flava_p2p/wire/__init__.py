"""No I/O: envelopes, tensor codec, chunking, replay window, message types."""
