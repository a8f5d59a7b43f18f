"""The ``edgecnn`` group: one-line errors for every command, and the tables commands print."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from edgecnn import __version__
from edgecnn._optional import missing_module_message
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
        except ModuleNotFoundError as err:  # a command of an extra that is not installed
            message = missing_module_message(err.name or "")
            if message is None or (ctx.obj and ctx.obj.get("debug")):
                raise
            raise click.ClickException(message) from None
        except OSError as err:  # a read-only folder, a full disk, a vanished file: the user's to fix
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            raise click.ClickException(f"{err.strerror or err}{where}; check the path, its permissions and the "
                                       "free disk space.") from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgecnn")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """edgecnn: CNN image models (classify, detect, segment) from Keras training or any ONNX to the edge.

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


def echo_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a rich table (plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


_NARROW_DROP = ("mean ms", "std", "min", "p90", "max", "session s", "peak mb")  # kept in --json/--csv


def echo_wide_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table wide enough for every bench column when not a terminal (pipes and files keep
    every column); on a terminal too narrow for it, the columns of :data:`_NARROW_DROP` go, and
    one line says where to find them."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    need = sum(max(len(c), *(len(r[i]) for r in rows)) + 3 for i, c in enumerate(columns)) + 1 if rows else 0
    keep = list(range(len(columns)))
    if console.is_terminal and need > console.width:
        keep = [i for i, c in enumerate(columns) if c.lower() not in _NARROW_DROP]
    table = Table(title=title)
    for i in keep:
        table.add_column(columns[i], justify="left" if i < 3 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    Console(width=max(200, console.width) if not console.is_terminal else None).print(table)
    if len(keep) < len(columns):
        click.echo(f"({len(columns) - len(keep)} columns left out for this {console.width}-column terminal: "
                   "--json or --csv have them all)")


def given(ctx: click.Context, **values: Any) -> dict[str, Any]:
    """The options the user set (on the command line or by environment), not click's defaults:
    an export directory's deploy.json supplies the rest."""
    from click.core import ParameterSource

    return {k: v for k, v in values.items()
            if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)}
