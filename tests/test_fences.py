import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.fences import FileBlock, parse_file_blocks

# -- the path in the info string ----------------------------------------------


@pytest.mark.parametrize(
    ("opener", "path"),
    [
        ("```python path=src/app.py", "src/app.py"),
        ("```path=src/app.py", "src/app.py"),
        ("``` path=src/app.py", "src/app.py"),
        ('```python path="src/my app.py"', "src/my app.py"),
        ("```python path='src/app.py'", "src/app.py"),
        ("```python title=demo path=src/app.py linenums", "src/app.py"),
        ("~~~toml path=pyproject.toml", "pyproject.toml"),
        ("   ```python path=src/app.py", "src/app.py"),
    ],
)
def test_info_string_path(opener, path):
    text = f"Here you go:\n\n{opener}\nprint('hi')\n```\n"
    if opener.lstrip().startswith("~"):
        text = text.replace("\n```\n", "\n~~~\n")

    assert [FileBlock(path, "print('hi')\n")] == parse_file_blocks(text)


def test_info_string_path_wins_over_the_line_above():
    text = "src/other.py\n```python path=src/app.py\nx = 1\n```\n"

    assert [FileBlock("src/app.py", "x = 1\n")] == parse_file_blocks(text)


@pytest.mark.parametrize("info", ['python path="', "python path=''", 'python path="src/app.py'])
def test_empty_or_unterminated_info_path_falls_back_to_the_line_above(info):
    text = f"lib/fallback.py\n```{info}\nx = 1\n```\n"

    assert [FileBlock("lib/fallback.py", "x = 1\n")] == parse_file_blocks(text)


# -- the path on the line above -----------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "src/app.py",
        "`src/app.py`",
        "**src/app.py**",
        "**`src/app.py`**",
        "### src/app.py",
        "## File: src/app.py",
        "File: src/app.py",
        "**File:** src/app.py",
        "**File: `src/app.py`**",
        "Path: src/app.py",
        "- src/app.py",
        "* `src/app.py`",
        "1. src/app.py",
        "src/app.py:",
        "`src/app.py`:",
        "Filename: src/app.py",
        "  src/app.py  ",
    ],
)
@pytest.mark.parametrize("gap", ["", "\n"])
def test_decorated_path_line_above(line, gap):
    text = f"Create this file.\n\n{line}\n{gap}```python\nimport os\n```\n"

    assert [FileBlock("src/app.py", "import os\n")] == parse_file_blocks(text)


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("Makefile", "Makefile"),
        ("**Dockerfile**", "Dockerfile"),
        ("### LICENSE", "LICENSE"),
        ("`.gitignore`", ".gitignore"),
        ("app.py", "app.py"),
        ("__init__.py", "__init__.py"),
        ("Dockerfile.dev", "Dockerfile.dev"),
        ("docs/.env", "docs/.env"),
        ("File: bin/run", "bin/run"),
        ("`bin/run`", "bin/run"),
    ],
)
def test_file_names_without_a_directory_or_extension(line, path):
    text = f"{line}\n```\nbody\n```\n"

    assert [FileBlock(path, "body\n")] == parse_file_blocks(text)


@pytest.mark.parametrize(
    "line",
    [
        "Here is the code:",
        "Run this command",
        "Example:",
        "## License",
        "### Input/Output",
        "bin/run",
        "src/",
        "3.14",
        "e.g.",
        "...",
        "https://example.com/app.py",
        "C:\\src\\app.py",
        "Save this as src/app.py:",
        "`npm install`",
        "`main`",
        "**Note**",
        "```",
    ],
)
def test_prose_line_above_is_not_a_path(line):
    text = f"{line}\n```python\nprint('hi')\n```\n"

    assert [] == parse_file_blocks(text)


def test_path_line_two_blank_lines_above_is_too_far():
    text = "src/app.py\n\n\n```python\nx = 1\n```\n"

    assert [] == parse_file_blocks(text)


def test_path_line_is_not_taken_from_inside_an_earlier_block():
    text = "```text\nsrc/app.py\n```\n```python\nx = 1\n```\n"

    assert [] == parse_file_blocks(text)


# -- fences -------------------------------------------------------------------


def test_fence_without_a_path_is_ignored():
    text = "Install it:\n\n```sh\npip install runner\n```\n\nsrc/app.py\n```python\nx = 1\n```\n"

    assert [FileBlock("src/app.py", "x = 1\n")] == parse_file_blocks(text)


