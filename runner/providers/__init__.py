"""The provider registry: a name in a pipeline -> the class that talks to it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import ConfigError, PipelineError
from .base import LLMRequest, LLMResponse, Provider

__all__ = [
    "PROVIDER_NAMES",
    "LLMRequest",
    "LLMResponse",
    "Provider",
    "check_providers",
    "create_provider",
    "max_concurrency",
    "stream_setting",
]

# name -> "module:Class", imported on first use so the CLI starts fast.
_REGISTRY = {
    "fake": "runner.providers.fake:FakeProvider",
    "openai": "runner.providers.openai:OpenAIProvider",
    "anthropic": "runner.providers.anthropic:AnthropicProvider",
    "ollama": "runner.providers.ollama:OllamaProvider",
    "local": "runner.providers.local:LocalProvider",
}

PROVIDER_NAMES = tuple(_REGISTRY)


def create_provider(
    name: str, settings: Settings, config: Mapping[str, Any], *, job_dir: Path | None = None
) -> Provider:
    """Build the provider called `name`, with its `[providers.NAME]` table from the pipeline.

    Every provider class takes `(settings, config)`; `local` also takes the job's
    directory (for its server's log). The caller owns the result and must
    `await provider.aclose()`.
    """
    try:
        target = _REGISTRY[name]
    except KeyError:
        known = ", ".join(PROVIDER_NAMES)
        raise PipelineError(f"unknown provider {name!r} (known: {known})") from None
    cls = _provider_class(target)
    provider: Provider = (
        cls(settings, config, job_dir=job_dir) if name == "local" else cls(settings, config)
    )
    return provider


def max_concurrency(name: str, config: Mapping[str, Any]) -> int | None:
    """Calls in flight to provider `name` at once (None: no limit). `local` defaults to 1:
    its server has as many parallel slots, on this machine's CPU."""
    limit = config.get("max_concurrency")
    if isinstance(limit, int) and limit > 0:
        return limit
    return 1 if name == "local" else None


def stream_setting(name: str, config: Mapping[str, Any]) -> bool | str:
    """`stream` of `[providers.NAME]`: true, false or "auto". Unset, `local` streams
    (a small CPU may take longer than `PROVIDER_TIMEOUT_S` to write a whole answer, and
    the silence deadline hears each token of a stream); the others are "auto"."""
    setting: bool | str = config.get("stream", True if name == "local" else "auto")
    return setting


def check_providers(calls: Mapping[tuple[str, str], list[str]], settings: Settings) -> None:
    """Raise `ConfigError` when a job's calls could not be made, before anything runs.

    `calls` maps (provider, model) to the steps that call it. An official API needs its
    key; provider `local` needs its server package and each model's GGUF file.
    """
    by_provider: dict[str, list[str]] = {}
    for (name, _), steps in calls.items():
        by_provider.setdefault(name, []).extend(steps)
    check_api_keys(by_provider, settings)
    local = {model: steps for (name, model), steps in calls.items() if name == "local"}
    if local:
        from .local import check_local_models

        check_local_models(local)


def check_api_keys(steps_by_provider: Mapping[str, list[str]], settings: Settings) -> None:
    """Raise `ConfigError` when a provider's official API would be called without its key.

    The message names the variable and the steps that need it. A key is never
    needed for another address (a local or compatible server).
    """
    for name, steps in steps_by_provider.items():
        cls = _provider_class(_REGISTRY[name])
        variable = getattr(cls, "api_key_variable", None)
        if variable is None:
            continue
        base_url = getattr(settings, cls.base_url_setting)
        if urlsplit(base_url).hostname == cls.official_host and not getattr(
            settings, cls.api_key_setting
        ):
            raise ConfigError(
                f"{variable} is not set: step{'s' if len(steps) > 1 else ''}"
                f" {', '.join(steps)} call{'' if len(steps) > 1 else 's'} {name} at {base_url}"
                f" (set {variable} in the environment or .env)"
            )


def _provider_class(target: str) -> Any:
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
