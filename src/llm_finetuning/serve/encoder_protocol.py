"""The request shapes of the encoder endpoints: OpenAI's `/v1/embeddings` and the rerank API that Cohere, Jina and
vLLM share (`/v1/rerank`). Plain Python like serve/protocol.py: a parameter is honoured or refused by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_finetuning.serve.protocol import ServerLimits, _check_keys, _integer, bad

_EMBEDDINGS = {"model", "input", "encoding_format", "dimensions", "user"}
_RERANK = {"model", "query", "documents", "top_n", "return_documents"}


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    base64: bool
    """`encoding_format: base64`: little-endian float32 bytes, base64-encoded (what the openai client asks for)."""
    dimensions: int | None
    """Keep the first `dimensions` values and re-normalise them (matryoshka truncation); None: the full vector."""


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("`model` must name one of the served models (GET /v1/models lists them)", "model")
    return model


def _is_token_ids(value: Any) -> bool:
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def parse_embeddings(body: dict[str, Any], limits: ServerLimits) -> EmbeddingRequest:
    _check_keys(body, _EMBEDDINGS)
    model = _model(body)
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if _is_token_ids(inputs) or (isinstance(inputs, list) and any(_is_token_ids(i) for i in inputs)):
        # The ids would have to be those of this model's tokenizer, which clients of OpenAI's API do not have.
        raise bad("`input` as token ids is not supported by this server: send the text", "input")
    if not isinstance(inputs, list) or not inputs or not 1 <= len(inputs) <= limits.max_inputs:
        raise bad(f"`input` must be a non-empty string or a list of 1 to {limits.max_inputs} strings", "input")
    for index, text in enumerate(inputs):
        if not isinstance(text, str) or not text:
            raise bad(f"`input[{index}]` must be a non-empty string", "input")
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise bad("`encoding_format` must be float or base64", "encoding_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("`user` must be a string", "user")
    dimensions = _integer(body, "dimensions", 1, 1 << 20)  # the model's own size is checked once it is known
    return EmbeddingRequest(model, inputs, fmt == "base64", dimensions)


def _document(value: Any, index: int) -> str:
    if isinstance(value, dict) and set(value) == {"text"}:  # Cohere's and Jina's `{"text": ...}` form
        value = value["text"]
    if not isinstance(value, str) or not value:
        raise bad(f"`documents[{index}]` must be a non-empty string (or an object with only `text`)", "documents")
    return value


def parse_rerank(body: dict[str, Any], limits: ServerLimits) -> RerankRequest:
    _check_keys(body, _RERANK)
    model = _model(body)
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise bad("`query` must be a non-empty string", "query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not 1 <= len(documents) <= limits.max_inputs:
        raise bad(f"`documents` must be a list of 1 to {limits.max_inputs} strings", "documents")
    texts = [_document(d, i) for i, d in enumerate(documents)]
    top_n = _integer(body, "top_n", 1, limits.max_inputs)
    returned = body.get("return_documents", True)
    if not isinstance(returned, bool):
        raise bad("`return_documents` must be true or false", "return_documents")
    return RerankRequest(model, query, texts, top_n, returned)