def test_longer_fence_holds_shorter_fences():
    lines = [
        "````markdown path=README.md",
        "# Demo",
        "```python",
        "print('hi')",
        "```",
        "````",
    ]
    text = "\n".join(lines) + "\n"

    expected = [FileBlock("README.md", "# Demo\n```python\nprint('hi')\n```\n")]
    assert expected == parse_file_blocks(text)


def test_closing_fence_may_be_longer_indented_and_trailed_by_spaces():
    text = "```path=a.txt\na\n   `````  \t\n"

    assert [FileBlock("a.txt", "a\n")] == parse_file_blocks(text)


def test_a_closing_fence_must_use_the_opening_character():
    text = "~~~path=a.md\n```\nstill inside\n```\n~~~\n"

    assert [FileBlock("a.md", "```\nstill inside\n```\n")] == parse_file_blocks(text)


def test_line_with_text_after_the_fence_does_not_close_it():
    text = "```path=a.txt\n``` not a close\n    ```\n```\n"

    assert [FileBlock("a.txt", "``` not a close\n    ```\n")] == parse_file_blocks(text)


def test_backtick_in_a_backtick_info_string_is_inline_code_not_a_fence():
    text = "```x``` is inline\n```path=a.txt\nbody\n```\n"

    assert [FileBlock("a.txt", "body\n")] == parse_file_blocks(text)


def test_fence_indented_four_spaces_is_not_a_fence():
    text = "    ```path=a.txt\n    body\n    ```\n"

    assert [] == parse_file_blocks(text)


def test_indented_fence_content_loses_the_fence_indentation():
    text = "1. `src/app.py`\n   ```python\n   def f():\n       return 1\n  x\n   ```\n"

    expected = [FileBlock("src/app.py", "def f():\n    return 1\nx\n")]
    assert expected == parse_file_blocks(text)


def test_closing_fence_without_trailing_newline():
    text = "```path=a.txt\nbody\n```"

    assert [FileBlock("a.txt", "body\n")] == parse_file_blocks(text)


def test_crlf_line_endings():
    text = "src/app.py\r\n```python\r\nx = 1\r\ny = 2\r\n```\r\n"

    assert [FileBlock("src/app.py", "x = 1\ny = 2\n")] == parse_file_blocks(text)


def test_unclosed_fence_is_ignored_but_earlier_files_are_kept():
    text = "```path=a.txt\nA\n```\n\n```path=b.txt\nB is cut sh"

    assert [FileBlock("a.txt", "A\n")] == parse_file_blocks(text)


def test_unclosed_outer_fence_is_not_closed_by_a_shorter_inner_one():
    text = "````path=README.md\n```\ncode\n```\n"

    assert [] == parse_file_blocks(text)


def test_two_files_in_one_answer():
    text = (
        "Two files:\n\n"
        "**src/app.py**\n```python\nfrom lib import f\n```\n\n"
        "And the helper:\n\n"
        "```python path=src/lib.py\ndef f(): ...\n```\n\nDone.\n"
    )

    expected = [
        FileBlock("src/app.py", "from lib import f\n"),
        FileBlock("src/lib.py", "def f(): ...\n"),
    ]
    assert expected == parse_file_blocks(text)


def test_empty_file():
    text = "```path=src/__init__.py\n```\n"

    assert [FileBlock("src/__init__.py", "")] == parse_file_blocks(text)


def test_blank_lines_in_content_are_kept():
    text = "```path=a.txt\n\nx\n\n```\n"

    assert [FileBlock("a.txt", "\nx\n\n")] == parse_file_blocks(text)


def test_duplicate_paths_come_back_in_order():
    text = "```path=a.txt\nfirst\n```\n```path=a.txt\nsecond\n```\n"

    expected = [FileBlock("a.txt", "first\n"), FileBlock("a.txt", "second\n")]
    assert expected == parse_file_blocks(text)


def test_path_is_kept_exactly_as_written():
    text = "```path=../../etc/passwd\nx\n```\n```path=./a//b.txt\ny\n```\n"

    expected = [FileBlock("../../etc/passwd", "x\n"), FileBlock("./a//b.txt", "y\n")]
    assert expected == parse_file_blocks(text)


