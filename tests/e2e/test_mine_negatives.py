"""`llmft data mine-negatives`: hard negatives from an embedding model, with the false-negative guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.data import mine_negatives as mining
from llm_finetuning.errors import DataError
from tests.conftest import shared
from tests.encoder_fixtures import tiny_sentence_transformer

pytestmark = pytest.mark.e2e

TOPICS = ["apple", "river", "engine", "violin", "planet", "doctor", "garden", "bridge", "castle", "forest"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_sentence_transformer(tmp_path_factory.mktemp("st") / "model")


def pairs(count: int = 10) -> list[dict]:
    return [{"query": f"about {TOPICS[i]}", "positive": f"{TOPICS[i]} text {i}", "id": i} for i in range(count)]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_adds_negatives_never_the_positive_and_keeps_columns(tmp_path, write_jsonl, model_dir):
    source = write_jsonl(pairs())
    output = tmp_path / "mined.jsonl"
    args = ["data", "mine-negatives", str(source), "--model", str(model_dir), "--output", str(output)]
    result = CliRunner().invoke(app, [*args, "--num-negatives", "2", "--relative-margin", "0"])
    assert result.exit_code == 0, result.output
    rows = read(output)
    assert [r["query"] for r in rows] == [p["query"] for p in pairs()]
    assert [r["id"] for r in rows] == list(range(10))  # other columns kept
    positives = {r["positive"] for r in rows}
    for row in rows:
        assert len(row["negatives"]) == 2 and row["positive"] not in row["negatives"]
        assert set(row["negatives"]) <= positives  # the corpus defaults to the positives
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "--overwrite" in again.output  # nothing replaced silently


def test_the_guard_drops_a_near_copy_of_the_positive(tmp_path, model_dir):
    """A corpus text identical to a row's positive scores as high as the positive: with the guard it is never taken
    as a negative; without it, it is the hardest negative there is."""
    rows = pairs(6)
    copy = rows[0]["positive"] + " "  # the same text for the model, a different corpus entry
    corpus = [r["positive"] for r in rows] + [copy]
    model = mining.load_embedder(str(model_dir))
    settings = [(r.get("where", "x"), r, r["query"], r["positive"]) for r in rows]
    guarded, _ = mining.mine(settings, model, mining.MiningSettings(num_negatives=2, relative_margin=0.05), corpus)
    unguarded, _ = mining.mine(settings, model, mining.MiningSettings(num_negatives=2, relative_margin=None), corpus)
    assert copy not in guarded[0]["negatives"]
    assert unguarded[0]["negatives"][0] == copy


def test_bad_rows_name_file_line_and_field_before_loading_a_model(tmp_path, write_jsonl):
    source = write_jsonl([*pairs(2), {"query": "q"}])
    with pytest.raises(DataError, match=r"data.jsonl:3: field `positive` is missing"):
        mining.read_pairs(source, mining.MiningSettings())
    source = write_jsonl([{"anchor": " ", "positive": "p"}], "b.jsonl")
    with pytest.raises(DataError, match=r"b.jsonl:1: field `anchor` is empty"):
        mining.read_pairs(source, mining.MiningSettings())


def test_min_negatives_drops_short_rows_and_counts_them(tmp_path, model_dir):
    rows = pairs(3)
    settings = [("x", r, r["query"], r["positive"]) for r in rows]
    model = mining.load_embedder(str(model_dir))
    out, report = mining.mine(settings, model, mining.MiningSettings(num_negatives=5, min_negatives=5))
    # 3 positives: at most 2 candidates per row, never 5
    assert out == [] and report.short_rows == 3 and report.dropped == 3


def test_pubmedqa_questions_against_their_abstracts(tmp_path, model_dir):
    data = json.loads(shared("pubmedqa/ori_pqal.json").read_text())
    rows = [{"query": r["QUESTION"], "positive": " ".join(r["CONTEXTS"])} for r in list(data.values())[:30]]
    source = tmp_path / "pubmedqa_pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "mined.jsonl"
    args = ["data", "mine-negatives", str(source), "--model", str(model_dir), "--output", str(output)]
    # A random model scores every abstract within 5% of the positive: the default guard keeps none of them.
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "30 rows got fewer than 3" in result.output
    # With the guard at 0, negatives are the abstracts scoring below each question's own.
    result = CliRunner().invoke(app, [*args, "--relative-margin", "0", "--overwrite"])
    assert result.exit_code == 0, result.output
    mined = read(output)
    assert len(mined) == 30 and sum(len(r["negatives"]) for r in mined) > 30
    assert all(len(r["negatives"]) <= 3 and r["positive"] not in r["negatives"] for r in mined)
