"""The ``edgecnn`` command line: thin click commands over the stage libraries, one module per stage.

Stage modules are imported inside each command body, so ``edgecnn --help``, ``predict``,
``bench`` and ``serve`` never load TensorFlow. Option groups shared by commands live in
:mod:`edgecnn.cli._options`; the group, its one-line errors and the tables in :mod:`edgecnn.cli._app`.
"""

from edgecnn.cli import batch, bench, evaluate, export, predict, serve, train, tune  # noqa: F401  (registers the commands)
from edgecnn.cli._app import main

__all__ = ["main"]
