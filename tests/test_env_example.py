"""`.env.example` lists exactly the settings `runner/config.py` reads, with the code's defaults.

What the code reads is taken from the code itself: every `get("NAME", parse, default)` call in
`Settings.from_env`, found with `ast`, each mapped to the `Settings` field it fills. (Recording
look-ups on the mapping passed as `environ` cannot work: `from_env` copies it into a plain dict.)
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path
from typing import TypeGuard

import attrs
import pytest

from runner.config import Settings
from runner.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.example"
CONFIG = ROOT / "runner" / "config.py"

# `NAME=value` is a setting with a default; `# NAME=` is one without (API keys, the cache dir).
ENTRY = re.compile(r"^(?P<commented># )?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def read_example() -> tuple[dict[str, str | None], list[str]]:
    """Each setting `.env.example` lists (its value, None when commented out), and its flaws."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    entries: dict[str, str | None] = {}
    flaws: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        where = f".env.example:{lineno}"
        match = ENTRY.match(line)
        if match is None:
            if line.strip() and not line.startswith("# "):
                flaws.append(f"{where}: neither a comment nor NAME=value")
            continue
        name = match["name"]
        if name in entries:
            flaws.append(f"{where}: {name} is listed twice")
        before = lines[lineno - 2] if lineno >= 2 else ""
        if not before.startswith("# ") or ENTRY.match(before) is not None:
            flaws.append(f"{where}: {name} needs one comment line above it saying what it is")
        if match["commented"] and match["value"]:
            flaws.append(f"{where}: write `# {name}=` with no value")
        entries[name] = None if match["commented"] else match["value"]
    return entries, flaws


def example_entries() -> dict[str, str | None]:
    return read_example()[0]


def _is_get_call(node: ast.AST) -> TypeGuard[ast.Call]:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get"


def settings_read_by_config() -> dict[str, str | None]:
    """Variable name -> the `Settings` field it fills, for every `get(...)` in `from_env`."""
    tree = ast.parse(CONFIG.read_text(encoding="utf-8"), filename=str(CONFIG))
    from_env = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "from_env"
    )
    fields = {
        id(keyword.value): keyword.arg
        for keyword in ast.walk(from_env)
        if isinstance(keyword, ast.keyword) and _is_get_call(keyword.value)
    }
    read: dict[str, str | None] = {}
    for node in ast.walk(from_env):
        if not _is_get_call(node):
            continue
        first = node.args[0] if node.args else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            read[first.value] = fields.get(id(node))
        else:
            # Not a literal: the name cannot be checked, so the field goes unaccounted for.
            read[f"<runner/config.py:{node.lineno}: not a string literal>"] = None
    return read


DEFAULTS = Settings.from_env({}, env_file=None)


def test_the_file_is_laid_out_as_documented() -> None:
    assert [] == read_example()[1]


def test_the_code_is_read_as_expected() -> None:
    # Guards the ast reading itself: each Settings field is filled by exactly one get() call.
    read = settings_read_by_config()
    expected = sorted(field.name for field in attrs.fields(Settings))
    assert expected == sorted(field for field in read.values() if field is not None)
    assert [] == [name for name, field in read.items() if field is None]


def test_lists_exactly_the_settings_config_reads() -> None:
    read = set(settings_read_by_config())
    listed = set(example_entries())
    assert {"missing from .env.example": set(), "not read by runner/config.py": set()} == {
        "missing from .env.example": read - listed,
        "not read by runner/config.py": listed - read,
    }


def _effect(name: str, raw: str) -> str:
    """What setting `name` to `raw` in the environment does to the settings."""
    field = settings_read_by_config()[name]
    assert field is not None
    try:
        settings = Settings.from_env({name: raw}, env_file=None)
    except ConfigError as exc:
        return "rejected" if re.match(rf"^{name} \(environment\): ", str(exc)) else repr(exc)
    return "default" if getattr(settings, field) == getattr(DEFAULTS, field) else "changed"


@pytest.mark.parametrize("name", sorted(settings_read_by_config()))
def test_every_setting_found_in_the_code_is_really_read(name: str) -> None:
    # No parser takes this value as it is: from_env must reject it naming the variable,
    # or (API keys take any text) put it in the variable's field.
    assert _effect(name, "not-a-default\0") in ("rejected", "changed")


@pytest.mark.parametrize("name", sorted(example_entries()))
def test_each_listed_value_is_the_code_default(name: str) -> None:
    value = example_entries()[name]
    field = settings_read_by_config().get(name)
    assert field is not None, f"{name} is not read by runner/config.py"
    if value is None:
        # Commented out: only right for a setting whose default is "not set".
        assert getattr(DEFAULTS, field) is None, f"{name} has a default: list it as {name}=..."
    else:
        assert "default" == _effect(name, value)


def test_a_copy_as_dotenv_gives_the_default_settings(tmp_path: Path) -> None:
    shutil.copyfile(EXAMPLE, tmp_path / ".env")
    assert Settings() == DEFAULTS
    assert Settings() == Settings.from_env({}, env_file=tmp_path / ".env")
