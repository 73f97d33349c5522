import re
from pathlib import Path

import pytest

from runner.config import Settings
from runner.errors import ConfigError

KEY = "sk-proj-Zx81vQ4mNcT7bLp0sEcReT"


def from_env(environ, tmp_path, dotenv=None):
    """Settings from exactly `environ` and, if given, a .env holding `dotenv`."""
    env_file = tmp_path / ".env"
    if dotenv is not None:
        env_file.write_text(dotenv, encoding="utf-8")
    return Settings.from_env(environ, env_file=env_file)


def test_defaults(tmp_path):
    expected = Settings(
        provider_timeout_s=60.0,
        max_retries=3,
        cb_threshold=5,
        cb_cooldown_s=30.0,
        runs_dir=Path("runs"),
        cache_dir=None,
        fsync="batch",
        openai_api_key=None,
        openai_base_url="https://api.openai.com/v1",
        anthropic_api_key=None,
        anthropic_base_url="https://api.anthropic.com",
        ollama_host="http://localhost:11434",
    )
    assert expected == from_env({}, tmp_path)
    assert expected == Settings.from_env({}, env_file=None)


def test_every_variable_is_read(tmp_path):
    environ = {
        "PROVIDER_TIMEOUT_S": "2.5",
        "MAX_RETRIES": "0",
        "CB_THRESHOLD": "2",
        "CB_COOLDOWN_S": "0.5",
        "RUNNER_RETRY_BASE_S": "0.1",
        "RUNNER_RETRY_CAP_S": "4",
        "RUNNER_RUNS_DIR": "/srv/runs",
        "RUNNER_CACHE_DIR": "cache",
        "RUNNER_FSYNC": "always",
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": "http://localhost:8080/v1/",
        "ANTHROPIC_API_KEY": "ak-123",
        "ANTHROPIC_BASE_URL": "https://proxy.example",
        "OLLAMA_HOST": "gpu-box:11434",
    }
    expected = Settings(
        provider_timeout_s=2.5,
        max_retries=0,
        cb_threshold=2,
        cb_cooldown_s=0.5,
        retry_base_s=0.1,
        retry_cap_s=4.0,
        runs_dir=Path("/srv/runs"),
        cache_dir=Path("cache"),
        fsync="always",
        openai_api_key=KEY,
        openai_base_url="http://localhost:8080/v1",
        anthropic_api_key="ak-123",
        anthropic_base_url="https://proxy.example",
        ollama_host="http://gpu-box:11434",
    )
    assert expected == from_env(environ, tmp_path)


def test_the_environment_wins_over_dotenv(tmp_path):
    settings = from_env(
        {"MAX_RETRIES": "7"}, tmp_path, "MAX_RETRIES=1\nCB_THRESHOLD=9\nRUNNER_FSYNC=never\n"
    )
    assert (7, 9, "never") == (settings.max_retries, settings.cb_threshold, settings.fsync)


def test_a_missing_dotenv_is_fine(tmp_path):
    assert Settings() == Settings.from_env({}, env_file=tmp_path / "nope.env")


def test_dotenv_parsing(tmp_path):
    dotenv = "\n".join(
        [
            "\ufeff# a comment first, after a BOM",
            "",
            "   ",
            "export MAX_RETRIES=4",
            "CB_THRESHOLD = 6 ",
            'OPENAI_API_KEY="sk-with # hash"',
            "ANTHROPIC_API_KEY='single quoted'",
            "RUNNER_RUNS_DIR=my runs  # where jobs go",
            'RUNNER_CACHE_DIR="quoted"  # a comment after quotes',
            "   # an indented comment",
            "RUNNER_FSYNC=never\r",
        ]
    )
    settings = from_env({}, tmp_path, dotenv)
    assert 4 == settings.max_retries
    assert 6 == settings.cb_threshold
    assert "sk-with # hash" == settings.openai_api_key
    assert "single quoted" == settings.anthropic_api_key
    assert Path("my runs") == settings.runs_dir
    assert Path("quoted") == settings.cache_dir
    assert "never" == settings.fsync


def test_an_empty_value_means_the_default(tmp_path):
    assert 3 == from_env({"MAX_RETRIES": ""}, tmp_path).max_retries
    assert 3 == from_env({}, tmp_path, "MAX_RETRIES=\n").max_retries


@pytest.mark.parametrize("value", ["0", "10"])
def test_max_retries_may_be_zero(tmp_path, value):
    assert int(value) == from_env({"MAX_RETRIES": value}, tmp_path).max_retries


