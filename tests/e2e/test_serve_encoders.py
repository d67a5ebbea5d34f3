"""`llmft serve` for embedding and reranker runs: `/v1/embeddings` through the official `openai` client and
`/v1/rerank` through httpx, against servers on loopback ports, checked against sentence-transformers itself."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from llm_finetuning.serve.encoders import EMBEDDING, RERANKER, encoder_kind, load_encoder
from llm_finetuning.serve.server import ServerLimits, create_server
from tests.encoder_fixtures import fake_encoder_run

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e
KEY = "test-key"
TEXTS = ["the cat sat on the mat", "a dog barked", "stock markets fell sharply today", "x"]
QUERY = "where did the cat sit?"
DOCUMENTS = ["the cat sat on the mat", "dogs bark at night", "markets fell", "a cat on a mat, sitting", "mat"]


def _start(engine):
    server = create_server(engine, "127.0.0.1", 0, KEY, ServerLimits(request_timeout_s=30))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    tmp = tmp_path_factory.mktemp("serve-encoders")
    embed_run = fake_encoder_run(tmp / "embed-run", EMBEDDING)
    rerank_run = fake_encoder_run(tmp / "rerank-run", RERANKER, seed=1)
    embedder = load_encoder(embed_run, "embed-run", encoder_kind(embed_run), max_batch_size=4)
    reranker = load_encoder(rerank_run, "rerank-run", encoder_kind(rerank_run))
    (embed_server, embed_base), (rerank_server, rerank_base) = _start(embedder), _start(reranker)
    headers = {"Authorization": f"Bearer {KEY}"}
    embed_http = httpx.Client(base_url=embed_base, headers=headers, timeout=30)
    rerank_http = httpx.Client(base_url=rerank_base, headers=headers, timeout=30)
    yield {
        "tmp": tmp,
        "embed_run": embed_run,
        "rerank_run": rerank_run,
        "client": openai.OpenAI(base_url=f"{embed_base}/v1", api_key=KEY, max_retries=0, timeout=30),
        "embed_base": embed_base,
        "embed_http": embed_http,
        "http": rerank_http,
        "bi": SentenceTransformer(str(embed_run / "final")),
        "cross": CrossEncoder(str(rerank_run / "final")),
    }
    embed_http.close()
    rerank_http.close()
    for server in (embed_server, rerank_server):
        server.shutdown()
        server.server_close()


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _tokens(model, texts) -> int:
    """What the model reads: its own preprocessing (special tokens and any template included)."""
    return int(sum(model.preprocess([t])["attention_mask"].sum() for t in texts))


# ---------------------------------------------------------------------------------------------- which model


def test_the_kind_comes_from_the_run_config_then_from_the_files(servers):
    tmp = servers["tmp"]
    assert encoder_kind(servers["embed_run"]) == EMBEDDING and encoder_kind(servers["rerank_run"]) == RERANKER
    plain = shutil.copytree(servers["rerank_run"] / "final", tmp / "plain-reranker")
    (plain / "llmft_config.yaml").unlink()
    assert encoder_kind(plain) == RERANKER  # config_sentence_transformers.json's model_type
    st_config = plain / "config_sentence_transformers.json"
    st_config.write_text(json.dumps({k: v for k, v in json.loads(st_config.read_text()).items() if k != "model_type"}))
    assert encoder_kind(plain) == RERANKER  # the Transformer module's transformer_task
    lm_run = tmp / "lm-run" / "final"
    lm_run.mkdir(parents=True)
    (lm_run / "llmft_config.yaml").write_text(yaml.safe_dump({"method": {"name": "sft"}}))
    assert encoder_kind(lm_run.parent) is None and encoder_kind(tmp / "nothing-here") is None


def test_a_plain_model_directory_is_served_too(servers):
    plain = shutil.copytree(servers["embed_run"] / "final", servers["tmp"] / "plain-embedder")
    (plain / "llmft_config.yaml").unlink()
    engine = load_encoder(plain, "plain", encoder_kind(plain))
    try:
        encoded = engine.submit(["hello"]).result(timeout=30)
        assert np.allclose(encoded.values[0], servers["bi"].encode("hello"), atol=1e-5)
    finally:
        engine.close()


def test_the_cli_refuses_generation_options_for_an_encoder_run(servers, monkeypatch):
    from llm_finetuning.cli.main import app

    monkeypatch.setattr("llm_finetuning.cli.serve_cmd.setup_logging", lambda: None)  # no handler left behind
    result = CliRunner().invoke(app, ["serve", str(servers["embed_run"]), "--adapter", "a=b", "--engine", "vllm"])
    assert result.exit_code == 2
    assert "--adapter" in result.output and "--engine vllm" in result.output


# ---------------------------------------------------------------------------------------------- embeddings


def test_models_and_metrics_list_the_served_model(servers):
    assert [m.id for m in servers["client"].models.list().data] == ["embed-run"]
    assert [m["id"] for m in servers["http"].get("/v1/models").json()["data"]] == ["rerank-run"]
    servers["client"].embeddings.create(model="embed-run", input="warm")
    metrics = servers["embed_http"].get("/metrics").text
    assert 'llmft_requests_total{endpoint="/v1/embeddings",status="200"}' in metrics


def test_embeddings_equal_local_encode_with_usage(servers):
    response = servers["client"].embeddings.create(model="embed-run", input=TEXTS, encoding_format="float")
    expected = servers["bi"].encode(TEXTS)
    assert response.object == "list" and response.model == "embed-run"
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert all(d.object == "embedding" for d in response.data)
    assert np.allclose(np.array([d.embedding for d in response.data]), expected, atol=1e-5)
    tokens = _tokens(servers["bi"], TEXTS)
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    assert tokens >= sum(len(servers["bi"].tokenizer(t)["input_ids"]) for t in TEXTS)


def test_base64_decodes_to_the_same_floats(servers):
    floats = servers["embed_http"].post("/v1/embeddings", json={"model": "embed-run", "input": TEXTS}).json()
    raw = servers["embed_http"].post(
        "/v1/embeddings", json={"model": "embed-run", "input": TEXTS, "encoding_format": "base64"}
    )
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw.json()["data"]]
    assert np.array_equal(np.array(decoded), np.array([d["embedding"] for d in floats["data"]], dtype=np.float32))
    # the openai client asks for base64 when no format is given and decodes it itself
    client = servers["client"].embeddings.create(model="embed-run", input="the cat sat on the mat")
    assert np.allclose(client.data[0].embedding, decoded[0], atol=1e-7)


def test_dimensions_truncate_then_normalise(servers):
    response = servers["client"].embeddings.create(model="embed-run", input=TEXTS, dimensions=8)
    vectors = np.array([d.embedding for d in response.data])
    full = servers["bi"].encode(TEXTS)[:, :8]
    assert vectors.shape == (len(TEXTS), 8)
    assert np.allclose(vectors, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_bad_embedding_requests_get_clear_4xx(servers):
    client = servers["client"]
    with pytest.raises(openai.BadRequestError, match="`dimensions` is 33, but this model's embeddings have 32"):
        client.embeddings.create(model="embed-run", input="x", dimensions=33)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError, match="token ids is not supported"):
        client.embeddings.create(model="embed-run", input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded|reads at most 128"):
        client.embeddings.create(model="embed-run", input=["short", "word " * 200])
    http = servers["embed_http"]
    for body, param in [
        ({"model": "embed-run", "input": []}, "input"),
        ({"model": "embed-run", "input": ["ok", ""]}, "input"),
        ({"model": "embed-run", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "embed-run", "input": "x", "truncate": True}, "truncate"),
        ({"input": "x"}, "model"),
    ]:
        assert _error(http.post("/v1/embeddings", json=body), 400)["param"] == param


def test_generation_endpoints_on_an_encoder_server_say_which_endpoint_to_use(servers):
    with pytest.raises(openai.NotFoundError, match="is an embedding model; this server answers POST /v1/embeddings"):
        servers["client"].chat.completions.create(model="embed-run", messages=[{"role": "user", "content": "hi"}])
    error = _error(servers["http"].post("/v1/embeddings", json={"model": "rerank-run", "input": "x"}), 404)
    assert "is a reranking model; this server answers POST /v1/rerank" in error["message"]
    assert _error(servers["http"].post("/v1/completions", json={}), 404)["type"] == "invalid_request_error"


def test_a_text_generation_server_says_it_does_not_embed_or_rerank():
    from llm_finetuning.config.schema import TinyModelConfig
    from llm_finetuning.models.tiny import build_model, build_tokenizer
    from llm_finetuning.serve.server import Engine

    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2), tokenizer)
    server, base = _start(Engine(model, tokenizer, "tiny-lm"))
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=30)
        with pytest.raises(openai.NotFoundError, match="serves text-generation models"):
            client.embeddings.create(model="tiny-lm", input="x")
        rerank = httpx.post(f"{base}/v1/rerank", json={}, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert _error(rerank, 404)["code"] == "unsupported_endpoint"
    finally:
        server.shutdown()
        server.server_close()


def test_the_key_and_body_limit_hold_for_encoder_routes(servers):
    wrong = httpx.post(f"{servers['embed_base']}/v1/embeddings", json={"model": "embed-run", "input": "x"}, timeout=10)
    assert _error(wrong, 401)["code"] == "invalid_api_key"
    big = servers["http"].post("/v1/rerank", content=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
    _error(big, 413)


def test_concurrent_embedding_requests_are_each_answered_correctly(servers):
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'markets'}" for i in range(16)]
    expected = servers["bi"].encode(texts)

    def ask(index: int) -> list[float]:
        response = servers["client"].embeddings.create(model="embed-run", input=texts[index], encoding_format="float")
        return response.data[0].embedding

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = np.array(list(pool.map(ask, range(len(texts)))))
    assert np.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- rerank


def test_rerank_scores_equal_cross_encoder_predict_in_descending_order(servers):
    response = servers["http"].post("/v1/rerank", json={"model": "rerank-run", "query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = servers["cross"].predict([(QUERY, d) for d in DOCUMENTS])
    results = body["results"]
    assert body["model"] == "rerank-run" and body["id"].startswith("rerank-")
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(abs(r["relevance_score"] - float(expected[r["index"]])) < 1e-5 for r in results)
    assert all(r["document"] == {"text": DOCUMENTS[r["index"]]} for r in results)
    pair_tokens = servers["cross"].preprocess([(QUERY, d) for d in DOCUMENTS])["attention_mask"].sum()
    assert body["usage"] == {"total_tokens": int(pair_tokens)}


def test_rerank_top_n_return_documents_and_aliases(servers):
    http = servers["http"]
    full = http.post("/v1/rerank", json={"model": "rerank-run", "query": QUERY, "documents": DOCUMENTS}).json()
    body = {"model": "rerank-run", "query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": False}
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        top = http.post(path, json=body).json()["results"]
        assert [r["index"] for r in top] == [r["index"] for r in full["results"][:2]]
        assert all("document" not in r for r in top)
    objects = http.post(
        "/v1/rerank", json={"model": "rerank-run", "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS]}
    ).json()
    assert [r["index"] for r in objects["results"]] == [r["index"] for r in full["results"]]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "rerank-run", "query": QUERY, "documents": []}, 400, "documents"),
        ({"model": "rerank-run", "documents": DOCUMENTS}, 400, "query"),
        ({"model": "nope", "query": QUERY, "documents": DOCUMENTS}, 404, "model"),
        ({"model": "rerank-run", "query": QUERY, "documents": ["a", 3]}, 400, "documents"),
        ({"model": "rerank-run", "query": QUERY, "documents": DOCUMENTS, "top_n": 0}, 400, "top_n"),
        ({"model": "rerank-run", "query": QUERY, "documents": DOCUMENTS, "rank_fields": ["x"]}, 400, "rank_fields"),
    ],
)
def test_bad_rerank_requests_get_clear_4xx(servers, body, status, param):
    assert _error(servers["http"].post("/v1/rerank", json=body), status)["param"] == param


def test_concurrent_rerank_requests_are_each_answered_correctly(servers):
    queries = [QUERY, "markets", "dogs at night", "mats"]
    expected = {q: servers["cross"].predict([(q, d) for d in DOCUMENTS]) for q in queries}

    def ask(query: str) -> dict[int, float]:
        body = {"model": "rerank-run", "query": query, "documents": DOCUMENTS}
        return {
            r["index"]: r["relevance_score"] for r in servers["http"].post("/v1/rerank", json=body).json()["results"]
        }

    with ThreadPoolExecutor(max_workers=4) as pool:
        for query, got in zip(queries * 2, pool.map(ask, queries * 2), strict=True):
            assert all(abs(got[i] - float(expected[query][i])) < 1e-5 for i in range(len(DOCUMENTS)))
