"""The command layer: ``hardalign`` subcommands of the model families, above the trainer.

A model family (:mod:`hardalign.speech`, :mod:`hardalign.vision`, :mod:`hardalign.sbn`) is library
code and never imports :mod:`hardalign.train`; its commands live here, where rebuilding a run
from a checkpoint (:func:`hardalign.train.run.load_run`) is allowed. Each module defines
``register(commands)`` and is listed in :data:`hardalign.cli.COMMAND_MODULES`:

* :mod:`hardalign.commands.speech`: ``hardalign decode`` and ``hardalign plot alignment``;
* :mod:`hardalign.commands.vision`: ``hardalign plot glimpses``.

See docs/architecture.md for the layers and what each may import.
"""
