"""The `runner` command: parse, call the library inside `trio.run`, print, choose the exit code.

One module per command (or family): `run.py`, `show.py`, `tail.py`, `jobs.py`
(list, cancel, rm, prune), `graph.py`; `_common.py` holds what they share.

Exit codes: 0 succeeded, 1 job failed, 2 usage / pipeline / settings error, 130 cancelled.
"""

from __future__ import annotations

import warnings
from typing import Any

import click

from .._version import __version__

__all__ = ["cli", "main"]


@click.group()
@click.version_option(__version__, prog_name="runner")
def cli() -> None:
    """Run LLM pipelines as DAGs, with a typed event log, resume and a cache."""


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    # A torn log line is worth one line on stderr, not a Python warning with a source path.
    click.echo(f"runner: warning: {message}", err=True)


def main() -> None:
    warnings.showwarning = _warning_line
    cli(prog_name="runner")


# The commands register themselves on `cli` when imported.
from . import graph, jobs, run, show, tail  # noqa: E402, F401
