"""Turn a model's markdown answer into files.

A step with ``files = true`` asks the model to answer with fenced code blocks
that name where they go, either in the info string::

    ```python path=src/app.py
    print("hi")
    ```

or on the line just above the fence, decorated the way models like to::

    **File:** `src/app.py`
    ```python
    print("hi")
    ```

This module only reads the text; it does not judge whether a path is safe to
write (``..``, absolute paths and friends are refused where files are written).
"""

from __future__ import annotations

import re

import attrs

__all__ = ["FileBlock", "parse_file_blocks"]


@attrs.frozen
class FileBlock:
    """One file the model wrote: where it goes, and what goes in it."""

    path: str
    content: str


_OPENER = re.compile(r"(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)")
# A bare value stops at whitespace; an unmatched quote is no path at all rather
# than a path that starts with a quote.
_PATH_TOKEN = re.compile(
    r"""(?:^|\s)path=(?:"(?P<double>[^"]*)"|'(?P<single>[^']*)'|(?P<bare>[^\s"']\S*))"""
)
_DECORATION = re.compile(
    r"(?:(?:#{1,6}|[-+>]|\d{1,3}[.)])\s+)*"  # headings, bullets, quotes, numbered items
    r"(?:(?P<label>file\s*name|file\s*path|file|path)\s*:\s*)?",
    re.IGNORECASE,
)
# No spaces, no colons (URLs, drive letters), no empty segment, no trailing slash.
_PATH_LIKE = re.compile(r"[\w.+@-]+(?:/[\w.+@-]+)*")
# The extension must hold a letter so that "3.14" or "v1.2" are not file names.
_HAS_EXTENSION = re.compile(r".+\.(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{1,10}")
# Case matters on purpose: "LICENSE" above a block is a file, "## License" a heading.
_KNOWN_NAMES = frozenset(
    {
        "Makefile", "makefile", "GNUmakefile", "Dockerfile", "Containerfile",
        "Procfile", "Gemfile", "Rakefile", "Vagrantfile", "Jenkinsfile", "Pipfile",
        "Brewfile", "Justfile", "justfile", "LICENSE", "LICENCE", "COPYING",
        "NOTICE", "AUTHORS", "CODEOWNERS", "README", "CHANGELOG",
        ".gitignore", ".gitattributes", ".gitmodules", ".dockerignore",
        ".editorconfig", ".env", ".npmrc", ".nvmrc", ".python-version",
        ".prettierrc", ".eslintrc", ".bashrc", ".zshrc", ".profile",
    }
)  # fmt: skip


def parse_file_blocks(text: str) -> list[FileBlock]:
    """Find the files in a model's markdown answer, in order of appearance.

    A fenced block (three or more backticks or tildes) is a file when its info
    string holds ``path=REL/PATH`` (quotes allowed), or else when the line just
    above the fence, with at most one blank line between, holds nothing but a
    path (``src/app.py``, ``**File:** `src/app.py```, ``### src/app.py`` ...).
    Other blocks are examples, not files, and are skipped. A longer fence may
    hold shorter ones, so a markdown file can carry its own code samples.

    A block the answer never closes is dropped, with everything after it: the
    answer was cut short, and half a file is worse than none.

    >>> parse_file_blocks("```python path=app.py\\nprint(1)\\n```\\n")
    [FileBlock(path='app.py', content='print(1)\\n')]

    A path named twice comes back twice; writing them in order lets the last win.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    blocks: list[FileBlock] = []
    start = 0
    while start < len(lines):
        opener = _OPENER.fullmatch(lines[start])
        # CommonMark: a backtick in a backtick info string makes the line inline
        # code ("```x``` is ..."), and taking it as a fence would flip every
        # fence after it.
        if opener is None or (opener["fence"][0] == "`" and "`" in opener["info"]):
            start += 1
            continue
        close = _find_close(lines, start + 1, opener["fence"])
        if close is None:
            break
        path = _path_in_info(opener["info"]) or _path_above(lines, start)
        if path is not None:
            indent = len(opener["indent"])
            content = "".join(_dedent(line, indent) + "\n" for line in lines[start + 1 : close])
            blocks.append(FileBlock(path=path, content=content))
        start = close + 1
    return blocks


def _find_close(lines: list[str], start: int, fence: str) -> int | None:
    for index in range(start, len(lines)):
        line = lines[index].rstrip()
        body = line.lstrip(" ")
        if len(line) - len(body) <= 3 and len(body) >= len(fence) and not body.strip(fence[0]):
            return index
    return None


def _path_in_info(info: str) -> str | None:
    match = _PATH_TOKEN.search(info)
    if match is None:
        return None
    return match["double"] or match["single"] or match["bare"] or None


def _path_above(lines: list[str], fence: int) -> str | None:
    # Looking back can reach an earlier block's closing fence but never its
    # content, and a fence line never reads as a path.
    index = fence - 1
    if index >= 0 and not lines[index].strip():
        index -= 1
    if index < 0 or not lines[index].strip():
        return None
    return _path_in_line(lines[index])


def _path_in_line(line: str) -> str | None:
    # Emphasis and code spans wrap paths in every combination ("**File: `x`**"),
    # and neither character belongs in a real path, so drop them wherever they are.
    text = line.replace("*", "").replace("`", "").strip()
    decoration = _DECORATION.match(text)
    assert decoration is not None  # everything in the pattern is optional
    candidate = text[decoration.end() :].strip().removesuffix(":").strip()
    if len(candidate) > 1 and candidate[0] == candidate[-1] and candidate[0] in "\"'":
        candidate = candidate[1:-1]
    if not _PATH_LIKE.fullmatch(candidate):
        return None
    name = candidate.rsplit("/", 1)[-1]
    if _HAS_EXTENSION.fullmatch(name) or name in _KNOWN_NAMES:
        return candidate
    # "Input/Output" is a fine heading above an example; only trust a slash alone
    # ("bin/run") when the model marked the line as a path or as code.
    explicit = decoration["label"] is not None or "`" in line
    return candidate if explicit and "/" in candidate else None


def _dedent(line: str, indent: int) -> str:
    # As in CommonMark, an indented fence (say, inside a list item) indents its
    # content too; that indentation belongs to the markdown, not to the file.
    removable = len(line) - len(line.lstrip(" "))
    return line[min(indent, removable) :]
