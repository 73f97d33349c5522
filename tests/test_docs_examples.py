"""Every pipeline the docs show must load, and every example file must run.

The files are found when pytest collects this module, so a new doc or example
needs no change here:

- each fenced block whose info string starts with `toml` in `README.md` and
  `docs/*.md` must load with `runner.load_pipeline`; except `toml fragment`
  (a piece of a file, or one that needs something outside it: skipped) and
  `toml invalid` (a deliberately bad file, shown with its error: it must fail
  to load with a `PipelineError`);
- each `examples/*.toml` must load and run to success on the fake provider.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

import runner

REPO = Path(__file__).resolve().parent.parent

# CommonMark: up to three spaces, then three or more backticks or tildes.
_OPENER = re.compile(r"(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)")


@attrs.frozen
class Block:
    """A fenced block: where it starts (1-based line of the fence), its info words, its text."""

    doc: str
    line: int
    info: tuple[str, ...]
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_blocks(markdown: str, doc: str) -> list[Block]:
    """Every closed fenced block of `markdown`, in order; an unclosed one ends the search."""
    lines = markdown.split("\n")
    blocks = []
    index = 0
    while index < len(lines):
        opener = _OPENER.fullmatch(lines[index])
        if opener is None or (opener["fence"][0] == "`" and "`" in opener["info"]):
            index += 1
            continue
        fence, indent = opener["fence"], len(opener["indent"])
        close = next(
            (
                i
                for i in range(index + 1, len(lines))
                if re.fullmatch(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*", lines[i])
            ),
            None,
        )
        if close is None:
            break
        body = [_dedent(line, indent) for line in lines[index + 1 : close]]
        text = "".join(line + "\n" for line in body)
        blocks.append(Block(doc, index + 1, tuple(opener["info"].split()), text))
        index = close + 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(indent, spaces) :]


def _docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def toml_blocks() -> list[Block]:
    found = []
    for path in _docs():
        doc = path.relative_to(REPO).as_posix()
        blocks = fenced_blocks(path.read_text(encoding="utf-8"), doc)
        found.extend(b for b in blocks if b.info[:1] == ("toml",))
    return found


def _kind(block: Block) -> str:
    return block.info[1] if len(block.info) > 1 else "pipeline"


TOML_BLOCKS = toml_blocks()
PIPELINES = [b for b in TOML_BLOCKS if _kind(b) not in ("fragment", "invalid")]
INVALID = [b for b in TOML_BLOCKS if _kind(b) == "invalid"]
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))


def _write(block: Block, tmp_path: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", block.id) + ".toml"
    path = tmp_path / name
    path.write_text(block.text, encoding="utf-8")
    return path


# --- the docs ----------------------------------------------------------------


@pytest.mark.parametrize("block", PIPELINES, ids=[b.id for b in PIPELINES])
def test_a_toml_block_in_the_docs_loads(block, tmp_path):
    # The file is named after the block (docs_PIPELINES.md_42.toml), and so is its error.
    runner.load_pipeline(_write(block, tmp_path))


@pytest.mark.parametrize("block", INVALID, ids=[b.id for b in INVALID])
def test_a_toml_invalid_block_in_the_docs_does_not_load(block, tmp_path):
    path = _write(block, tmp_path)
    with pytest.raises(runner.PipelineError, match=rf"^{re.escape(str(path))}: \S+: .+$"):
        runner.load_pipeline(path)


def test_only_known_words_follow_toml():
    # A typo such as `toml fragmnet` must not quietly turn a block into something else.
    unknown = [b.id for b in TOML_BLOCKS if _kind(b) not in ("pipeline", "fragment", "invalid")]
    assert [] == unknown


@pytest.mark.parametrize("path", _docs(), ids=[p.relative_to(REPO).as_posix() for p in _docs()])
def test_every_toml_fence_is_collected(path):
    # Counted without the block finder: a block it missed would be a pipeline never loaded.
    doc = path.relative_to(REPO).as_posix()
    lines = path.read_text(encoding="utf-8").split("\n")
    openers = [
        i + 1 for i, line in enumerate(lines) if re.match(r" {0,3}(`{3,}|~{3,})\s*toml\b", line)
    ]
    assert openers == [b.line for b in TOML_BLOCKS if b.doc == doc]


def test_the_readme_and_the_pipeline_reference_are_collected():
    # A glob that found nothing would leave the tests above with no cases to run.
    assert {"README.md", "docs/PIPELINES.md"} <= {b.doc for b in PIPELINES}
    assert "docs/PIPELINES.md" in {b.doc for b in INVALID}


# --- the block finder itself ---------------------------------------------------


def test_fenced_blocks_reads_info_words_lines_and_nested_fences():
    markdown = "\n".join(
        [
            "# Title",  # 1
            "```toml",  # 2
            'name = "a"',
            "```",
            "text",  # 5
            "````toml fragment",  # 6
            "[steps.x]",
            "```python",
            "inner",
            "```",
            "````",
            "  ~~~ toml  invalid",  # 12
            "  x = 1",
            "~~~",
            "``` `not a fence`",  # 15
            "```sh",  # 16
            "unclosed",
        ]
    )
    expected = [
        Block("d.md", 2, ("toml",), 'name = "a"\n'),
        Block("d.md", 6, ("toml", "fragment"), "[steps.x]\n```python\ninner\n```\n"),
        Block("d.md", 12, ("toml", "invalid"), "x = 1\n"),
    ]
    assert expected == fenced_blocks(markdown, "d.md")


# --- the example files -------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.relative_to(REPO).as_posix() for p in EXAMPLES])
async def test_an_example_file_loads_and_runs_on_the_fake_provider(path, tmp_path):
    pipeline = runner.load_pipeline(path)
    # As `runner run --provider fake` does; a file already on fake keeps its own steps.
    if any(pipeline.resolved(s).provider != "fake" for s in pipeline.steps if s.fn is None):
        pipeline = pipeline.with_overrides(provider="fake")
    required = {
        name: f"example {name}" for name, spec in pipeline.inputs.items() if spec.default is None
    }
    result = await runner.run_dag(
        pipeline, inputs=required, runs_dir=tmp_path / "runs", settings=runner.Settings()
    )
    failures = [
        (event.get("step"), (event.get("data") or {}).get("message"))
        for event in runner.read_events(result.run_dir / "events.jsonl")
        if event["type"] == "step.failed"
    ]
    assert [] == failures
    assert ("succeeded", set(pipeline.step_names)) == (result.status, set(result.outputs))


def test_there_is_an_example_file():
    assert [] != EXAMPLES
