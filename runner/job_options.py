"""`JobOptions`: how to run a job, one definition for `run_dag`, `open_job`, CLI, supervisor."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from .config import Settings

__all__ = ["JobOptions"]


def _optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


@attrs.frozen(kw_only=True)
class JobOptions:
    """How to run a job. `run_dag(pipeline, **options)` takes the same names as keywords.

    - `inputs`: values for the pipeline's `[inputs]` (defaults fill the rest).
    - `job_id`: the job's directory name under `runs_dir` (default: a new id).
    - `runs_dir`: where jobs live (default: the settings' `RUNNER_RUNS_DIR`).
    - `resume`: continue the job `job_id` instead of starting one.
    - `settings`: default `Settings.from_env()`.
    - `concurrency`: at most this many steps in flight (default: no limit).
    - `fail_fast`: cancel the other steps at the first failure.
    - `cache_dir`: one cache shared by jobs (default: each job's own `.cache/`).
    - `use_cache`: False bypasses the cache.
    """

    inputs: Mapping[str, str] | None = None
    job_id: str | None = None
    runs_dir: Path | None = attrs.field(default=None, converter=_optional_path)
    resume: bool = False
    settings: Settings | None = None
    concurrency: int | None = None
    fail_fast: bool = False
    cache_dir: Path | None = attrs.field(default=None, converter=_optional_path)
    use_cache: bool = True
