"""Settings: the environment first, then a `.env` file in the working directory, then defaults.

A bad value is a `ConfigError` naming the variable and what it expects. API
keys are kept out of every `repr()` so they cannot leak through logs or errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import attrs

from .errors import ConfigError

__all__ = ["FsyncPolicy", "Settings"]

_T = TypeVar("_T")

#: `RUNNER_FSYNC`: when writes wait for the disk (see `filestore`).
FsyncPolicy = Literal["batch", "always", "never"]
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("batch", "always", "never")


@attrs.frozen
class Settings:
    """Everything `runner` reads from the environment. Build with `Settings.from_env()`."""

    provider_timeout_s: float = 60.0
    attempt_cap_s: float | None = None
    max_retries: int = 3
    cb_threshold: int = 5
    cb_cooldown_s: float = 30.0
    retry_base_s: float = 0.5
    retry_cap_s: float = 30.0
    retry_after_max_s: float = 120.0
    runs_dir: Path = Path("runs")
    cache_dir: Path | None = None
    fsync: FsyncPolicy = "batch"
    openai_api_key: str | None = attrs.field(default=None, repr=False)
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_api_key: str | None = attrs.field(default=None, repr=False)
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    ollama_host: str = "http://localhost:11434"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        env_file: str | os.PathLike[str] | None = ".env",
    ) -> Settings:
        """Read settings; the environment wins over `env_file`, which wins over defaults.

        Only values actually used are validated, so a bad `.env` value that the
        environment overrides is not an error.
        """
        env = dict(os.environ if environ is None else environ)
        file_values = _read_env_file(Path(env_file)) if env_file is not None else {}
        source = {**file_values, **env}

        def get(name: str, parse: Callable[[str, str], _T], default: _T) -> _T:
            raw = source.get(name)
            if raw is None or raw.strip() == "":
                return default
            where = "environment" if name in env else str(env_file)
            try:
                return parse(name, raw.strip())
            except ConfigError as exc:
                raise ConfigError(f"{name} ({where}): {exc}") from None

        d = cls()
        return cls(
            provider_timeout_s=get("PROVIDER_TIMEOUT_S", _positive_float, d.provider_timeout_s),
            attempt_cap_s=get("PROVIDER_ATTEMPT_CAP_S", _positive_float, d.attempt_cap_s),
            max_retries=get("MAX_RETRIES", _non_negative_int, d.max_retries),
            cb_threshold=get("CB_THRESHOLD", _positive_int, d.cb_threshold),
            cb_cooldown_s=get("CB_COOLDOWN_S", _positive_float, d.cb_cooldown_s),
            retry_base_s=get("RUNNER_RETRY_BASE_S", _positive_float, d.retry_base_s),
            retry_cap_s=get("RUNNER_RETRY_CAP_S", _positive_float, d.retry_cap_s),
            retry_after_max_s=get("RUNNER_RETRY_AFTER_MAX_S", _positive_float, d.retry_after_max_s),
            runs_dir=get("RUNNER_RUNS_DIR", _path, d.runs_dir),
            cache_dir=get("RUNNER_CACHE_DIR", _path, d.cache_dir),
            fsync=get("RUNNER_FSYNC", _fsync_policy, d.fsync),
            openai_api_key=get("OPENAI_API_KEY", _text, None),
            openai_base_url=get("OPENAI_BASE_URL", _url, d.openai_base_url),
            anthropic_api_key=get("ANTHROPIC_API_KEY", _text, None),
            anthropic_base_url=get("ANTHROPIC_BASE_URL", _anthropic_url, d.anthropic_base_url),
            anthropic_version=get("ANTHROPIC_VERSION", _text, d.anthropic_version),
            ollama_host=get("OLLAMA_HOST", _ollama_host, d.ollama_host),
        )

    def evolve(self, **changes: Any) -> Settings:
        return attrs.evolve(self, **changes)


def _read_env_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # editors on Windows add a BOM
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"{path}:{lineno}: expected NAME=value")
        parsed = _env_value(value.strip())
        if parsed is None:
            raise ConfigError(f"{path}:{lineno}: expected NAME=value with matching quotes")
        values[name.strip()] = parsed
    return values


def _env_value(value: str) -> str | None:
    """`"a # b"` keeps its `#`; `a  # note` drops the comment, as dotenv and compose do."""
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        if end == -1:
            return None
        rest = value[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            return None
        return value[1:end]
    hash_at = value.find(" #")
    if hash_at == -1:
        hash_at = value.find("\t#")
    return value if hash_at == -1 else value[:hash_at].rstrip()


def _shown(raw: str) -> str:
    # A key pasted into the wrong variable must not leak through the error;
    # the short values people mistype (numbers, words) are still shown.
    return repr(raw) if len(raw) <= 16 else f"a {len(raw)}-character value"


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"expected a positive number of seconds, got {_shown(raw)}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"expected a positive number, got {_shown(raw)}")
    return value


def _int(raw: str, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"expected {what}, got {_shown(raw)}") from None


def _positive_int(name: str, raw: str) -> int:
    value = _int(raw, "a positive whole number")
    if value <= 0:
        raise ConfigError(f"expected a positive whole number, got {_shown(raw)}")
    return value


def _non_negative_int(name: str, raw: str) -> int:
    value = _int(raw, "a whole number >= 0")
    if value < 0:
        raise ConfigError(f"expected a whole number >= 0, got {_shown(raw)}")
    return value


def _path(name: str, raw: str) -> Path:
    if "\0" in raw:
        raise ConfigError("expected a path, got a value containing NUL")
    return Path(raw)


def _text(name: str, raw: str) -> str:
    return raw


def _fsync_policy(name: str, raw: str) -> FsyncPolicy:
    for policy in FSYNC_POLICIES:
        if raw == policy:
            return policy
    raise ConfigError(f"expected one of {', '.join(FSYNC_POLICIES)}, got {_shown(raw)}")


def _url(name: str, raw: str) -> str:
    # Never echo the value: a mistyped key pasted here must not leak.
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("expected an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def _anthropic_url(name: str, raw: str) -> str:
    url = _url(name, raw)
    if url.endswith("/v1"):
        raise ConfigError("expected the base URL without /v1 (it is added per request)")
    return url


def _ollama_host(name: str, raw: str) -> str:
    if "://" not in raw:
        raw = "http://" + raw
    url = _url(name, raw)
    if urlsplit(url).path not in ("", "/"):
        raise ConfigError("expected http://host:port with no path")
    return url
