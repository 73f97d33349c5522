"""Shared fixtures: an isolated runs dir and settings that ignore the developer's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import Settings


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def settings() -> Settings:
    # Built from defaults, never from os.environ or a stray .env.
    return Settings()


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests run in a fresh directory with no provider settings from the developer's shell.
    monkeypatch.chdir(tmp_path)
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "OLLAMA_HOST",
        "RUNNER_RUNS_DIR",
        "RUNNER_CACHE_DIR",
        "PROVIDER_TIMEOUT_S",
        "MAX_RETRIES",
        "CB_THRESHOLD",
        "CB_COOLDOWN_S",
        "RUNNER_FSYNC",
    ):
        monkeypatch.delenv(name, raising=False)
