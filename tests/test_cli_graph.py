"""`runner graph`: a pipeline's or a job's DAG as text, Mermaid or dot (and `runner/graph.py`'s
drawing functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import invoke

from runner.graph import dot, layers, mermaid

ROOT = Path(__file__).parent.parent
EXAMPLE = str(ROOT / "examples" / "app_builder.toml")
OFFLINE = ("--provider", "fake")

EXAMPLE_TEXT = """\
pipeline app-builder
layer 0
  architect
layer 1
  builder    <- architect
layer 2
  reviewer   <- architect, builder
"""
EXAMPLE_MERMAID = """\
flowchart TD
    architect["architect"]
    builder["builder"]
    reviewer["reviewer"]
    architect --> builder
    architect --> reviewer
    builder --> reviewer
"""
EXAMPLE_DOT = """\
digraph "app-builder" {
    node [shape=box];
    architect;
    builder;
    reviewer;
    architect -> builder;
    architect -> reviewer;
    builder -> reviewer;
}
"""
# One step fails: its dependent is skipped, the other branch succeeds.
FAILING = """\
name = "fails"
[providers.fake.errors]
b = "nope"
[steps.a]
prompt = "a"
[steps.b]
prompt = "b"
needs = ["a"]
[steps.c]
prompt = "c"
needs = ["b"]
[steps.d]
prompt = "d"
needs = ["a"]
"""


def test_layers_group_steps_by_depth_in_declaration_order() -> None:
    needs = {"z": [], "d": ["b", "c"], "b": ["z"], "c": ["z"], "y": []}
    assert [["z", "y"], ["b", "c"], ["d"]] == layers(needs)
    # A step is one layer below its deepest need, not its nearest.
    assert [["a"], ["b"], ["c"]] == layers({"a": [], "b": ["a"], "c": ["a", "b"]})
    assert [] == layers({})
    with pytest.raises(ValueError, match="cycle"):
        layers({"a": ["b"], "b": ["a"]})


@pytest.mark.parametrize(
    ("flag", "expected"), [((), EXAMPLE_TEXT), (("--mermaid",), EXAMPLE_MERMAID)]
)
def test_graph_of_the_example_pipeline(flag: tuple[str, ...], expected: str) -> None:
    code, out, err = invoke("graph", EXAMPLE, *flag)
    assert (0, expected, "") == (code, out, err)


def test_graph_dot_of_the_example_pipeline() -> None:
    code, out, err = invoke("graph", EXAMPLE, "--dot")
    assert (0, EXAMPLE_DOT, "") == (code, out, err)


def test_graph_of_a_finished_job_shows_each_step_status(runs_dir: Path, tmp_path: Path) -> None:
    pipeline = tmp_path / "fails.toml"
    pipeline.write_text(FAILING)
    assert 1 == invoke("run", str(pipeline), "--runs-dir", str(runs_dir), "--job-id", "f")[0]
    pipeline.unlink()  # the job's own pipeline.json is what is drawn
    code, out, _ = invoke("graph", "f", "--runs-dir", str(runs_dir))
    assert 0 == code
    assert (
        "job f  pipeline fails  status failed\n"
        "layer 0\n"
        "  a  succeeded\n"
        "layer 1\n"
        "  b  failed     <- a\n"
        "  d  succeeded  <- a\n"
        "layer 2\n"
        "  c  skipped    <- b\n"
    ) == out
    _, out, _ = invoke("graph", "f", "--runs-dir", str(runs_dir), "--mermaid")
    assert (
        "flowchart TD\n"
        '    a["a: succeeded"]:::succeeded\n'
        '    b["b: failed"]:::failed\n'
        '    d["d: succeeded"]:::succeeded\n'
        '    c["c: skipped"]:::skipped\n'
        "    a --> b\n"
        "    a --> d\n"
        "    b --> c\n"
        "    classDef succeeded fill:#d4edda,stroke:#555555\n"
        "    classDef failed fill:#f8d7da,stroke:#555555\n"
        "    classDef skipped fill:#e2e3e5,stroke:#555555\n"
    ) == out
    _, out, _ = invoke("graph", "f", "--runs-dir", str(runs_dir), "--dot")
    assert out.startswith("digraph fails {\n")
    assert '    b [label="b\\nfailed", style=filled, fillcolor="#f8d7da"];' in out.splitlines()
    assert "    b -> c;" in out.splitlines()


def test_graph_of_a_job_by_latest_and_by_prefix(runs_dir: Path) -> None:
    for job_id in ("demo-1", "other"):
        invoke("run", EXAMPLE, *OFFLINE, "--runs-dir", str(runs_dir), "--job-id", job_id)
    for reference in ("latest", "demo"):
        code, out, _ = invoke("graph", reference, "--runs-dir", str(runs_dir))
        assert 0 == code
        job = "other" if reference == "latest" else "demo-1"
        assert f"job {job}  pipeline app-builder  status succeeded" == out.splitlines()[0]
        assert "  reviewer   succeeded  <- architect, builder" == out.splitlines()[-1]


def test_graph_of_a_python_job_needs_no_importable_function(runs_dir: Path) -> None:
    run_dir = runs_dir / "py"
    run_dir.mkdir(parents=True)
    steps = {"load": {"fn": "nowhere.at_all:load"}, "use": {"fn": "x:y", "needs": ["load"]}}
    (run_dir / "pipeline.json").write_text(json.dumps({"name": "py", "steps": steps}))
    (run_dir / "events.jsonl").write_text("")
    code, out, _ = invoke("graph", "py", "--runs-dir", str(runs_dir), "--mermaid")
    assert 0 == code
    assert ['load["load: pending"]:::pending', "load --> use"] == [
        line.strip() for line in out.splitlines()[1:] if "load" in line
    ]


def test_names_mermaid_or_dot_could_misread_are_quoted() -> None:
    needs = {"fetch-data": [], "end": ["fetch-data"], "node": ["end"], "n2": []}
    # Mermaid: `fetch-data` and `end` get plain ids no step has (`n2` is a step's name).
    assert (
        "flowchart TD\n"
        '    n1["fetch-data"]\n'
        '    n2["n2"]\n'
        '    n2_["end"]\n'
        '    node["node"]\n'
        "    n1 --> n2_\n"
        "    n2_ --> node\n"
    ) == mermaid(needs)
    # dot: a name that is not an identifier, or is a keyword (`node`), is quoted.
    assert (
        "digraph pipeline {\n"
        "    node [shape=box];\n"
        '    "fetch-data";\n'
        "    n2;\n"
        "    end;\n"
        '    "node";\n'
        '    "fetch-data" -> end;\n'
        '    end -> "node";\n'
        "}\n"
    ) == dot(needs)
    assert dot({"a": []}, name='say "hi"\\').startswith('digraph "say \\"hi\\"\\\\" {')


@pytest.mark.parametrize("target", ["nope.toml", "ghost", "../x"])
def test_graph_of_nothing_known_is_one_line_exit_2(runs_dir: Path, target: str) -> None:
    code, out, err = invoke("graph", target, "--runs-dir", str(runs_dir))
    assert (2, "") == (code, out)
    assert f"runner: {target!r} is neither a pipeline file nor a job in {runs_dir}\n" == err


def test_graph_of_an_invalid_pipeline_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "p"\n[steps.a]\nprompt = "x"\nneeds = ["ghost"]\n')
    code, _, err = invoke("graph", str(bad))
    assert 2 == code
    assert 1 == len(err.splitlines())
    assert "steps.a.needs: unknown step 'ghost'" in err


def test_graph_of_a_job_with_a_broken_pipeline_json_is_one_line_exit_2(runs_dir: Path) -> None:
    run_dir = runs_dir / "j"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("")
    (run_dir / "pipeline.json").write_text('{"name": "p", "steps": {"a": {"needs": ["b"]}}}')
    code, _, err = invoke("graph", "j", "--runs-dir", str(runs_dir))
    assert 2 == code
    assert err.endswith("pipeline.json: cannot draw the job's steps (unknown step 'b' in needs)\n")
    (run_dir / "pipeline.json").unlink()
    code, _, err = invoke("graph", "j", "--runs-dir", str(runs_dir))
    assert 2 == code
    assert err.endswith("pipeline.json: cannot read the job's steps (No such file or directory)\n")
