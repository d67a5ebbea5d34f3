"""The embedded engine on its own (no HTTP): batching, per-row stopping, cancel, queue bounds, failure isolation."""

from __future__ import annotations

import threading
import time
from http import HTTPStatus

import pytest
import torch

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.serve.engine import Delta, Engine, Failed, Finished, Ticket, _first_stop, _safe_end
from llm_finetuning.serve.protocol import ApiError, Sampling

GREEDY = Sampling(temperature=0.0)
PROMPTS = ["Spell alpha", "Hello there, how are you today?", "x", "The quick brown fox jumps over"]


class Sink:
    """Collects one ticket's events; `wait` blocks until its last one."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.events: list = []
        self.done = threading.Event()
        self.hold = hold

    def __call__(self, event) -> None:
        self.events.append(event)
        if self.hold is not None:  # the worker thread waits here: a way to keep it busy
            self.hold.wait(30)
        if isinstance(event, Finished | Failed):
            self.done.set()

    def wait(self) -> Sink:
        assert self.done.wait(60), "the engine never finished this ticket"
        return self

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta))

    @property
    def last(self):
        return self.events[-1]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    # float64: left padding changes the float32 sums slightly, enough to flip a near-tie in a random model
    model = build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2), tokenizer, dtype=torch.float64)
    # never stop at EOS, so every row runs to its max_tokens and the texts compare over their whole length
    model.generation_config.eos_token_id = None
    return model, tokenizer


@pytest.fixture
def engine(tiny):
    model, tokenizer = tiny
    made = []

    def make(**options) -> Engine:
        made.append(Engine(model, tokenizer, "tiny", **options))
        return made[-1]

    yield make
    for e in made:
        e.close()


def ticket(engine: Engine, prompt: str, sink: Sink, max_tokens: int = 12, **options) -> Ticket:
    return Ticket("tiny", engine.encode("tiny", prompt), max_tokens, options.pop("sampling", GREEDY), sink, **options)


def run_alone(engine: Engine, prompt: str, max_tokens: int = 12, **options) -> Sink:
    sink = Sink()
    engine.submit([ticket(engine, prompt, sink, max_tokens, **options)])
    return sink.wait()


def test_a_batch_generates_what_each_prompt_generates_alone(engine):
    alone = engine(max_batch_size=1)
    expected = [run_alone(alone, p).text for p in PROMPTS]
    batched = engine(max_batch_size=8)
    sizes = []
    run = batched._run
    batched._run = lambda batch: (sizes.append(len(batch)), run(batch))[1]
    sinks = [Sink() for _ in PROMPTS]
    batched.submit([ticket(batched, p, s) for p, s in zip(PROMPTS, sinks, strict=True)])
    texts = [s.wait().text for s in sinks]
    assert sizes == [len(PROMPTS)]  # one generate call for all four
    assert texts == expected
    assert all(
        s.last == Finished("length", len(batched.encode("tiny", p)), 12) for p, s in zip(PROMPTS, sinks, strict=True)
    )


def test_the_engine_matches_plain_generate(engine, tiny):
    model, tokenizer = tiny
    ids = tokenizer("Spell alpha", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert run_alone(engine(), "Spell alpha", max_tokens=10).text == expected


def test_rows_of_one_batch_stop_on_their_own(engine):
    e = engine()
    full = run_alone(e, PROMPTS[1], max_tokens=16).text
    stop = full[5:7]
    short, stopped = Sink(), Sink()
    e.submit([ticket(e, PROMPTS[1], short, max_tokens=3), ticket(e, PROMPTS[1], stopped, 16, stops=(stop,))])
    assert short.wait().last.reason == "length" and short.last.completion_tokens == 3
    assert stopped.wait().last.reason == "stop"
    assert stopped.text == full[: full.index(stop)]  # cut before the stop string, which is not sent


def recorded(e: Engine) -> list[int]:
    sizes: list[int] = []
    run = e._run
    e._run = lambda batch: (sizes.append(len(batch)), run(batch))[1]
    return sizes


def submit_all(e: Engine, count: int) -> list[Sink]:
    sinks = [Sink() for _ in range(count)]
    e.submit([ticket(e, PROMPTS[i % len(PROMPTS)], s, max_tokens=4) for i, s in enumerate(sinks)])
    return sinks


def clients_that_come_back_apart(e: Engine) -> list[int]:
    """Four clients answered in one batch come back one, then three a moment later."""
    sizes = recorded(e)
    [s.wait() for s in submit_all(e, 4)]
    first = submit_all(e, 1)
    time.sleep(0.3)
    [s.wait() for s in first + submit_all(e, 3)]
    return sizes


def test_clients_coming_back_after_a_batch_meet_in_the_next_one(engine):
    # Without the wait the one who came back first runs alone and the groups take turns from then on.
    assert clients_that_come_back_apart(engine(gather_s=0.0)) == [4, 1, 3]
    assert clients_that_come_back_apart(engine(gather_s=5.0)) == [4, 4]


def test_a_lone_client_and_an_idle_engine_never_wait_to_gather(engine):
    e = engine(gather_s=5.0)
    sizes = recorded(e)
    start = time.monotonic()
    for _ in range(3):  # each request's previous batch had one row: nobody else to wait for
        [s.wait() for s in submit_all(e, 1)]
    assert time.monotonic() - start < 5.0 and sizes == [1, 1, 1]
    e.gather_s = 0.2
    [s.wait() for s in submit_all(e, 4)]
    time.sleep(0.4)  # idle for longer than the window: the next request starts at once, alone
    [s.wait() for s in submit_all(e, 1)]
    assert sizes[-2:] == [4, 1]


def test_a_cancelled_row_stops_and_frees_its_slot(engine):
    e = engine()
    running = Sink()
    long_ticket = ticket(e, PROMPTS[0], running, max_tokens=400)

    def cancel_on_first(event) -> None:
        if isinstance(event, Delta):
            long_ticket.cancel()
        running(event)

    long_ticket.deliver = cancel_on_first
    e.submit([long_ticket])
    assert running.wait().last.reason == "cancelled"
    assert running.last.completion_tokens < 5  # stopped at the next step, not after 400
    waiting = Sink()
    queued = ticket(e, PROMPTS[0], waiting)
    queued.cancel()
    e.submit([queued])
    assert waiting.wait().last == Finished("cancelled", len(queued.prompt_ids), 0)  # never generated
    assert run_alone(e, PROMPTS[0], max_tokens=4).last.reason == "length"  # the engine goes on


def test_a_full_queue_refuses_with_retry_after_and_recovers(engine):
    e = engine(max_queue=2, max_batch_size=1)
    hold = threading.Event()
    busy = Sink(hold)
    e.submit([ticket(e, PROMPTS[0], busy, max_tokens=2)])
    while e.active_count() == 0:  # the worker has taken it and waits inside its first event
        threading.Event().wait(0.01)
    waiting = [Sink(), Sink()]
    e.submit([ticket(e, PROMPTS[0], s, max_tokens=2) for s in waiting])
    with pytest.raises(ApiError) as refused:
        e.submit([ticket(e, PROMPTS[0], Sink(), max_tokens=2)])
    assert refused.value.status == HTTPStatus.TOO_MANY_REQUESTS and refused.value.code == "queue_full"
    assert refused.value.headers == {"Retry-After": "1"}
    with pytest.raises(ApiError):  # all of a request or none: two tickets do not fit one free place
        e.submit([ticket(e, PROMPTS[0], Sink()) for _ in range(2)])
    hold.set()
    assert [s.wait().last.reason for s in [busy, *waiting]] == ["length"] * 3


def test_a_failing_batch_fails_its_tickets_only(engine, monkeypatch):
    e = engine()
    calls = []
    generate = e.model.generate

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return generate(*args, **kwargs)

    monkeypatch.setattr(e.model, "generate", flaky)
    failed = run_alone(e, PROMPTS[0])
    assert isinstance(failed.last, Failed) and failed.last.error.status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert "CUDA out of memory (simulated)" in failed.last.error.message
    assert run_alone(e, PROMPTS[0]).last.reason == "length"


def test_close_cancels_waiting_work_and_refuses_new(engine):
    e = engine(max_batch_size=1)
    hold = threading.Event()
    busy, waiting = Sink(hold), Sink()
    e.submit([ticket(e, PROMPTS[0], busy, max_tokens=2)])
    while e.active_count() == 0:
        threading.Event().wait(0.01)
    e.submit([ticket(e, PROMPTS[0], waiting)])
    closer = threading.Thread(target=e.close)
    closer.start()
    assert waiting.wait().last.reason == "cancelled"
    hold.set()
    closer.join(30)
    with pytest.raises(ApiError) as refused:
        e.submit([ticket(e, PROMPTS[0], Sink())])
    assert refused.value.status == HTTPStatus.SERVICE_UNAVAILABLE


def test_sampled_choices_of_one_request_differ(engine):
    e = engine()
    sinks = [Sink() for _ in range(3)]
    hot = Sampling(temperature=1.0)
    e.submit([ticket(e, PROMPTS[0], s, max_tokens=16, sampling=hot) for s in sinks])
    texts = [s.wait().text for s in sinks]
    assert len(set(texts)) > 1  # three rows of one batch, sampled independently


@pytest.mark.parametrize(
    ("text", "stops", "sent", "expected"),
    [
        ("hello world", ("wor",), 0, 6),
        ("hello world", ("xyz",), 0, None),
        ("abcSTOPdefSTOP", ("STOP",), 8, 10),  # only where a new match can begin
        ("abcSTOP", ("ST", "TOP"), 0, 3),  # the earliest of several
        ("abST", ("STOP",), 0, None),
    ],
)
def test_first_stop(text, stops, sent, expected):
    assert _first_stop(text, stops, sent) == expected


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("hello wo", ("world",), 6),  # "wo" may begin the stop: held back
        ("hello", ("world",), 5),
        ("caf\ufffd", (), 3),  # half a multi-byte character is not sent
        ("abc##", ("###",), 3),
    ],
)
def test_safe_end(text, stops, expected):
    assert _safe_end(text, stops) == expected
