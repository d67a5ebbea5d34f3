"""The embedded engine: dynamic batching of concurrent requests over one model (and its adapters).

One worker thread owns the model. Requests wait in a bounded queue; whenever the model is free, the worker takes
the oldest request and every waiting one that can share its batch (same sampling settings; same adapter unless
the adapters can be mixed in one batch, as LoRA adapters can), left-pads them into one `generate` call (each row
its own KV cache entries) and streams every row's tokens back as they are produced. A row that finishes, hits one
of its stop strings or its `max_tokens`, or whose client went away stops there; the batch ends when no row is left,
so a cancelled request stops costing compute at once. Requests that arrive while a batch runs join the next one:
this is dynamic batching, not vLLM's continuous batching with a paged cache (`llmft serve --engine vllm`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from llm_finetuning.serve.generation import generation_settings, render_chat
from llm_finetuning.serve.protocol import ApiError, Sampling

logger = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class ServedModel:
    """One model id: which adapter of the engine's model answers it (None: the model as loaded; BASE: the base
    with every adapter off) and the tokenizer (chat template) its run was trained with."""

    id: str
    tokenizer: PreTrainedTokenizerBase
    adapter: str | None = None


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # stop | length | cancelled
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    error: ApiError


Event = Delta | Finished | Failed


@dataclass(eq=False)
class Ticket:
    """One sequence to generate (a request with `n: 3` is three tickets). `deliver` is called from the worker
    thread with each event; the last one is a `Finished` or a `Failed`."""

    model: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    deliver: Callable[[Event], None]
    stops: tuple[str, ...] = ()
    drop_ids: frozenset[int] | None = None
    """None: the text is decoded without special tokens. Else only these are dropped, so that tool call markers
    that are special tokens (Mistral's `[TOOL_CALLS]`) stay in the text the calls are read from."""
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False
    cancelled: bool = False
    first_token_at: float | None = None

    def cancel(self) -> None:
        """Stop generating for this ticket (a plain flag: the worker reads it at its next step)."""
        self.cancelled = True


def _context_of(model: PreTrainedModel) -> int:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


class Engine:
    """Batches generation for the served model ids; thread-safe `submit`, one worker thread."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_id: str,
        *,
        served: list[ServedModel] | None = None,
        context_length: int | None = None,
        max_batch_size: int = 32,
        max_queue: int = 256,
        gather_s: float = 0.02,
    ) -> None:
        self.model = model.eval()
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.served = {s.id: s for s in (served or [ServedModel(model_id, tokenizer)])}
        limit = _context_of(model)
        self.context_length = min(context_length or limit, limit)
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.gather_s = gather_s
        self._last_batch, self._ended_at = 0, 0.0
        self.mixable = self._adapters_mixable()
        # Encoding runs in the server's threads while the worker decodes: each side has its own tokenizer copy,
        # since a Rust tokenizer borrowed from two threads at once can fail.
        self._encoders = {name: (copy.deepcopy(s.tokenizer), threading.Lock()) for name, s in self.served.items()}
        self._pending: list[Ticket] = []
        self._active = 0
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="llmft-engine", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ requests
    def model_ids(self) -> list[str]:
        return list(self.served)

    def tokenizer_of(self, model: str) -> PreTrainedTokenizerBase:
        return self.served[model].tokenizer

    def render(self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return render_chat(self.served[model].tokenizer, messages, tools)

    def encode(self, model: str, text: str) -> list[int]:
        encoder, lock = self._encoders[model]
        with lock:
            return encoder(text, add_special_tokens=False)["input_ids"]

    def submit(self, tickets: list[Ticket]) -> None:
        """Queue tickets (all of one request, all or none); 429 when the queue is full, 503 once closed."""
        with self._cond:
            if self._closed:
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down", headers=_RETRY)
            if len(self._pending) + len(tickets) > self.max_queue:
                raise ApiError(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    f"the request queue is full ({self.max_queue} waiting); retry shortly",
                    code="queue_full",
                    headers=_RETRY,
                )
            self._pending.extend(tickets)
            self._cond.notify()

    def pending_count(self) -> int:
        return len(self._pending)

    def active_count(self) -> int:
        return self._active

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, cancel what waits, let the running batch end, stop the worker."""
        with self._cond:
            self._closed = True
            waiting, self._pending = self._pending, []
            self._cond.notify_all()
        for ticket in waiting:
            self._finish(ticket, "cancelled")
        self._worker.join(timeout)
        if not self._worker.is_alive():
            # FastAPI keeps the app's endpoints (closures over this engine) in process-wide caches: the weights
            # must not live as long as those, or every server started in a process leaks its model.
            self.model = None

    # ------------------------------------------------------------------ worker
    def _adapters_mixable(self) -> bool:
        adapters = {s.adapter for s in self.served.values()} - {None, BASE}
        configs = getattr(self.model, "peft_config", {})
        return bool(adapters) and all(str(getattr(configs.get(a), "peft_type", "")).endswith("LORA") for a in adapters)

    def _key(self, ticket: Ticket) -> tuple[Any, ...]:
        adapter = None if self.mixable else self.served[ticket.model].adapter
        return (ticket.sampling, adapter)

    def _take(self) -> list[Ticket]:
        self._pending = [t for t in self._pending if not t.cancelled or self._finish(t, "cancelled")]
        if not self._pending:
            return []
        key = self._key(self._pending[0])
        batch = [t for t in self._pending if self._key(t) == key][: self.max_batch_size]
        chosen = set(map(id, batch))
        self._pending = [t for t in self._pending if id(t) not in chosen]
        return batch

    def _gather(self) -> None:
        """After a batch, wait up to `gather_s` while fewer rows wait than that batch had (caller holds the lock).

        Clients whose answers just ended send their next request a few milliseconds later. Starting at once with
        the few rows that waited would split the clients into groups that take turns (1 and 7 of 8 clients, each
        group idle while the other runs) and halve the throughput; the short wait lets them meet in one batch.
        A lone client never waits (its previous batch had one row, and its request is that row), nor does a request
        reaching an engine that has been idle."""
        want = min(self._last_batch, self.max_batch_size)
        deadline = self._ended_at + self.gather_s
        while len(self._pending) < want and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                self._gather()
                batch = self._take()
                self._last_batch = len(batch)
                self._active = len(batch)
            if batch:
                self._run(batch)
                self._ended_at = time.monotonic()
            self._active = 0

    @torch.no_grad()
    def _run(self, batch: list[Ticket]) -> None:
        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(t.prompt_ids) for t in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ticket in enumerate(batch):  # left padding: every row continues from the right end
            ids[row, width - len(ticket.prompt_ids) :] = torch.tensor(ticket.prompt_ids)
            mask[row, width - len(ticket.prompt_ids) :] = 1
        sampling = batch[0].sampling
        settings = generation_settings(
            tokenizer, max(t.max_tokens for t in batch), sampling.temperature, sampling.top_p
        )
        rows = _Rows(self, batch)
        extra: dict[str, Any] = {}
        adapters = [self.served[t.model].adapter for t in batch]
        context = _NoContext()
        if any(a is not None for a in adapters):
            if self.mixable:
                extra["adapter_names"] = [a or BASE for a in adapters]
            elif adapters[0] == BASE:
                context = self.model.disable_adapter()
            else:
                self.model.set_adapter(adapters[0])
        device = self.model.device
        try:
            with context:
                self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    **settings,
                    **extra,
                    streamer=rows,
                    stopping_criteria=StoppingCriteriaList([rows]),
                )
        except Exception as exc:  # one failing batch must not take the server down
            logger.exception("generation failed for a batch of %d", len(batch))
            error = ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {type(exc).__name__}: {exc}")
            for ticket in batch:
                if not ticket.done:
                    ticket.done = True
                    ticket.deliver(Failed(error))
            return
        for ticket in batch:
            if not ticket.done:
                self._flush(ticket, ticket_text(tokenizer, ticket))
                self._finish(ticket, "cancelled" if ticket.cancelled else "length")

    def _finish(self, ticket: Ticket, reason: str) -> bool:
        ticket.done = True
        ticket.deliver(Finished(reason, len(ticket.prompt_ids), len(ticket.tokens)))
        return False

    def _flush(self, ticket: Ticket, upto: str) -> None:
        if len(upto) > len(ticket.sent):
            piece, ticket.sent = upto[len(ticket.sent) :], upto
            ticket.deliver(Delta(piece))

    def step(self, ticket: Ticket, token: int, eos: set[int]) -> None:
        """One new token for a row: cut at a stop string, stop at EOS or max_tokens, else send what is safe."""
        if ticket.cancelled:
            self._finish(ticket, "cancelled")
            return
        if token in eos:
            self._flush(ticket, ticket_text(self.tokenizer, ticket))
            self._finish(ticket, "stop")
            return
        if ticket.first_token_at is None:
            ticket.first_token_at = time.monotonic()
        ticket.tokens.append(token)
        text = ticket_text(self.tokenizer, ticket)
        cut = _first_stop(text, ticket.stops, len(ticket.sent))
        if cut is not None:
            self._flush(ticket, text[:cut])
            self._finish(ticket, "stop")
        elif len(ticket.tokens) >= ticket.max_tokens:
            self._flush(ticket, text)
            self._finish(ticket, "length")
        else:
            self._flush(ticket, text[: _safe_end(text, ticket.stops)])


