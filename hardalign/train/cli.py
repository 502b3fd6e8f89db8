"""``hardalign train`` and ``hardalign evaluate`` (being written; see hardalign.train)."""


def register(commands) -> None:
    """Add the trainer's subcommands (filled in with the loop)."""
