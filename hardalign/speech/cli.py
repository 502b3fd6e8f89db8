"""Speech-model commands: ``hardalign decode`` and ``hardalign plot alignment``."""


def register(commands) -> None:
    """Placeholder until the decode and plot commands land (same session)."""
