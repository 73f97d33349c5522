"""The provider registry: a name in a pipeline -> the class that talks to it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
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
    "check_api_keys",
    "create_provider",
]

# name -> "module:Class", imported on first use so the CLI starts fast.
_REGISTRY = {
    "fake": "runner.providers.fake:FakeProvider",
    "openai": "runner.providers.openai:OpenAIProvider",
    "anthropic": "runner.providers.anthropic:AnthropicProvider",
    "ollama": "runner.providers.ollama:OllamaProvider",
}

PROVIDER_NAMES = tuple(_REGISTRY)


def create_provider(name: str, settings: Settings, config: Mapping[str, Any]) -> Provider:
    """Build the provider called `name`, with its `[providers.NAME]` table from the pipeline.

    Every provider class takes `(settings, config)`; the caller owns the
    result and must `await provider.aclose()`.
    """
    try:
        target = _REGISTRY[name]
    except KeyError:
        known = ", ".join(PROVIDER_NAMES)
        raise PipelineError(f"unknown provider {name!r} (known: {known})") from None
    provider: Provider = _provider_class(target)(settings, config)
    return provider


def check_api_keys(steps_by_provider: Mapping[str, list[str]], settings: Settings) -> None:
    """Raise `ConfigError` when a provider's official API would be called without its key.

    Checked before a job starts, so a missing key costs nothing: the message names the
    variable and the steps that need it. A key is never needed for another address
    (a local or compatible server).
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
