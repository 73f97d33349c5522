"""The example pipeline end to end, compared with committed golden files.

Regenerate after an intended change with:

    RUNNER_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py

then review `git diff tests/golden/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import runner
from runner import Settings, load_pipeline, read_events, run_dag

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden" / "app_builder"
REGEN = os.environ.get("RUNNER_REGEN_GOLDEN") == "1"


def _event_lines(run_dir: Path) -> str:
    # Timestamps, durations, latencies, pids and hosts vary; the sequence and the rest do not.
    varying = {"duration_s", "latency_s", "pid", "host"}
    lines = []
    for event in read_events(run_dir / "events.jsonl"):
        data = {k: ("*" if k in varying else v) for k, v in (event.get("data") or {}).items()}
        lines.append(
            json.dumps([event["level"], event["type"], event.get("step"), data], sort_keys=True)
        )
    return "\n".join(lines) + "\n"


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    snapshot = {"events.txt": _event_lines(run_dir).encode()}
    snapshot["manifest.json"] = (run_dir / "manifest.json").read_bytes()
    for sub in ("files", "outputs"):
        for path in sorted((run_dir / sub).rglob("*")):
            if path.is_file():
                snapshot[str(path.relative_to(run_dir))] = path.read_bytes()
    return snapshot


async def test_app_builder_matches_golden(runs_dir: Path) -> None:
    # The example's scripted, offline version: what `--provider fake` runs.
    pipeline = load_pipeline(ROOT / "examples" / "app_builder.toml").with_overrides(provider="fake")
    result = await run_dag(pipeline, runs_dir=runs_dir, job_id="golden", settings=Settings())
    assert "succeeded" == result.status
    actual = _snapshot(result.run_dir)
    # The runner version is in the manifest and the events: a version bump is an intended change.
    assert runner.__version__ == json.loads(actual["manifest.json"])["runner_version"]
    if REGEN:
        for name, data in actual.items():
            target = GOLDEN / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    expected = {
        str(path.relative_to(GOLDEN)): path.read_bytes()
        for path in sorted(GOLDEN.rglob("*"))
        if path.is_file()
    }
    assert sorted(expected) == sorted(actual)
    for name in expected:
        assert expected[name] == actual[name], (
            f"{name} differs from tests/golden/app_builder/{name}"
        )
