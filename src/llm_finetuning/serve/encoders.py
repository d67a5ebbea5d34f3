"""Embedding and reranking models behind `llmft serve`: which kind a directory holds, loading it, and the engine
that runs it.

A run of the `embedding` method saves a sentence-transformers bi-encoder (`SentenceTransformer(path)`), one of the
`reranker` method a cross-encoder (`CrossEncoder(path)`). The engine is the encoder counterpart of serve/engine.py:
one worker thread owns the model (and its tokenizer, which is not safe to share between threads), requests wait in
a bounded queue, and the requests waiting when the model comes free are encoded together, up to the batch size.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_finetuning.errors import UserError
from llm_finetuning.models.sentence_kind import encoder_kind  # noqa: F401 - where serving asks it
from llm_finetuning.serve.loading import resolve
from llm_finetuning.serve.protocol import ApiError, bad

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer

logger = logging.getLogger(__name__)

EMBEDDING, RERANKER = "embedding", "reranker"
_COUNT_CHUNK = 64  # inputs tokenized together when counting; sorted by length, so little padding is wasted


@dataclass(frozen=True)
class Encoded:
    """One request's answer: an embedding per input (rows of `values`) or a relevance score per document, and
    the tokens the model read for each input."""

    values: np.ndarray
    tokens: list[int]


@dataclass(eq=False)
class _Job:
    inputs: list[Any]  # texts (embedding) or (query, document) pairs (reranker)
    future: Future = field(default_factory=Future)


class EncoderEngine:
    """Runs one SentenceTransformer (`kind` embedding) or CrossEncoder (`kind` reranker) as model id `model_id`;
    `submit` is thread-safe and returns a future, completed by the one worker thread."""

    def __init__(
        self,
        model: SentenceTransformer | CrossEncoder,
        kind: str,
        model_id: str,
        *,
        max_batch_size: int = 32,
        max_queue: int = 256,
    ) -> None:
        self.model, self.kind, self.model_id = model.eval(), kind, model_id
        self.served = {model_id: kind}
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        limit = model.max_seq_length
        self.max_input_tokens: int | None = limit if isinstance(limit, int) and limit > 0 else None
        default_prompt = getattr(model, "default_prompt_name", None)
        # encode/predict prepend the default prompt; the token counts must include it too
        self._prompt = (getattr(model, "prompts", None) or {}).get(default_prompt) if default_prompt else None
        self.dimension = self._dimension() if kind == EMBEDDING else None
        self._pending: list[_Job] = []
        self._active = 0
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="llmft-encoder", daemon=True)
        self._worker.start()

    def _dimension(self) -> int:
        size = self.model.get_embedding_dimension()
        if isinstance(size, int) and size > 0:
            return size
        return int(self.model.encode(["probe"], show_progress_bar=False).shape[1])  # a model that does not say

    # ------------------------------------------------------------------ requests
    def model_ids(self) -> list[str]:
        return list(self.served)

    def submit(self, inputs: list[Any]) -> Future:
        """Queue one request's texts or pairs; 429 when the queue is full, 503 once closed. The future holds an
        `Encoded`, or raises the `ApiError` that answers the request."""
        job = _Job(inputs)
        with self._cond:
            if self._closed:
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down", headers=_RETRY)
            if len(self._pending) >= self.max_queue:
                raise ApiError(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    f"the request queue is full ({self.max_queue} waiting); retry shortly",
                    code="queue_full",
                    headers=_RETRY,
                )
            self._pending.append(job)
            self._cond.notify()
        return job.future

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
        for job in waiting:
            job.future.cancel()
        self._worker.join(timeout)
        if not self._worker.is_alive():
            self.model = None  # the app's closures outlive the server (see Engine.close): do not keep the weights

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[_Job]:
        """The oldest waiting request and those after it while their inputs fit one batch; a cancelled one (its
        client gone or timed out) is dropped here and never encoded."""
        taken: list[_Job] = []
        size = 0
        while self._pending and (not taken or size + len(self._pending[0].inputs) <= self.max_batch_size):
            job = self._pending.pop(0)
            if job.future.set_running_or_notify_cancel():
                taken.append(job)
                size += len(job.inputs)
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                jobs = self._take()
                self._active = sum(len(j.inputs) for j in jobs)
            if jobs:
                self._run(jobs)
            self._active = 0

    def _run(self, jobs: list[_Job]) -> None:
        ready: list[tuple[_Job, list[int]]] = []
        try:
            for job in jobs:
                try:
                    ready.append((job, self._check(job.inputs)))
                except ApiError as error:  # one request's bad input answers that request only
                    job.future.set_exception(error)
            inputs = [item for job, _ in ready for item in job.inputs]
            values = self._encode(inputs) if inputs else np.zeros((0,))
        except Exception as exc:  # one failing batch must not take the server down
            logger.exception("encoding failed for a batch of %d requests", len(ready))
            error = ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"encoding failed: {type(exc).__name__}: {exc}")
            for job, _ in ready:
                job.future.set_exception(error)
            return
        start = 0
        for job, tokens in ready:
            job.future.set_result(Encoded(values[start : start + len(job.inputs)], tokens))
            start += len(job.inputs)

    def _encode(self, inputs: list[Any]) -> np.ndarray:
        if self.kind == EMBEDDING:
            encoded = self.model.encode(inputs, batch_size=self.max_batch_size, show_progress_bar=False)
        else:  # the model's own activation (sigmoid for one logit), as CrossEncoder.predict applies by default
            encoded = self.model.predict(inputs, batch_size=self.max_batch_size, show_progress_bar=False)
        return np.asarray(encoded, dtype=np.float32)

    def _check(self, inputs: list[Any]) -> list[int]:
        """The tokens the model reads for each input. An embedding input longer than the model reads is refused
        (a vector of its first part would silently stand for the whole text); a rerank pair is cut to fit, as
        CrossEncoder and the rerank APIs do, and counted as read."""
        if self.kind == RERANKER:
            return self._lengths(inputs, truncate=True)
        lengths = self._lengths(inputs, truncate=False)
        limit = self.max_input_tokens
        for index, count in enumerate(lengths):
            if limit is not None and count > limit:
                raise bad(
                    f"`input[{index}]` is {count} tokens; this model reads at most {limit}: split the text",
                    "input",
                    "context_length_exceeded",
                )
        return lengths

    def _lengths(self, inputs: list[Any], truncate: bool) -> list[int]:
        order = sorted(range(len(inputs)), key=lambda i: _size(inputs[i]))
        options: dict[str, Any] = {} if truncate else {"processing_kwargs": {"text": {"truncation": False}}}
        lengths = [0] * len(inputs)
        for start in range(0, len(order), _COUNT_CHUNK):
            chunk = order[start : start + _COUNT_CHUNK]
            features = self.model.preprocess([inputs[i] for i in chunk], prompt=self._prompt, **options)
            mask = features.get("attention_mask")
            if mask is None:  # a first module that is not a Transformer (static embeddings): no count to give
                return lengths
            for index, count in zip(chunk, mask.sum(dim=1).tolist(), strict=True):
                lengths[index] = int(count)
        return lengths


_RETRY = {"Retry-After": "1"}


def _size(item: str | tuple[str, str]) -> int:
    return len(item) if isinstance(item, str) else sum(map(len, item))


def load_encoder(
    target: str | Path, model_id: str, kind: str, *, max_batch_size: int = 32, max_queue: int = 256
) -> EncoderEngine:
    """The engine for the `kind` (see `encoder_kind`) model of a run or model directory."""
    # Imported here: sentence-transformers takes seconds to import and a causal-LM server never needs it.
    from sentence_transformers import CrossEncoder, SentenceTransformer

    path = resolve(target)
    try:
        model = SentenceTransformer(str(path)) if kind == EMBEDDING else CrossEncoder(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot load a {kind} model from `{target}`: {exc}") from None
    if kind == RERANKER and model.num_labels != 1:
        raise UserError(
            f"`{target}` is a cross-encoder with {model.num_labels} outputs; /v1/rerank needs one relevance score"
        )
    engine = EncoderEngine(model, kind, model_id, max_batch_size=max_batch_size, max_queue=max_queue)
    logger.info("serving %s model %s from %s (device %s)", kind, model_id, path, model.device)
    return engine
