"""`runner graph PIPELINE_OR_JOB`: the DAG as text, Mermaid or Graphviz dot.

A pipeline file draws its steps; a job draws the steps of its `pipeline.json`, each
with its status from the job's log.
"""

from __future__ import annotations

from pathlib import Path

import click

from .._json import loads
from ..errors import PipelineError
from ..graph import dot, find_cycle, layers, mermaid
from ..job_state import fold_log
from ..pipeline_files import load_pipeline
from ..run_dir import RunDir, is_valid_job_id
from . import cli
from ._common import fail, job_id_of, runs_dir_option, runs_dir_or_default, styled_status

Needs = dict[str, tuple[str, ...]]


@cli.command()
@click.argument("target", metavar="PIPELINE_OR_JOB")
@runs_dir_option
@click.option("--mermaid", "form", flag_value="mermaid", help="A Mermaid flowchart.")
@click.option("--dot", "form", flag_value="dot", help="A Graphviz digraph.")
def graph(target: str, runs_dir: Path | None, form: str | None) -> None:
    """Draw a pipeline's or a job's DAG.

    PIPELINE_OR_JOB is a pipeline TOML file if that file exists, else a job: a job
    id, `latest`, or a unique prefix of a job id. Text by default: the steps layer by
    layer (layer 0 needs nothing), each with the steps it needs and, for a job,
    its status.
    """
    statuses: dict[str, str] | None = None
    if Path(target).is_file():
        try:
            pipeline = load_pipeline(target)
        except PipelineError as exc:
            fail(str(exc))
        needs, name, title = dict(pipeline.needs), pipeline.name, f"pipeline {pipeline.name}"
    else:
        runs = runs_dir_or_default(runs_dir)
        job_id = job_id_of(runs, target)
        if not is_valid_job_id(job_id) or not RunDir.of(runs, job_id).events_path.is_file():
            fail(f"{target!r} is neither a pipeline file nor a job in {runs}")
        run_dir = RunDir.of(runs, job_id)
        needs, name = _job_needs(run_dir)
        state = fold_log(run_dir.events_path, families=("job", "step"))
        status = state.display_status()
        statuses = {
            step: state.display_step_status(state.steps[step], status)
            if step in state.steps
            else "pending"
            for step in needs
        }
        title = f"job {job_id}  pipeline {name}  status {status}"
    if form == "mermaid":
        click.echo(mermaid(needs, statuses), nl=False)
    elif form == "dot":
        click.echo(dot(needs, statuses, name=name), nl=False)
    else:
        click.echo(title)
        _print_layers(needs, statuses)


def _print_layers(needs: Needs, statuses: dict[str, str] | None) -> None:
    """`layer N`, then one line per step: name, status (for a job), `<- needs`."""
    name_width = max(len(step) for step in needs)
    status_width = max((len(status) for status in (statuses or {}).values()), default=0)
    for number, layer in enumerate(layers(needs)):
        click.echo(f"layer {number}")
        for step in layer:
            line = "  " + step.ljust(name_width)
            if statuses is not None:
                line += "  " + styled_status(statuses[step], status_width)
            if needs[step]:
                line += "  <- " + ", ".join(needs[step])
            click.echo(line.rstrip())


def _job_needs(run_dir: RunDir) -> tuple[Needs, str]:
    """The steps and needs in a job's `pipeline.json`, and the pipeline's name.

    Read as data, not loaded as a pipeline: a Python step's function need not be
    importable to draw it.
    """
    path = run_dir.pipeline_path
    try:
        document = loads(path.read_bytes())
        name = str(document.get("name", ""))
        needs = {
            step: tuple(str(need) for need in (fields.get("needs") or ()))
            for step, fields in document["steps"].items()
        }
    except OSError as exc:
        fail(f"{path}: cannot read the job's steps ({exc.strerror or exc})")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        fail(f"{path}: cannot read the job's steps ({type(exc).__name__}: {exc})")
    unknown = sorted({need for deps in needs.values() for need in deps} - set(needs))
    cycle = find_cycle(needs)
    problem = None
    if not needs:
        problem = "no steps"
    elif unknown:
        problem = f"unknown step {unknown[0]!r} in needs"
    elif cycle:
        problem = f"cycle: {' -> '.join(cycle)}"
    if problem is not None:
        fail(f"{path}: cannot draw the job's steps ({problem})")
    return needs, name
