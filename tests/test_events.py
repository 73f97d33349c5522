from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from runner import Event, EventEmitter, RunnerError, read_events
from runner.event_writer import EventWriter
from runner.events import EVENT_TYPES, TornLineWarning, event_line, make_event, matches_type

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def test_event_json_has_keys_in_contract_order() -> None:
    event = make_event("j", "step.started", step="a", data={"x": 1}, level="INFO")
    assert ["ts", "level", "job_id", "type", "step", "data"] == list(json.loads(event_line(event)))


def test_event_json_omits_absent_step_and_data() -> None:
    event = make_event("j", "job.started")
    assert ["ts", "level", "job_id", "type"] == list(json.loads(event_line(event)))


def test_an_event_is_a_plain_dict_read_back_as_written(tmp_path: Path) -> None:
    event = make_event("j", "step.failed", step="a", data={"error": "E", "message": "m"})
    assert type(event) is dict
    (tmp_path / "events.jsonl").write_bytes(event_line(event))
    assert [event] == list(read_events(tmp_path / "events.jsonl"))


def test_make_event_fills_utc_microsecond_timestamp_and_default_level() -> None:
    event = make_event("j", "llm.retry", step="a")
    assert TS.match(event["ts"])
    assert "WARN" == event["level"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "step.exploded"}, r"^unknown event type 'step.exploded'$"),
        ({"type": "step.started", "level": "DEBUG"}, r"^unknown event level 'DEBUG' .*$"),
    ],
)
def test_make_event_validates_type_and_level(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(RunnerError, match=message):
        make_event("j", **kwargs)


def test_every_type_in_the_design_table_is_known() -> None:
    expected = {
        "job.started", "job.finished", "step.started", "step.succeeded", "step.failed",
        "step.skipped", "llm.request", "llm.response", "llm.retry", "breaker.opened",
        "breaker.half_open", "breaker.closed", "cache.hit", "cache.miss", "file.written",
    }  # fmt: skip
    # Additions: a response that could not be stored; a warning about a provider's answers.
    assert expected | {"cache.error", "llm.warning", "provider.started", "provider.failed"} == set(
        EVENT_TYPES
    )


def test_matches_type_family() -> None:
    event = make_event("j", "llm.retry")
    assert matches_type(event, "llm")
    assert matches_type(event, "llm.retry")
    assert not matches_type(event, "ll")
    assert not matches_type(event, "llm.request")


async def _write(path: Path, events: list[tuple[str, str | None]]) -> list[Event]:
    send_channel, receive_channel = trio.open_memory_channel[Event](4)
    writer = EventWriter(path, fsync=True)
    emitter = EventEmitter("job-1", send_channel)
    sent = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run, receive_channel)
        for type_, step in events:
            sent.append(await emitter.emit(type_, step=step))
        await emitter.aclose()
    return sent


async def test_writer_writes_every_event_in_order_as_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sent = await _write(
        path, [("job.started", None)] + [("step.started", f"s{i}") for i in range(50)]
    )
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    assert sent == list(read_events(path))


async def test_writer_fans_out_to_subscribers_and_closes_them(tmp_path: Path) -> None:
    send_channel, receive_channel = trio.open_memory_channel[Event](4)
    sub_send, sub_receive = trio.open_memory_channel[Event](100)
    writer = EventWriter(tmp_path / "events.jsonl", fsync=False)
    writer.subscribe(sub_send)
    emitter = EventEmitter("job-1", send_channel)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run, receive_channel)
        first = await emitter.job_started(pipeline="p")
        second = await emitter.step_started("a")
        await emitter.aclose()
    assert [first, second] == [event async for event in sub_receive]


async def test_writer_cuts_a_torn_tail_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    await _write(path, [("job.started", None)])
    with open(path, "ab") as file:
        file.write(b'{"ts":"2026-11-24T0')  # a crash mid-line
    await _write(path, [("job.started", None)])
    assert ["job.started", "job.started"] == [e["type"] for e in read_events(path)]


async def test_wait_written_returns_once_the_writer_caught_up(tmp_path: Path) -> None:
    seen: list[str] = []
    send_channel, receive_channel = trio.open_memory_channel[Event](100)
    writer = EventWriter(
        tmp_path / "events.jsonl", fsync=False, on_event=lambda e: seen.append(e["type"])
    )
    emitter = EventEmitter("job-1", send_channel)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run, receive_channel)
        for _ in range(10):
            await emitter.step_started("a")
        await writer.wait_written(emitter.sent)
        assert 10 == len(seen)
        await emitter.aclose()


def _valid_log(n: int) -> bytes:
    return b"".join(
        event_line(make_event("j", "step.started", step=f"s{i}", data={"text": 'é\n"x"' * i}))
        for i in range(n)
    )


def test_read_events_skips_a_torn_last_line_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(_valid_log(3) + b'{"ts": "2026')
    with pytest.warns(TornLineWarning):
        assert ["s0", "s1", "s2"] == [e.get("step") for e in read_events(path)]


def test_read_events_skips_a_complete_line_without_its_newline(tmp_path: Path) -> None:
    # A line is written with its newline in one write(): no newline means torn.
    path = tmp_path / "events.jsonl"
    path.write_bytes(_valid_log(2).rstrip(b"\n"))
    with pytest.warns(TornLineWarning):
        assert ["s0"] == [e.get("step") for e in read_events(path)]


@given(cut=st.integers(min_value=0, max_value=2000))
def test_read_events_on_any_truncation_yields_a_prefix(
    tmp_path_factory: pytest.TempPathFactory, cut: int
) -> None:
    log = _valid_log(8)
    cut = min(cut, len(log))
    path = tmp_path_factory.mktemp("trunc") / "events.jsonl"
    path.write_bytes(log[:cut])
    complete_lines = log[:cut].count(b"\n")
    with pytest.warns(TornLineWarning) if not log[:cut].endswith(b"\n") and cut else _no_warning():
        got = [e.get("step") for e in read_events(path)]
    assert [f"s{i}" for i in range(complete_lines)] == got


class _no_warning:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_fsyncs_are_rate_limited_and_the_last_event_is_always_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_at: list[int] = []  # events written when each fsync ran
    writer = EventWriter(tmp_path / "events.jsonl", fsync=True)
    original = EventWriter._sync

    def counting(self: EventWriter, fd: int) -> None:
        synced_at.append(self.events_written)
        original(self, fd)

    monkeypatch.setattr(EventWriter, "_sync", counting)
    send_channel, receive_channel = trio.open_memory_channel[Event](4)
    emitter = EventEmitter("job-1", send_channel)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run, receive_channel)
        start = trio.current_time()
        for i in range(200):
            await emitter.step_succeeded(f"s{i}")  # a durable point each
            await trio.lowlevel.checkpoint()  # separate batches
        elapsed = trio.current_time() - start
        await emitter.job_finished("succeeded")
        await emitter.aclose()
    # One hop per 50 ms window at most, not one per step end...
    assert len(synced_at) <= 2 + elapsed / 0.05
    # ...and whatever the timing, the log is durable up to its last event.
    assert 201 == synced_at[-1]


def test_an_event_holding_half_a_surrogate_pair_is_still_one_valid_line(tmp_path: Path) -> None:
    event = make_event("j", "step.failed", step="a", data={"message": "cut mid-emoji \ud83d"})
    line = event_line(event)
    assert line.endswith(b"\n")
    assert 1 == line.count(b"\n")
    line.decode("utf-8")  # valid UTF-8: the surrogate is escaped, not written raw
    path = tmp_path / "events.jsonl"
    path.write_bytes(line)
    assert [event] == list(read_events(path))
