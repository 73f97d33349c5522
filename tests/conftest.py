"""Shared fixtures: an isolated runs dir and settings that ignore the developer's environment."""

from __future__ import annotations

import os
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
    # Every setting runner reads, whatever its name: RUNNER_*, the providers', the breaker's.
    for name in list(os.environ):
        if name.startswith(_SETTING_PREFIXES) or name in _SETTINGS:
            monkeypatch.delenv(name, raising=False)


_SETTING_PREFIXES = ("RUNNER_", "OPENAI_", "ANTHROPIC_", "OLLAMA_", "CB_")
_SETTINGS = ("PROVIDER_TIMEOUT_S", "MAX_RETRIES")
