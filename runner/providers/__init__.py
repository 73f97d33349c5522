"""The provider registry: a name in a pipeline -> the class that talks to it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..config import Settings
from ..errors import PipelineError
from .base import LLMRequest, LLMResponse, Provider

__all__ = ["PROVIDER_NAMES", "LLMRequest", "LLMResponse", "Provider", "create_provider"]

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
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Provider = cls(settings, config)
    return provider
