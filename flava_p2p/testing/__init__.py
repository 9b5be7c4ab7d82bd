"""Test harnesses that ship with the package (so mypy checks them and scripts can use them)."""
