"""The only asyncio/socket code: UDP endpoint, node driver, checkpoints, status API, logging."""
