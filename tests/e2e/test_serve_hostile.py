"""`llmft serve` against hostile and careless clients on a loopback port: every case gets a clear OpenAI-style
answer (or a clean close), the server keeps answering normal requests afterwards, nothing logs a traceback, and
a client that goes away cancels its generation.

Raw bytes go through `http.client` and sockets (the openai client cannot send malformed requests); the normal
requests around them go through the openai client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import struct
import threading
import time

import pytest

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.serve.server import Engine, ServerLimits, create_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e
KEY = "hostile-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
LIMITS = ServerLimits(max_tokens=32, max_body_bytes=64 * 1024, max_n=4, body_timeout_s=1.0, request_timeout_s=30)
CONTEXT = 256


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        formatter = logging.Formatter()
        return "\n".join(formatter.format(r) for r in self.records)


@pytest.fixture(scope="module")
def server():
    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2), tokenizer)
    model.generation_config.eos_token_id = None  # every generation runs to its max_tokens: cancels are visible
    engine = Engine(model, tokenizer, "tiny", context_length=CONTEXT, max_queue=64)
    records = Records()
    root, ours = logging.getLogger(), logging.getLogger("llm_finetuning")
    level = ours.level
    root.addHandler(records)
    ours.setLevel(logging.INFO)
    served = create_server(engine, "127.0.0.1", 0, KEY, LIMITS)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    port = served.server_address[1]
    yield {
        "port": port,
        "client": openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0),
        "engine": engine,
        "records": records,
    }
    served.shutdown()
    served.server_close()
    root.removeHandler(records)
    ours.setLevel(level)


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=AUTH if headers is None else headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, dict(response.getheaders()), raw
    finally:
        connection.close()


def chat(**fields) -> bytes:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}
    return json.dumps(body).encode()


def completion(**fields) -> bytes:
    return json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 4, **fields}).encode()


def nested(depth: int) -> bytes:
    return b'{"model": "tiny", "messages": ' + b"[" * depth + b"]" * depth + b"}"


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
TEXT = {"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"}
# (name, path, body, headers or None for the normal ones, status, a piece of the error message)
CASES = [
    ("malformed UTF-8", CHAT, b'{"model": "tiny", "messages": "\xc3\x28"}', None, 400, "not valid UTF-8"),
    ("text/plain body", CHAT, chat(), TEXT, 415, "application/json (got text/plain)"),
    ("no content type", CHAT, chat(), {"Authorization": f"Bearer {KEY}"}, 415, "no content type"),
    ("form encoded", CHAT, b"model=tiny", {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, 415, ""),
    ("JSON nested 5,000 deep", CHAT, nested(5000), None, 400, "nested too deeply"),
    ("JSON nested 200,000 deep", CHAT, b"[" * 60_000, None, 400, ""),
    ("truncated JSON", CHAT, chat()[:-3], None, 400, "not valid JSON"),
    ("a JSON array", CHAT, b"[]", None, 400, "must be a JSON object"),
    ("a 5,000-digit integer", CHAT, b'{"max_tokens": ' + b"7" * 5000 + b"}", None, 400, "not valid JSON"),
    ("NaN temperature", CHAT, chat()[:-1] + b', "temperature": NaN}', None, 400, "NaN is not a JSON number"),
    ("Infinity top_p", COMPLETIONS, completion()[:-1] + b', "top_p": Infinity}', None, 400, "Infinity"),
    ("negative temperature", CHAT, chat(temperature=-1), None, 400, "`temperature` must be a number in"),
    ("negative max_tokens", CHAT, chat(max_tokens=-3), None, 400, "`max_tokens` must be an integer in [1, 32]"),
    ("max_tokens over the limit", COMPLETIONS, completion(max_tokens=10**9), None, 400, "[1, 32]"),
    ("n = 100", CHAT, chat(n=100), None, 400, "`n` must be an integer in [1, 4]"),
    ("10,000 stop strings", CHAT, chat(stop=["x"] * 10_000), None, 400, "`stop` must be a string or a list"),
    ("one 10,000-char stop", COMPLETIONS, completion(stop="y" * 10_000), None, 400, "at most 256 characters"),
    ("an unknown parameter", CHAT, chat(temprature=0.2), None, 400, "Unrecognized request argument supplied"),
    ("logprobs asked for", CHAT, chat(logprobs=True), None, 400, "`logprobs` is not supported"),
    ("model gpt-4", CHAT, chat(model="gpt-4"), None, 404, "`gpt-4` does not exist"),
    ("prompt past the context", COMPLETIONS, completion(prompt="w " * 400), None, 400, "maximum context length"),
    ("max_tokens past the context", COMPLETIONS, completion(prompt="w " * 120, max_tokens=32), None, 400, "256"),
    ("a 200,000-word prompt", CHAT, chat(messages=[{"role": "user", "content": "word " * 200_000}]), None, 413, ""),
    ("an empty body", CHAT, b"", None, 400, "`model` must name one of the served models"),
    ("wrong API key", CHAT, chat(), {**AUTH, "Authorization": "Bearer nope"}, 401, "wrong API key"),
    ("no API key", COMPLETIONS, completion(), {"Content-Type": "application/json"}, 401, "API key"),
    ("GET on a POST route", CHAT, b"", None, 405, "no route GET"),
    ("an unknown route", "/v1/engines/davinci", b"{}", None, 404, "no route POST /v1/engines/davinci"),
    ("a tool call", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), None, 400, "no tool support"),
    ("an image part", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), None, 400, ""),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_hostile_request_gets_a_clear_error(server, path, body, headers, status, message):
    method = "GET" if status == 405 else "POST"
    code, _, raw = post(server["port"], path, body, headers, method)
    assert code == status
    error = json.loads(raw)["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_the_table_holds_at_least_25_cases():
    assert len(CASES) >= 25


def test_a_body_past_the_limit_is_413_declared_or_chunked(server):
    big = chat(messages=[{"role": "user", "content": "x" * (LIMITS.max_body_bytes + 10)}])
    assert post(server["port"], CHAT, big)[0] == 413
    # A 50 MB declared length is refused before it is read.
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    connection.putrequest("POST", CHAT)
    for key, value in {**AUTH, "Content-Length": str(50 << 20)}.items():
        connection.putheader(key, value)
    connection.endheaders()
    connection.send(b"{" * 1024)
    assert connection.getresponse().status == 413
    connection.close()
    # Chunked (no length): counted as it arrives.
    chunks = (big[i : i + 8192] for i in range(0, len(big), 8192))
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    connection.request("POST", CHAT, body=chunks, headers=AUTH, encode_chunked=True)
    assert connection.getresponse().status == 413
    connection.close()


def test_a_non_numeric_content_length_is_400(server):
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as s:
        s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n".encode())
        s.sendall(b"Content-Type: application/json\r\nContent-Length: lots\r\n\r\n{}")
        assert b" 400 " in s.recv(4096).split(b"\r\n")[0]


def test_not_http_at_all_is_closed_cleanly(server):
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20, b"HELLO\r\n\r\n", b"GET /" + b"a" * 100_000):
        with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as s:
            s.sendall(garbage + b"\r\n\r\n")
            try:
                reply = s.recv(4096)
            except ConnectionResetError:
                reply = b""
            assert reply == b"" or reply.startswith(b"HTTP/1.1 4")


def test_a_slow_body_is_408_and_idle_connections_block_nobody(server):
    idle = [socket.create_connection(("127.0.0.1", server["port"]), timeout=10) for _ in range(40)]
    for s in idle[:20]:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    try:
        with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as slow:
            slow.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n".encode())
            slow.sendall(b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")  # and then nothing
            started = time.monotonic()
            reply = slow.recv(4096)
            assert b" 408 " in reply.split(b"\r\n")[0]
            assert time.monotonic() - started < LIMITS.body_timeout_s + 5
        # Meanwhile (40 connections held open), a normal request is answered at once.
        answer = server["client"].chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a"}])
        assert answer.choices[0].finish_reason == "length"
    finally:
        for s in idle:
            s.close()


def cancelled_total(server) -> float:
    status, _, raw = post(server["port"], "/metrics", b"", {"Authorization": f"Bearer {KEY}"}, "GET")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith("llmft_cancelled_total"):
            return float(line.split()[-1])
    return 0.0


def wait_idle(engine: Engine, seconds: float = 20.0) -> float:
    """Seconds until the engine has nothing running or waiting."""
    started = time.monotonic()
    while engine.active_count() or engine.pending_count():
        assert time.monotonic() - started < seconds, "the engine kept generating for a client that left"
        time.sleep(0.01)
    return time.monotonic() - started


@contextlib.contextmanager
def slowed(engine: Engine, delay: float = 0.02):
    """Each generated token takes `delay` longer, and is counted: a cancel shows as tokens never generated."""
    original, steps = engine.step, []

    def slow_step(ticket, token, eos):
        steps.append(token)
        time.sleep(delay)
        original(ticket, token, eos)

    engine.step = slow_step
    try:
        yield steps
    finally:
        engine.step = original


def test_a_streaming_client_that_vanishes_cancels_its_generation(server):
    before = cancelled_total(server)
    body = completion(max_tokens=32, stream=True, n=4)
    with slowed(server["engine"]) as steps:
        with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as s:
            head = f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            s.sendall(f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            received = b""
            while b"data: " not in received:  # the first event arrived: generation is under way
                received += s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a close
        wait_idle(server["engine"])
    assert len(steps) < 4 * 32 // 2  # four rows of 32 tokens were asked for; most were never generated
    assert cancelled_total(server) == before + 1


def test_a_client_that_gives_up_waiting_cancels_its_generation(server):
    before = cancelled_total(server)
    with slowed(server["engine"], delay=0.05) as steps:
        impatient = server["client"].with_options(timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            impatient.completions.create(model="tiny", prompt="hello", max_tokens=32)
        wait_idle(server["engine"])
    assert len(steps) < 32  # stopped soon after the client left, about 0.5 s in
    assert cancelled_total(server) == before + 1
    records = [r for r in server["records"].records if "client went away" in r.getMessage()]
    assert len(records) == 1 and " 499 " in records[0].getMessage()  # one access line says it all


def test_after_everything_the_server_answers_and_nothing_logged_a_traceback(server):
    client = server["client"]
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "still there?"}], max_tokens=5, n=2
    )
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in answer.choices)
    assert answer.usage.completion_tokens == 10
    records = server["records"]
    assert not [r for r in records.records if r.exc_info], "a record carried a traceback"
    assert "Traceback" not in records.text()
    assert KEY not in records.text()
    # an auth failure is exactly one line, the access line
    wrong = [r for r in records.records if '" 401 ' in r.getMessage()]
    assert len(wrong) == 2 and all(r.levelno == logging.INFO for r in wrong)