_RETRY = {"Retry-After": "1"}


class _NoContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def ticket_text(tokenizer: PreTrainedTokenizerBase, ticket: Ticket, final: bool = False) -> str:
    if ticket.drop_ids is None:
        return tokenizer.decode(ticket.tokens, skip_special_tokens=True)
    kept = [token for token in ticket.tokens if token not in ticket.drop_ids]
    return tokenizer.decode(kept, skip_special_tokens=False)


def _first_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Where the earliest stop string starts, looking only where a new one can be (it may straddle tokens)."""
    start = max(0, sent - max((len(s) for s in stops), default=0))
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _safe_end(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be sent now: not a trailing partial character, nor a tail that may begin a stop."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":  # a multi-byte character still being decoded
        end -= 1
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[end - size : end] == stop[:size]:
                return end - size
    return end


class _Rows(BaseStreamer, StoppingCriteria):
    """Streamer and stopping criterion of one batch: routes each row's tokens to its ticket and tells `generate`
    which rows are finished."""

    def __init__(self, engine: Engine, batch: list[Ticket]) -> None:
        self.engine, self.batch = engine, batch
        eos = engine.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = {e for e in [*eos, engine.tokenizer.eos_token_id] if e is not None}
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt
            self.prompt_seen = True
            return
        for ticket, token in zip(self.batch, value.reshape(-1).tolist(), strict=True):
            if not ticket.done:
                self.engine.step(ticket, token, self.eos)

    def end(self) -> None:
        return None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = [t.done or t.cancelled for t in self.batch]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