def test_no_fences_no_files():
    assert [] == parse_file_blocks("")
    assert [] == parse_file_blocks("Just prose.\nsrc/app.py\n")


# -- properties ---------------------------------------------------------------

_FENCE_LIKE = re.compile(r" {0,3}(```|~~~)")
# Markdown's own characters turn up often, so that runs of fences, paths and
# emphasis meet each other far more than uniform text would make them.
_chars = st.sampled_from("`~ \t#*-:./=_ax1") | st.characters(exclude_characters="\r\n")
_line = st.text(_chars, max_size=20)
_prose_line = _line.filter(lambda line: not _FENCE_LIKE.match(line))
_prose = st.lists(_prose_line, max_size=3).map(lambda lines: "".join(f"{x}\n" for x in lines))
_content = st.lists(_line, max_size=5)
_lang = st.sampled_from(["", "python", "toml", "md"])


def _longest_run(char, lines):
    return max((len(run) for line in lines for run in re.findall(f"{re.escape(char)}+", line)),
               default=0)  # fmt: skip


@st.composite
def _fence(draw, content_lines):
    char = draw(st.sampled_from("`~"))
    return char * max(3, _longest_run(char, content_lines) + 1 + draw(st.integers(0, 1)))


@st.composite
def _info_block(draw):
    path = draw(st.text(string.ascii_letters + string.digits + "._-/ ", min_size=1, max_size=20))
    content_lines = draw(_content)
    fence = draw(_fence(content_lines))
    indent = " " * draw(st.integers(0, 3))
    quote = draw(st.sampled_from(["'", '"'])) if " " in path else draw(st.sampled_from(["", "'"]))
    lang = draw(_lang)
    opener = f"{indent}{fence}{lang}{' ' if lang else ''}path={quote}{path}{quote}"
    body = "".join(f"{indent}{line}\n" for line in content_lines)
    expected = FileBlock(path, "".join(f"{line}\n" for line in content_lines))
    return expected, f"{opener}\n{body}{indent}{fence}\n"


_segment = st.text(string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=8).filter(
    lambda s: s[0] not in "-_"
)
_file_name = st.builds(
    "{}.{}".format, _segment, st.text(string.ascii_lowercase, min_size=1, max_size=4)
) | st.sampled_from(["Makefile", "Dockerfile", "LICENSE", ".gitignore"])
_line_path = st.builds(
    lambda dirs, name: "/".join([*dirs, name]), st.lists(_segment, max_size=3), _file_name
)
_decorations = [
    "{}", "`{}`", "**{}**", "**`{}`**", "### {}", "## File: {}", "File: {}", "**File:** {}",
    "**File: `{}`**", "Path: {}", "- {}", "1. {}", "{}:",
]  # fmt: skip


@st.composite
def _line_above_block(draw):
    path = draw(_line_path)
    content_lines = draw(_content)
    fence = draw(_fence(content_lines))
    heading = draw(st.sampled_from(_decorations)).format(path)
    gap = draw(st.sampled_from(["", "\n"]))
    body = "".join(f"{line}\n" for line in content_lines)
    text = f"{heading}\n{gap}{fence}{draw(_lang)}\n{body}{fence}\n"
    return FileBlock(path, body), text


@settings(max_examples=200)
@given(st.lists(st.tuples(_info_block(), _prose), max_size=4), _prose, _prose)
def test_info_string_blocks_round_trip(blocks, first_prose, last_prose):
    text = first_prose + "".join(rendered + prose for (_, rendered), prose in blocks) + last_prose

    expected = [block for (block, _), _ in blocks]
    assert expected == parse_file_blocks(text)
    assert expected == parse_file_blocks(text.replace("\n", "\r\n"))


@settings(max_examples=200)
@given(st.lists(st.tuples(_line_above_block(), _prose), max_size=4), _prose)
def test_line_above_blocks_round_trip(blocks, last_prose):
    # Whatever prose precedes a path line, the path line is what is closest.
    text = "".join(prose + rendered for (_, rendered), prose in blocks) + last_prose

    expected = [block for (block, _), _ in blocks]
    assert expected == parse_file_blocks(text)


@settings(max_examples=300)
@given(st.text(_chars | st.sampled_from("\r\n")))
def test_never_raises_and_content_is_whole_lines(text):
    for block in parse_file_blocks(text):
        assert block.path
        assert block.content == "" or block.content.endswith("\n")
