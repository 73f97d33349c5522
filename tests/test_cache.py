"""The response cache: keys, sharing between jobs, corrupt entries, and the CLI's switches.

HTTP is real: the loopback LLM server counts every request, so "served from
the cache" means the server saw nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from helpers import events, fake_pipeline, invoke, of_type
from hypothesis import given
from hypothesis import strategies as st

from runner import Pipeline, Settings, Step, StepContext, StorageError, run_dag
from runner.cache import Cache, compute_cache_key
from runner.filestore import leftover_temp_files
from runner.providers.base import LLMRequest, LLMResponse
from runner.testing import FakeLLMServer, Reply, open_fake_llm_server

FAST = Settings(fsync="never")

# Every input of the key, as `compute_cache_key` takes them (request fields flattened).
BASE: dict[str, Any] = {
    "provider": "openai",
    "base_url": "http://127.0.0.1:8080/v1",
    "step": "architect",
    "pipeline_version": "1",
    "runner_version": "2.0.0",
    "model": "gpt-4o-mini",
    "system": "You are a careful architect.",
    "prompt": "Design a chess clock.",
    "temperature": 0.2,
    "top_p": 0.9,
    "max_tokens": 512,
    "stop": ("END",),
    "seed": 7,
    "options": {"presence_penalty": 0.5},
    "omit": ("stream_options",),
}
_REQUEST_FIELDS = (
    "model",
    "system",
    "prompt",
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "options",
    "omit",
)

# The same computation, in a fresh interpreter with its own hash seed.
_KEY_SCRIPT = """
import json, sys
from runner.cache import compute_cache_key
from runner.providers.base import LLMRequest
fields = json.loads(sys.argv[1])
fields["stop"] = tuple(fields["stop"])
request = LLMRequest(**{k: fields.pop(k) for k in json.loads(sys.argv[2])})
print(compute_cache_key(request=request, **fields))
"""


def key_of(fields: dict[str, Any]) -> str:
    fields = dict(fields)
    request = LLMRequest(**{k: fields.pop(k) for k in _REQUEST_FIELDS})
    return compute_cache_key(request=request, **fields)


def test_cache_key_deterministic() -> None:
    key = key_of(BASE)
    assert 64 == len(key)
    assert key == key_of(dict(BASE))
    # Options are compared by content, not by the order they were written in.
    assert key == key_of({**BASE, "options": dict(reversed(list(BASE["options"].items())))})
    # Integral temperatures are the same number whatever their type.
    assert key_of({**BASE, "temperature": 1}) == key_of({**BASE, "temperature": 1.0})
    # Not `stream` or `timeout_s`: the same answer arrives either way.
    request = LLMRequest(**{k: BASE[k] for k in _REQUEST_FIELDS})
    others = {k: v for k, v in BASE.items() if k not in _REQUEST_FIELDS}
    waited = attrs.evolve(request, stream=True, timeout_s=5.0)
    assert key == compute_cache_key(request=waited, **others)
    for seed in ("0", "12345"):
        done = subprocess.run(
            [sys.executable, "-c", _KEY_SCRIPT, json.dumps(BASE), json.dumps(_REQUEST_FIELDS)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert key == done.stdout.strip()


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_ALTERNATIVES: dict[str, st.SearchStrategy[Any]] = {
    "provider": st.sampled_from(["fake", "openai", "anthropic", "ollama"]),
    "base_url": _text,
    "step": _text,
    "pipeline_version": _text,
    "runner_version": _text,
    "model": _text,
    "system": st.none() | _text,
    "prompt": _text,
    # None is "unset": the model's own default, a value of its own.
    "temperature": st.none() | st.floats(min_value=0, max_value=2, allow_nan=False),
    "top_p": st.none() | st.floats(min_value=0, max_value=1, allow_nan=False),
    "max_tokens": st.none() | st.integers(min_value=1, max_value=1_000_000),
    "stop": st.lists(_text, max_size=3).map(tuple),
    "seed": st.none() | st.integers(),
    "options": st.dictionaries(
        _text, st.none() | st.booleans() | st.integers() | _text, max_size=3
    ),
    "omit": st.lists(_text, max_size=3, unique=True).map(tuple),
}


@given(data=st.data(), field=st.sampled_from(sorted(_ALTERNATIVES)))
def test_changing_any_field_changes_the_key(data: st.DataObject, field: str) -> None:
    value = data.draw(_ALTERNATIVES[field].filter(lambda v: v != BASE[field]), label=field)
    assert key_of(BASE) != key_of({**BASE, field: value})


def test_every_field_of_the_key_is_covered() -> None:
    # A new parameter of compute_cache_key or LLMRequest must join the property above,
    # unless it cannot change the answer: how it travels (stream), how long we wait
    # (timeout_s), or who asks (step, which is in the key by its own parameter).
    assert set(_ALTERNATIVES) == set(BASE)
    request_fields = {f.name for f in attrs.fields(LLMRequest)} - {"stream", "timeout_s", "step"}
    assert request_fields == set(_REQUEST_FIELDS)


# -- sharing a cache between jobs -----------------------------------------------------


def _loopback_pipeline() -> Pipeline:
    async def tally(ctx: StepContext) -> str:
        return str(len(ctx.outputs["review"]))

    return Pipeline(
        name="cached",
        defaults={"provider": "openai", "model": "m"},
        steps=[
            Step("design", prompt="design: a clock"),
            Step("build", prompt="build: {{ steps.design.output }}", needs=["design"]),
            Step("review", prompt="review: {{ steps.build.output }}", needs=["build"]),
            Step("tally", fn=tally, needs=["review"]),  # no LLM call: no cache event
        ],
    )


def _settings(server: FakeLLMServer) -> Settings:
    return Settings(openai_base_url=server.openai_base_url, max_retries=0)


def _cache_events(run_dir: Path) -> dict[str, list[tuple[str | None, str]]]:
    found: dict[str, list[tuple[str | None, str]]] = {"cache.hit": [], "cache.miss": []}
    for event in events(run_dir):
        if event["type"] in found:
            found[event["type"]].append((event.get("step"), event["data"]["key"]))
    return found


async def test_second_run_uses_cache(runs_dir: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "shared-cache"
    pipeline = _loopback_pipeline()
    async with open_fake_llm_server() as server:
        settings = _settings(server)
        first = await run_dag(
            pipeline,
            runs_dir=runs_dir,
            job_id="job-one-7f3a",
            cache_dir=cache_dir,
            settings=settings,
        )
        asked = len(server.requests)
        second = await run_dag(
            pipeline,
            runs_dir=runs_dir,
            job_id="job-two-7f3a",
            cache_dir=cache_dir,
            settings=settings,
        )
        assert ("succeeded", "succeeded", 3) == (first.status, second.status, asked)
        assert asked == len(server.requests)  # not one request from the second job

    misses, hits = _cache_events(first.run_dir)["cache.miss"], _cache_events(second.run_dir)
    assert [] == hits["cache.miss"]
    # The same keys in both jobs: the job id is not part of a key.
    assert misses == hits["cache.hit"]
    assert ["design", "build", "review"] == [step for step, _ in misses]
    assert [] == of_type(second.run_dir, "llm.request")
    succeeded = {e.get("step"): e.get("data") for e in of_type(second.run_dir, "step.succeeded")}
    assert {"design": True, "build": True, "review": True, "tally": False} == {
        step: data["cached"] for step, data in succeeded.items()
    }
    assert dict(first.outputs) == dict(second.outputs)
    # Entries live in the shared dir only, sharded by key, with no trace of either job.
    entries = sorted(cache_dir.rglob("*.json"))
    assert sorted(cache_dir / key[:2] / f"{key}.json" for _, key in misses) == entries
    assert not (first.run_dir / ".cache").exists()
    assert not any(b"job-" in entry.read_bytes() for entry in entries)
    assert [] == leftover_temp_files([cache_dir])


async def test_second_run_uses_cache_through_the_cli(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        'name = "p"\n[defaults]\nprovider = "openai"\nmodel = "m"\n'
        '[steps.a]\nprompt = "a: x"\n[steps.b]\nprompt = "b: {{ steps.a.output }}"\nneeds = ["a"]\n'
    )
    async with open_fake_llm_server() as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.openai_base_url}
        for job in ("one", "two"):
            command = ["run", str(toml), "--job-id", job, "--cache-dir", str(tmp_path / "shared")]
            done = await trio.run_process(
                [sys.executable, "-m", "runner", *command],
                cwd=tmp_path,
                env=env,
                check=False,
                capture_stdout=True,
                capture_stderr=True,
            )
            assert 0 == done.returncode, done.stderr.decode()
            assert 2 == len(server.requests)  # the second job asked nothing
    second = tmp_path / "runs" / "two"
    assert {"a", "b"} == {e.get("step") for e in of_type(second, "cache.hit")}
    assert [True, True] == [e["data"]["cached"] for e in of_type(second, "step.succeeded")]


# -- corrupt entries ------------------------------------------------------------------


def _truncate(entry: Path) -> None:
    raw = entry.read_bytes()
    entry.write_bytes(raw[: len(raw) // 2])


def _other_key(entry: Path) -> None:
    record = json.loads(entry.read_bytes())
    record["key"] = "0" * 64
    entry.write_text(json.dumps(record))


def _unknown_field(entry: Path) -> None:
    record = json.loads(entry.read_bytes())
    record["response"]["surprise"] = 1
    entry.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "corrupt",
    [
        _truncate,
        lambda entry: entry.write_bytes(b"\x00\xff\xfe\x80 not json at all \xc3\x28"),
        lambda entry: entry.write_bytes(b""),
        lambda entry: entry.write_text("[1, 2, 3]"),
        lambda entry: entry.write_text('{"format": 99}'),
        _other_key,
        _unknown_field,
    ],
    ids=["truncated", "garbage", "empty", "not-an-object", "other-format", "other-key", "field"],
)
async def test_a_corrupt_entry_is_a_warned_miss_and_is_replaced(
    runs_dir: Path, tmp_path: Path, corrupt: Callable[[Path], None]
) -> None:
    cache_dir = tmp_path / "cache"
    pipeline = Pipeline(
        name="c", defaults={"provider": "openai", "model": "m"}, steps=[Step("a", prompt="a: x")]
    )
    async with open_fake_llm_server() as server:
        settings = _settings(server)
        first = await run_dag(pipeline, runs_dir=runs_dir, cache_dir=cache_dir, settings=settings)
        [entry] = cache_dir.rglob("*.json")
        corrupt(entry)

        second = await run_dag(pipeline, runs_dir=runs_dir, cache_dir=cache_dir, settings=settings)

        assert "succeeded" == second.status
        assert 2 == len(server.requests)  # the provider was asked again
    [miss] = of_type(second.run_dir, "cache.miss")
    assert ("WARN", entry.stem) == (miss["level"], miss["data"]["key"])
    assert miss["data"]["reason"].startswith(("corrupt: ", "unreadable: "))
    assert 1 == len(of_type(second.run_dir, "llm.request"))
    # The entry is whole again and serves the next job.
    hit = await Cache(cache_dir).get(entry.stem)
    response = hit.response if hit is not None else None
    assert response is not None
    assert first.outputs["a"] == response.text
    assert [] == leftover_temp_files([cache_dir])


@pytest.mark.parametrize("fsync", ["never", "always"])  # written at once / on the thread
async def test_an_entry_that_cannot_be_replaced_does_not_fail_the_step(
    runs_dir: Path, tmp_path: Path, fsync: str
) -> None:
    cache_dir = tmp_path / "cache"
    pipeline = fake_pipeline([Step("a", prompt="a")])
    await run_dag(pipeline, runs_dir=runs_dir, cache_dir=cache_dir, settings=FAST)
    [entry] = cache_dir.rglob("*.json")
    entry.unlink()
    entry.mkdir()  # unreadable, and os.replace cannot put a file in its place

    again = await run_dag(
        pipeline, runs_dir=runs_dir, cache_dir=cache_dir, settings=Settings(fsync=fsync)
    )

    [miss] = of_type(again.run_dir, "cache.miss")
    assert ("WARN", "unreadable: Is a directory") == (miss["level"], miss["data"]["reason"])
    [error] = of_type(again.run_dir, "cache.error")
    assert "WARN" == error["level"]
    assert error["data"]["reason"].startswith("cannot write ")
    assert "succeeded" == again.status


async def test_a_reply_with_half_an_emoji_is_cached_and_written(runs_dir: Path) -> None:
    pipeline = Pipeline(
        name="s", defaults={"provider": "openai", "model": "m"}, steps=[Step("a", prompt="a: x")]
    )
    async with open_fake_llm_server() as server:
        server.script(Reply(text="half an emoji \ud83d"))  # sent as the JSON escape \ud83d
        result = await run_dag(pipeline, runs_dir=runs_dir, settings=_settings(server))
    assert "succeeded" == result.status
    assert "half an emoji \ufffd" == (result.run_dir / "outputs" / "a.txt").read_text()


async def test_cache_put_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path / "cache", fsync="never")
    key = "ab" + "0" * 62
    await cache.put(key, LLMResponse(text="first", model="m"))

    def refuse(src: Any, dst: Any, **dir_fds: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StorageError, match=r"^cannot write 'ab/ab0+\.json': No space left"):
        await cache.put(key, LLMResponse(text="second", model="m"))
    monkeypatch.undo()

    assert "first" == (await cache.get(key)).response.text  # type: ignore[union-attr]
    assert [] == leftover_temp_files([tmp_path])
    assert [tmp_path / "cache" / "ab" / f"{key}.json"] == list((tmp_path / "cache").rglob("*"))[1:]


# -- the CLI: --no-cache, --cache-dir and RUNNER_CACHE_DIR ----------------------------

TOML = 'name = "p"\n[steps.a]\nprompt = "a"\n[steps.b]\nprompt = "b"\nneeds = ["a"]\n'


def _types(run_dir: Path) -> list[str]:
    return [e["type"] for e in events(run_dir)]


def test_no_cache_neither_reads_nor_writes(runs_dir: Path, tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(TOML)
    shared = tmp_path / "shared"
    base = ["run", str(toml), "--runs-dir", str(runs_dir), "--cache-dir", str(shared)]
    assert 0 == invoke(*base, "--job-id", "warm")[0]
    entries = sorted(shared.rglob("*.json"))
    assert 2 == len(entries)

    assert 0 == invoke(*base, "--job-id", "cold", "--no-cache")[0]
    bare = ["run", str(toml), "--runs-dir", str(runs_dir), "--job-id", "bare", "--no-cache"]
    assert 0 == invoke(*bare)[0]

    for job in ("cold", "bare"):
        types = _types(runs_dir / job)
        # No cache at all: no cache event, every step calls the provider.
        assert [] == [t for t in types if t.startswith("cache.")]
        assert 2 == types.count("llm.request")
        succeeded = of_type(runs_dir / job, "step.succeeded")
        assert [False, False] == [e["data"]["cached"] for e in succeeded]
    assert entries == sorted(shared.rglob("*.json"))  # nothing written either
    assert not (runs_dir / "bare" / ".cache").exists()


def test_runner_cache_dir_from_the_environment(runs_dir: Path, tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(TOML)
    env = {"RUNNER_CACHE_DIR": str(tmp_path / "from-env")}
    base = ["run", str(toml), "--runs-dir", str(runs_dir)]
    assert 0 == invoke(*base, "--job-id", "one", env=env)[0]
    assert 0 == invoke(*base, "--job-id", "two", env=env)[0]

    assert 2 == len(list((tmp_path / "from-env").rglob("*.json")))
    assert ["a", "b"] == [e.get("step") for e in of_type(runs_dir / "two", "cache.hit")]
    assert [] == of_type(runs_dir / "two", "llm.request")
    assert not (runs_dir / "one" / ".cache").exists()
    # --cache-dir wins over the environment.
    flag = tmp_path / "from-flag"
    assert 0 == invoke(*base, "--job-id", "three", "--cache-dir", str(flag), env=env)[0]
    assert ["a", "b"] == [e.get("step") for e in of_type(runs_dir / "three", "cache.miss")]
    assert 2 == len(list(flag.rglob("*.json")))


def test_without_a_cache_dir_a_second_job_reuses_the_first_ones_entries(
    runs_dir: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(TOML)
    base = ["run", str(toml), "--runs-dir", str(runs_dir)]
    assert 0 == invoke(*base, "--job-id", "one")[0]
    assert 0 == invoke(*base, "--job-id", "two")[0]
    # Same keys: the second job finds them in the first job's cache...
    one, two = (_cache_events(runs_dir / job) for job in ("one", "two"))
    assert one["cache.miss"] == two["cache.hit"]
    assert [] == two["cache.miss"]
    assert ["one", "one"] == [e["data"]["from_job"] for e in of_type(runs_dir / "two", "cache.hit")]
    # ...and keeps its own copy: each job stays whole without the other.
    shutil.rmtree(runs_dir / "one")
    assert 0 == invoke(*base, "--job-id", "three")[0]
    assert ["two", "two"] == [
        e["data"]["from_job"] for e in of_type(runs_dir / "three", "cache.hit")
    ]


async def test_a_plain_second_run_makes_no_request(runs_dir: Path) -> None:
    pipeline = _loopback_pipeline()
    async with open_fake_llm_server() as server:
        settings = _settings(server)
        first = await run_dag(pipeline, runs_dir=runs_dir, settings=settings)
        asked = len(server.requests)
        second = await run_dag(pipeline, runs_dir=runs_dir, settings=settings)
        assert asked == len(server.requests)  # not one request from the second job
    assert first.outputs == second.outputs
    hits = of_type(second.run_dir, "cache.hit")
    assert [first.job_id] * asked == [e["data"]["from_job"] for e in hits]
    assert [] == of_type(second.run_dir, "llm.request")


async def test_the_newest_earlier_job_of_the_same_pipeline_serves_a_miss(
    runs_dir: Path, tmp_path: Path
) -> None:
    def answering(reply: str, name: str = "p") -> Pipeline:
        replies = {"fake": {"replies": {"a": reply}}}
        return Pipeline(name=name, steps=[Step("a", prompt="same")], providers=replies)

    settings = Settings()
    await run_dag(answering("old"), runs_dir=runs_dir, job_id="p-1", settings=settings)
    # Run apart (else they would reuse p-1's answer), then moved in: newer jobs with
    # the same key, since the fake provider's reply is not part of it.
    elsewhere = tmp_path / "elsewhere"
    await run_dag(answering("new"), runs_dir=elsewhere, job_id="p-2", settings=settings)
    await run_dag(answering("other", "q"), runs_dir=elsewhere, job_id="q-3", settings=settings)
    for job in ("p-2", "q-3"):
        (elsewhere / job).rename(runs_dir / job)

    third = await run_dag(answering("fresh"), runs_dir=runs_dir, job_id="p-4", settings=settings)
    assert "new" == third.outputs["a"]  # p-2 is newer than p-1; q-3 is another pipeline
    [hit] = of_type(third.run_dir, "cache.hit")
    assert "p-2" == hit["data"]["from_job"]
    # --cache-dir and --no-cache keep their meaning: no look at other jobs.
    shared = await run_dag(
        answering("fresh"), runs_dir=runs_dir, cache_dir=tmp_path / "c", settings=settings
    )
    assert "fresh" == shared.outputs["a"]
    bare = await run_dag(answering("fresh"), runs_dir=runs_dir, use_cache=False, settings=settings)
    assert "fresh" == bare.outputs["a"]


async def test_a_corrupt_entry_in_an_earlier_job_is_a_plain_miss(runs_dir: Path) -> None:
    pipeline = Pipeline(name="p", steps=[Step("a", prompt="x")])
    first = await run_dag(pipeline, runs_dir=runs_dir, job_id="p-1", settings=Settings())
    [entry] = (first.run_dir / ".cache").rglob("*.json")
    entry.write_bytes(b"{not json")

    second = await run_dag(pipeline, runs_dir=runs_dir, job_id="p-2", settings=Settings())

    assert "succeeded" == second.status
    [miss] = of_type(second.run_dir, "cache.miss")
    assert ("INFO", False) == (miss["level"], "reason" in miss["data"])  # not ours to report
    assert 1 == len(of_type(second.run_dir, "llm.request"))
