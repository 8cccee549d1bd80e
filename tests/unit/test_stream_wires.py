"""Streamed model answers, piece by piece: the SSE decoder, both wires' streams, both transports
against the fake model's streaming (and its faults), and the publisher's buffering on Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as redis_lib

from legato.errors import PermanentError, TransientError
from legato.events import Delta, RunFinished, StepStarted, parse, read
from legato.keys import Keys
from legato.local.fake_model import start_in_thread
from legato.lua import Trips
from legato.models import anthropic, openai_compat
from legato.models.config import ModelConfig
from legato.models.sse import SseDecoder, data_json
from legato.models.transport import HttpxTransport, LoopTransport
from legato.publisher import EVENTS, Publisher, StepStream

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


def sse(*payloads: Any) -> bytes:
    return b"".join(b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode())
                    + b"\n\n" for p in payloads)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_sse_decoder_reads_the_same_events_whatever_the_pieces() -> None:
    body = "event: a\ndata: {\"x\": \"héllo\"}\n\n: a comment\ndata: one\ndata: two\n\n".encode()
    whole = SseDecoder().feed(body)
    decoder = SseDecoder()
    pieces = [e for i in range(len(body)) for e in decoder.feed(body[i:i + 1])]
    assert whole == pieces == [("a", '{"x": "héllo"}'), ("message", "one\ntwo")]


def mock(body: bytes, status: int = 200, *, whole: bool = False) -> httpx.Client:
    """A server that sends each event as a network read of its own (as a paced provider
    does), or the whole body at once."""
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        reads = [body] if whole else [e + b"\n\n" for e in body.split(b"\n\n") if e]
        return httpx.Response(status, content=iter(reads),
                              headers={"content-type": "text/event-stream"})
    return httpx.Client(transport=httpx.MockTransport(handler))


CFG = ModelConfig(base_url="http://model.test/v1", model="m")


def test_an_openai_stream_hands_out_each_piece_and_joins_them_into_the_answer() -> None:
    body = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
               chunk({"content": "lo"}), chunk({}, "stop"),
               {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}, b"[DONE]")
    pieces: list[str] = []
    done = openai_compat.post(mock(body), CFG, [{"role": "user", "content": "hi"}],
                              on_delta=pieces.append)
    assert pieces == ["Hel", "lo"] and done.text == "Hello"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, 2)
    assert done.finish_reason == "stop"
    # Events that arrive in one read are handed out as one piece (one publish, not one each).
    pieces.clear()
    again = openai_compat.post(mock(body, whole=True), CFG, [{"role": "user", "content": "hi"}],
                               on_delta=pieces.append)
    assert pieces == ["Hello"] and again.text == "Hello"


def test_an_openai_stream_without_usage_counts_a_token_a_chunk() -> None:
    body = sse(chunk({"content": "a"}), chunk({"content": "b"}), chunk({}, "stop"), b"[DONE]")
    done = openai_compat.post(mock(body), CFG, [{"role": "user", "content": "hi"}],
                              on_delta=lambda _: None)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.calls) == (0, 2, 1)


def test_a_server_that_ignores_stream_true_is_read_whole() -> None:
    body = json.dumps({"choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
    pieces: list[str] = []
    done = openai_compat.post(mock(body), CFG, [{"role": "user", "content": "hi"}],
                              on_delta=pieces.append)
    assert pieces == ["Hello"] and done.text == "Hello" and done.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 1)
    with pytest.raises(TransientError, match="ended before its end"):  # not JSON, not a stream
        openai_compat.post(mock(b"<html>busy</html>"), CFG, [{"role": "user", "content": "hi"}],
                           on_delta=pieces.append)


def test_an_openai_stream_puts_tool_call_fragments_together() -> None:
    body = sse(chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {
        "name": "search", "arguments": '{"q": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}),
        chunk({}, "tool_calls"), b"[DONE]")
    done = openai_compat.post(mock(body), CFG, [{"role": "user", "content": "hi"}],
                              on_delta=lambda _: None)
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == [("c1", "search",
                                                                         {"q": "x"})]


@pytest.mark.parametrize("body, says", [
    (sse(chunk({"content": "Hel"})), "ended before its end"),
    (sse(chunk({"content": "Hel"})) + b"data: {\"choices\": [\n\n", "malformed"),
    (sse({"error": {"message": "overloaded"}}), "overloaded"),
])
def test_a_broken_openai_stream_is_transient(body: bytes, says: str) -> None:
    with pytest.raises(TransientError, match=says):
        openai_compat.post(mock(body), CFG, [{"role": "user", "content": "hi"}],
                           on_delta=lambda _: None)


def test_a_refused_streamed_request_is_mapped_as_ever() -> None:
    client = mock(json.dumps({"error": {"message": "bad key"}}).encode(), status=401)
    with pytest.raises(PermanentError, match="HTTP 401"):
        openai_compat.post(client, CFG, [{"role": "user", "content": "hi"}],
                           on_delta=lambda _: None)


ANTHROPIC = ModelConfig(base_url="http://model.test/v1", model="claude", protocol="anthropic")


def anthropic_events(*blocks: tuple[dict[str, Any], list[dict[str, Any]]]) -> bytes:
    events: list[Any] = [{"type": "message_start", "message": {"usage": {"input_tokens": 5}}}]
    for i, (start, deltas) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": i, "content_block": start})
        events += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": i})
    events += [{"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 3}}, {"type": "message_stop"}]
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode()
                    + b"\n\n" for e in events)


def test_an_anthropic_stream_gives_its_text_deltas() -> None:
    body = anthropic_events(({"type": "text", "text": ""},
                             [{"type": "text_delta", "text": "Hi "},
                              {"type": "text_delta", "text": "there"}]))
    pieces: list[str] = []
    done = anthropic.post(mock(body), ANTHROPIC, [{"role": "user", "content": "hi"}],
                          on_delta=pieces.append)
    assert pieces == ["Hi ", "there"] and done.text == "Hi there"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (5, 3)
    assert done.finish_reason == "end_turn"


def test_an_anthropic_schema_answer_streams_the_answer_tools_json() -> None:
    body = anthropic_events(({"type": "tool_use", "id": "t", "name": "answer", "input": {}},
                             [{"type": "input_json_delta", "partial_json": '{"label"'},
                              {"type": "input_json_delta", "partial_json": ': "ok"}'}]))
    pieces: list[str] = []
    done = anthropic.post(mock(body), ANTHROPIC, [{"role": "user", "content": "hi"}],
                          schema=SCHEMA, on_delta=pieces.append)
    assert "".join(pieces) == done.text and json.loads(done.text) == {"label": "ok"}
    assert done.tool_calls == ()


def test_an_anthropic_error_event_or_a_cut_stream_is_transient() -> None:
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", ' \
            b'"message": "busy"}}\n\n'
    with pytest.raises(TransientError, match="overloaded_error"):
        anthropic.post(mock(error), ANTHROPIC, [{"role": "user", "content": "hi"}],
                       on_delta=lambda _: None)
    cut = anthropic_events(({"type": "text", "text": ""}, []))
    cut = cut[:cut.index(b"event: message_stop")]
    with pytest.raises(TransientError, match="ended before its end"):
        anthropic.post(mock(cut), ANTHROPIC, [{"role": "user", "content": "hi"}],
                       on_delta=lambda _: None)


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "aiohttp":
        loop = LoopTransport(max_connections=8, timeout=5)
        yield loop
        loop.close()
    else:
        with httpx.Client(timeout=5) as client:
            yield HttpxTransport(client)


@pytest.fixture
def fake_url() -> Iterator[Any]:
    servers: list[Any] = []

    def start(script: dict[str, Any]) -> str:
        servers.append(start_in_thread(script))
        return str(servers[-1].url)

    yield start
    for server in servers:
        server.stop()


def test_both_transports_stream_the_fake_models_answer(transport: Any, fake_url: Any) -> None:
    cfg = ModelConfig(base_url=fake_url({"chunk_chars": 4}), model="fake-model")
    pieces: list[str] = []
    done = openai_compat.post(transport, cfg, [{"role": "user", "content": "stream this"}],
                              on_delta=pieces.append)
    plain = openai_compat.post(transport, cfg, [{"role": "user", "content": "stream this"}])
    assert done.text == plain.text == "[fake:fake-model] stream this"
    # A piece a network read: at most one an event (the fake writes them all at once).
    assert 1 <= len(pieces) <= len(done.text) // 4 + 1 and "".join(pieces) == done.text
    assert done.usage == plain.usage


def test_both_transports_turn_a_cut_stream_into_a_transient_error(transport: Any,
                                                                   fake_url: Any) -> None:
    url = fake_url({"chunk_chars": 2, "faults": [{"kind": "stream_drop", "after": 3}]})
    cfg = ModelConfig(base_url=url, model="fake-model")
    pieces: list[str] = []
    with pytest.raises(TransientError, match="cut off|ended before its end"):
        openai_compat.post(transport, cfg, [{"role": "user", "content": "cut this short"}],
                           on_delta=pieces.append)
    assert "".join(pieces) == "[fak"  # the role event, then two pieces, then the cut


def test_the_fake_models_stream_faults_are_checked_and_only_meet_streams(fake_url: Any) -> None:
    url = fake_url({"faults": [{"kind": "stream_malformed", "after": 1}]})
    cfg = ModelConfig(base_url=url, model="fake-model")
    with httpx.Client(timeout=5) as client:
        assert openai_compat.post(client, cfg, [{"role": "user", "content": "x"}]).text
        with pytest.raises(TransientError, match="malformed"):
            openai_compat.post(client, cfg, [{"role": "user", "content": "x"}],
                               on_delta=lambda _: None)
    from legato.local.fake_model import validate_script
    with pytest.raises(ValueError, match=r"faults\[0\]\.after: expected an integer"):
        validate_script({"faults": [{"kind": "stream_drop", "after": "3"}]})


@pytest.mark.parametrize("data", ['{"a": [1, "é"]}', ' {"a":1}\r\n', '"x"', "[DONE]", '{"a":',
                                  '{"a":1} x', '{"a":1}{"b":2}', "", "\x0b{}"])
def test_an_events_data_reads_as_json_loads_reads_it(data: str) -> None:
    try:
        expected: Any = json.loads(data)
    except ValueError:
        with pytest.raises(json.JSONDecodeError):
            data_json(data)
        return
    assert data_json(data) == expected


@pytest.fixture
def client(redis_server: Any) -> Any:
    return redis_lib.Redis.from_url(redis_server.url, decode_responses=True)


def test_the_publisher_merges_a_calls_deltas_and_writes_a_steps_end_with_it(client: Any) -> None:
    keys = Keys(f"t{id(client)}")
    publisher = Publisher(client, keys, flush_seconds=60)  # only explicit writes here
    stream = StepStream(publisher, "r1", "a", 1)
    stream.started()
    with stream.answer():
        call = stream.call("m")
        for piece in ("He", "ll", "o"):
            call.delta(piece)
        call.answered()
    with publisher.ending("r1", [stream.finished("succeeded", None)]) as before:
        pipe = client.pipeline(transaction=False)
        before(pipe)
        pipe.execute()

    entries = [parse(i, f) for i, f in client.xrange(keys.events("r1"))]
    assert [e.type for e in entries] == ["step_started", "attempt_started", "delta",
                                         "attempt_committed", "step_finished"]
    assert isinstance(entries[2], Delta) and entries[2].text == "Hello"
    assert isinstance(entries[0], StepStarted) and entries[0].attempt == 1
    walked = list(read(client, keys, "r1", finished=lambda: "succeeded", block_ms=10))
    assert [e.id for e in walked[:-1]] == [e.id for e in entries]
    assert isinstance(walked[-1], RunFinished) and walked[-1].status == "succeeded"
    publisher.close()


def test_the_publisher_thread_writes_what_piled_up(client: Any) -> None:
    keys = Keys(f"u{id(client)}")
    publisher = Publisher(client, keys, flush_seconds=0.01, maxlen=50)
    stream = StepStream(publisher, "r2", "b", 1)
    for i in range(200):
        stream.call("m").delta(f"{i} ")
    publisher.close()
    assert 50 <= client.xlen(keys.events("r2")) < 400  # bounded: MAXLEN ~ trims whole nodes


def test_a_handed_off_end_takes_only_its_steps_events_as_one_part(client: Any) -> None:
    keys = Keys(f"h{id(client)}")
    publisher = Publisher(client, keys, flush_seconds=60)  # only explicit writes here
    mine, other = StepStream(publisher, "r3", "a", 2), StepStream(publisher, "r3", "b", 1)
    mine.started()
    other.started()
    with mine.answer():
        call = mine.call("m")
        call.delta("héllo\n")
        call.delta("wörld")
        call.answered()
    other.call("m").delta("still going")
    part = mine.ending_part("succeeded", None)
    assert client.xlen(keys.events("r3")) == 0  # a part: written with the round trip it rides

    Trips(client, {"events": EVENTS})([part])
    entries = [parse(i, f) for i, f in client.xrange(keys.events("r3"))]
    assert [(e.type, e.path) for e in entries] == [  # type: ignore[union-attr]
        ("step_started", "a"), ("attempt_started", "a"), ("delta", "a"),
        ("attempt_committed", "a"), ("step_finished", "a")]
    assert isinstance(entries[2], Delta) and entries[2].text == "héllo\nwörld"
    assert all(e.attempt == 2 for e in entries)  # type: ignore[union-attr]
    publisher.flush()  # the other step's events stayed buffered, and follow in order
    rest = [parse(i, f) for i, f in client.xrange(keys.events("r3"))][5:]
    assert [(e.type, e.path) for e in rest] == [  # type: ignore[union-attr]
        ("step_started", "b"), ("attempt_started", "b"), ("delta", "b")]
    publisher.close()
