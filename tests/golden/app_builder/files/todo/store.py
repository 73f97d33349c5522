import json
from pathlib import Path

DEFAULT = Path.home() / ".todo.json"


def load(path: Path = DEFAULT) -> list[dict]:
    if not path.exists():
        return []
    return json.loads(path.read_text())


def save(items: list[dict], path: Path = DEFAULT) -> None:
    path.write_text(json.dumps(items, indent=2))
