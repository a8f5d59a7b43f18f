"""The ``edgecnn`` command line: thin click commands over the stage libraries.

Stage modules are imported inside each command body, so ``edgecnn --help``, ``predict``,
``bench`` and ``serve`` never load TensorFlow.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from edgecnn import __version__
from edgecnn.errors import EdgecnnError


class _Group(click.Group):
    """Turns every EdgecnnError into a one-line message and exit code 1 (``--debug`` re-raises)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgecnnError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgecnn")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """edgecnn: CNN image classifiers from Keras training to ONNX on the edge.

    \b
    Pipeline:
      edgecnn train --model seed_cnn --data cifar10.npz --epochs 10 --out runs/seed
      edgecnn evaluate runs/seed
      edgecnn export runs/seed --quantize int8
      edgecnn bench runs/seed/export/model.onnx
      edgecnn serve runs/seed/export/model.onnx
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s")


def _echo_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a rich table (plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


# ---------------------------------------------------------------------------------- train stage
# (commands of the training stage are defined below this line)


# --------------------------------------------------------------------------------- export stage
# (commands of the export stage are defined below this line)


# -------------------------------------------------------------------------------- runtime stage
# (commands of the runtime stage are defined below this line)


# ---------------------------------------------------------------------------------- serve stage
# (commands of the serve stage are defined below this line)


if __name__ == "__main__":  # pragma: no cover
    main()
