"""Command-line entry points of the vision area: ``hardalign plot glimpses``."""

from __future__ import annotations


def register(commands) -> None:
    """Add the vision subcommands to the ``hardalign`` command (filled in as they land)."""
