"""docs/CLI.md names every command and every option of that command, so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from runner.cli import cli

CLI_MD = Path(__file__).parent.parent / "docs" / "CLI.md"


def _sections() -> dict[str, str]:
    """Command name -> its `## `runner NAME ...`` section, heading included."""
    text = CLI_MD.read_text(encoding="utf-8")
    found = re.findall(r"^## (`runner (\w+)[^`]*`\n.*?)(?=^## |\Z)", text, re.M | re.S)
    return {name: section for section, name in found}


# Said once for all, at the top of the page.
SHARED = "Every command that reads jobs takes `--runs-dir DIR`"


def test_every_command_has_a_section() -> None:
    assert sorted(cli.commands) == sorted(_sections())


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_of_a_command_is_in_its_section(name: str) -> None:
    section = _sections().get(name, "")
    shared = {"--runs-dir"} if SHARED in CLI_MD.read_text(encoding="utf-8") else set()
    command = cli.commands[name]
    missing = [
        option
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for option in param.opts
        if option not in {"--help", *shared}
        and f"`{option}" not in section
        and f" {option}" not in section
    ]
    assert [] == missing, f"docs/CLI.md: runner {name} does not name {missing}"