BAD_VALUES = [
    ("PROVIDER_TIMEOUT_S", "abc", r"expected a positive number of seconds, got 'abc'"),
    ("PROVIDER_TIMEOUT_S", "-1", r"expected a positive number, got '-1'"),
    ("PROVIDER_TIMEOUT_S", "0", r"expected a positive number, got '0'"),
    ("PROVIDER_TIMEOUT_S", "inf", r"expected a positive number, got 'inf'"),
    ("PROVIDER_TIMEOUT_S", "nan", r"expected a positive number, got 'nan'"),
    ("CB_COOLDOWN_S", "-0.5", r"expected a positive number, got '-0\.5'"),
    ("MAX_RETRIES", "-1", r"expected a whole number >= 0, got '-1'"),
    ("MAX_RETRIES", "two", r"expected a whole number >= 0, got 'two'"),
    ("MAX_RETRIES", "1.5", r"expected a whole number >= 0, got '1\.5'"),
    ("CB_THRESHOLD", "0", r"expected a positive whole number, got '0'"),
    ("RUNNER_FSYNC", "sometimes", r"expected one of batch, always, never, got 'sometimes'"),
    ("OPENAI_BASE_URL", "ftp://x", r"expected an http:// or https:// URL"),
    ("OPENAI_BASE_URL", "localhost:8080/v1", r"expected an http:// or https:// URL"),
    ("OPENAI_BASE_URL", "http://[::1/v1", r"expected an http:// or https:// URL"),
    ("OPENAI_BASE_URL", "http://host:99999/v1", r"expected an http:// or https:// URL"),
    (
        "ANTHROPIC_BASE_URL",
        "https://api.anthropic.com/v1",
        r"expected the base URL without /v1 \(it is added per request\)",
    ),
    (
        "ANTHROPIC_BASE_URL",
        "https://api.anthropic.com/v1/",
        r"expected the base URL without /v1 \(it is added per request\)",
    ),
    ("OLLAMA_HOST", "http://localhost:11434/api", r"expected http://host:port with no path"),
    ("OLLAMA_HOST", "localhost:port", r"expected an http:// or https:// URL"),
    ("OLLAMA_HOST", "http://:11434", r"expected an http:// or https:// URL"),
]


@pytest.mark.parametrize(("name", "value", "expects"), BAD_VALUES)
def test_a_bad_environment_value_names_the_variable(tmp_path, name, value, expects):
    with pytest.raises(ConfigError, match=rf"^{name} \(environment\): {expects}$") as info:
        from_env({name: value}, tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "value", "expects"), BAD_VALUES)
def test_a_bad_dotenv_value_names_the_variable_and_the_file(tmp_path, name, value, expects):
    where = re.escape(str(tmp_path / ".env"))
    with pytest.raises(ConfigError, match=rf"^{name} \({where}\): {expects}$"):
        from_env({}, tmp_path, f"{name}={value}\n")


@pytest.mark.parametrize(("name", "value", "expects"), BAD_VALUES)
def test_a_bad_dotenv_value_the_environment_overrides_is_not_an_error(
    tmp_path, name, value, expects
):
    good = {
        "PROVIDER_TIMEOUT_S": "5",
        "CB_COOLDOWN_S": "5",
        "MAX_RETRIES": "5",
        "CB_THRESHOLD": "4",
        "RUNNER_FSYNC": "never",
        "OPENAI_BASE_URL": "http://localhost:8080/v1",
        "ANTHROPIC_BASE_URL": "http://localhost:8080",
        "OLLAMA_HOST": "http://localhost:8080",
    }
    expected = Settings.from_env({name: good[name]}, env_file=None)
    assert Settings() != expected
    assert expected == from_env({name: good[name]}, tmp_path, f"{name}={value}\n")


@pytest.mark.parametrize(
    ("line", "lineno"),
    [("MAX_RETRIES 3", 2), ("3=MAX_RETRIES", 2), ("=3", 2), ('KEY="unclosed', 2), ("A='x' y", 2)],
)
def test_a_malformed_dotenv_line_names_the_file_and_line(tmp_path, line, lineno):
    where = re.escape(f"{tmp_path / '.env'}:{lineno}")
    with pytest.raises(
        ConfigError, match=rf"^{where}: expected NAME=value( with matching quotes)?$"
    ):
        from_env({}, tmp_path, f"# settings\n{line}\nMAX_RETRIES=1\n")


def test_an_unreadable_dotenv_is_a_config_error(tmp_path):
    env_dir = tmp_path / "env-dir"
    env_dir.mkdir()
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(env_dir))}: cannot read \(IsADirectoryError\)$"
    ):
        Settings.from_env({}, env_file=env_dir)


# --- keys never leak ---------------------------------------------------------


def test_api_keys_are_not_in_the_repr(tmp_path):
    settings = from_env({"OPENAI_API_KEY": KEY}, tmp_path, "ANTHROPIC_API_KEY=ak-secret-42\n")
    assert KEY == settings.openai_api_key
    assert "ak-secret-42" == settings.anthropic_api_key
    assert KEY not in repr(settings)
    assert "ak-secret-42" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "expects"),
    [
        ("OPENAI_BASE_URL", KEY, r"expected an http:// or https:// URL"),
        ("OPENAI_BASE_URL", f"{KEY}\n", r"expected an http:// or https:// URL"),
        ("ANTHROPIC_BASE_URL", f"https://x/{KEY}/v1", r"expected the base URL without /v1 .*"),
        ("OLLAMA_HOST", f"{KEY}:{KEY}", r"expected an http:// or https:// URL"),
        ("OLLAMA_HOST", f"{KEY}/{KEY}", r"expected http://host:port with no path"),
        ("MAX_RETRIES", KEY, r"expected a whole number >= 0, got a 30-character value"),
        ("PROVIDER_TIMEOUT_S", KEY, r"expected a positive number of seconds, got a 30-char.*"),
        ("RUNNER_FSYNC", KEY, r"expected one of batch, always, never, got a 30-character value"),
    ],
)
def test_a_key_pasted_into_the_wrong_variable_is_not_echoed(tmp_path, name, value, expects):
    with pytest.raises(ConfigError, match=rf"^{name} \(environment\): {expects}$") as info:
        from_env({name: value}, tmp_path)
    assert KEY not in str(info.value)


def test_a_key_on_a_malformed_dotenv_line_is_not_echoed(tmp_path):
    with pytest.raises(ConfigError) as info:
        from_env({}, tmp_path, f"{KEY}\n")
    assert KEY not in str(info.value)
