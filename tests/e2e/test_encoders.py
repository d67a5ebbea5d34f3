"""Embedding, reranker and classification training end to end on tiny models: what trains, what `final/` loads as,
and the before/after evaluation on held-out PubMedQA rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, TrainerCallback

from llm_finetuning.config import Config
from llm_finetuning.errors import ConfigError, DataError
from llm_finetuning.evaluation import encoder_tasks
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.train import train
from tests.conftest import shared

pytestmark = pytest.mark.e2e

BERT = {"name": "tiny", "tiny": {"architecture": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 4}}
LLAMA = {"name": "tiny", "tiny": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4}}
TOPICS = ["apple", "river", "engine", "violin", "planet", "doctor", "garden", "bridge", "castle", "forest", "ocean"]


class Watch(TrainerCallback):
    """Which parameters moved during training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.changed = {n for n, p in model.named_parameters() if not torch.equal(self.before[n], p.detach())}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}


def retrieval_rows(count: int = 33, negatives: int = 2) -> list[dict]:
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        others = [TOPICS[(i + k + 1) % len(TOPICS)] for k in range(negatives)]
        rows.append(
            {
                "query": f"tell me about {topic} number {i}",
                "positive": f"{topic} {topic}: a text on {topic} {i}",
                "negatives": [f"{o} {o}: a text on {o} {i}" for o in others],
            }
        )
    return rows


def config_for(tmp_path: Path, source: Path | dict, method: dict, model: dict = BERT, **sections) -> Config:
    train_source = {"path": str(source), "format": "retrieval"} if isinstance(source, Path) else source
    values = {
        "model": model,
        "adapter": sections.pop("adapter", "full"),
        "method": method,
        "data": {"train": train_source, "max_length": 64, **sections.pop("data", {})},
        "training": {"max_steps": 6, "per_device_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 2}
        | sections.pop("training", {}),
        "output_dir": str(tmp_path / "run"),
        **sections,
    }
    return Config.model_validate(values)


def run(config: Config) -> tuple[Path, Watch]:
    watch = Watch()
    assert train(config, callbacks=[watch]).status == "completed"
    return Path(config.output_dir), watch


# ------------------------------------------------------------------------------------------- embedding
@pytest.mark.parametrize(
    "method",
    [
        {"name": "embedding", "loss": "mnrl"},
        {"name": "embedding", "loss": "cached_mnrl", "mini_batch_size": 3},
        {"name": "embedding", "loss": "triplet"},
        {"name": "embedding", "loss": "mnrl", "matryoshka_dims": [16, 8]},
    ],
    ids=["mnrl", "cached_mnrl", "triplet", "matryoshka"],
)
def test_embedding_losses_train_every_weight_and_final_loads(tmp_path, write_jsonl, method):
    from sentence_transformers import SentenceTransformer

    config = config_for(tmp_path, write_jsonl(retrieval_rows()), method)
    run_dir, watch = run(config)
    assert watch.changed == watch.trainable and watch.trainable  # full fine-tuning: everything moved
    model = SentenceTransformer(str(run_dir / "final"))
    vectors = model.encode(["tell me about apple", "apple apple"])
    assert vectors.shape == (2, 32)
    assert torch.allclose(torch.tensor(vectors).norm(dim=-1), torch.ones(2), atol=1e-4)  # normalised
    if method.get("matryoshka_dims"):
        assert SentenceTransformer(str(run_dir / "final"), truncate_dim=8).encode(["apple"]).shape == (1, 8)


@pytest.mark.parametrize("loss", ["contrastive", "cosent"])
def test_embedding_pair_losses_read_scored_pairs(tmp_path, write_jsonl, loss):
    from sentence_transformers import SentenceTransformer

    rows = [
        {"sentence1": f"{t} one", "sentence2": f"{t} two" if i % 2 else f"{TOPICS[(i + 3) % 11]} two", "label": i % 2}
        for i, t in enumerate(TOPICS * 2)
    ]
    source = {"path": str(write_jsonl(rows)), "format": "scored_pair"}
    run_dir, watch = run(config_for(tmp_path, source, {"name": "embedding", "loss": loss}))
    assert watch.changed == watch.trainable
    assert SentenceTransformer(str(run_dir / "final")).encode(["x"]).shape == (1, 32)


def test_embedding_lora_on_a_decoder_merges_into_final(tmp_path, write_jsonl):
    """A decoder pools its last token; LoRA trains only adapter weights, and `final/` holds them merged."""
    from sentence_transformers import SentenceTransformer

    config = config_for(
        tmp_path,
        write_jsonl(retrieval_rows()),
        {"name": "embedding", "query_prompt": "query: "},
        model=LLAMA,
        adapter={"method": "lora", "r": 4, "alpha": 8},
    )
    run_dir, watch = run(config)
    assert watch.trainable and all("lora_" in name for name in watch.trainable)
    assert watch.changed == watch.trainable
    final = run_dir / "final"
    assert not (final / "adapter_config.json").exists()  # merged: no PEFT needed to load it
    pooling = json.loads((final / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "lasttoken"
    base = load_file(run_dir / "base" / "model.safetensors")
    merged = load_file(final / "model.safetensors")
    assert not any("lora" in key for key in merged)
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"], merged["layers.0.self_attn.q_proj.weight"])
    assert torch.equal(base["model.embed_tokens.weight"], merged["embed_tokens.weight"])  # not adapted: unchanged
    model = SentenceTransformer(str(final))
    assert model.prompts["query"] == "query: "  # saved with the model: encode_query adds it
    assert model.encode_query(["apple"]).shape == (1, 32)


def test_cls_pooling_on_a_decoder_is_refused_before_training(tmp_path, write_jsonl):
    config = config_for(tmp_path, write_jsonl(retrieval_rows()), {"name": "embedding", "pooling": "cls"}, model=LLAMA)
    with pytest.raises(ConfigError, match="method.pooling: `cls`.*decoder.*lasttoken"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "q"}, r"data.jsonl:3: field `positive` is missing"),
        ({"query": "  ", "positive": "p"}, r"data.jsonl:3: field `query` is empty"),
        ({"query": "q", "positive": "p", "negatives": ["n", ""]}, r"data.jsonl:3: negative 2 is empty"),
        ({"query": "q", "positive": "p", "negatives": ["p"]}, r"data.jsonl:3: the positive is also listed"),
    ],
    ids=["no-positive", "empty-query", "empty-negative", "positive-as-negative"],
)
def test_bad_retrieval_rows_name_file_line_and_field(tmp_path, write_jsonl, row, message):
    rows = retrieval_rows(2)
    config = config_for(tmp_path, write_jsonl([*rows, row]), {"name": "embedding"})
    with pytest.raises(DataError, match=message):
        train(config)
    assert not (tmp_path / "run" / "base").exists()  # stopped before building any model


def test_triplet_needs_a_negative_in_every_row(tmp_path, write_jsonl):
    rows = retrieval_rows(3)
    rows[1]["negatives"] = []
    config = config_for(tmp_path, write_jsonl(rows), {"name": "embedding", "loss": "triplet"})
    with pytest.raises(DataError, match=r"data.jsonl:2: field `negative`: loss `triplet` needs a negative"):
        train(config)


# -------------------------------------------------------------------------------------------- reranker
@pytest.mark.parametrize("loss", ["bce", "lambda", "listnet", "mnrl"])
def test_reranker_losses_train_and_final_loads_as_cross_encoder(tmp_path, write_jsonl, loss):
    from sentence_transformers import CrossEncoder

    run_dir, watch = run(config_for(tmp_path, write_jsonl(retrieval_rows()), {"name": "reranker", "loss": loss}))
    assert watch.changed == watch.trainable and any("classifier" in n for n in watch.changed)
    model = CrossEncoder(str(run_dir / "final"))
    scores = model.predict([("tell me about apple", "apple apple"), ("tell me about apple", "river river")])
    assert scores.shape == (2,)


def test_reranker_needs_negatives_for_bce(tmp_path, write_jsonl):
    rows = retrieval_rows(3, negatives=0)
    with pytest.raises(DataError, match=r"data.jsonl:1: field `negatives`: loss `bce` needs hard negatives"):
        train(config_for(tmp_path, write_jsonl(rows), {"name": "reranker"}))


# -------------------------------------------------------------------------------------------- classify
def labelled(count: int = 60, multi: bool = False) -> list[dict]:
    words = {"pos": "good great fine", "neg": "bad awful poor", "neu": "table chair lamp"}
    rows = []
    for i in range(count):
        label = ["pos", "neg", "neu"][i % 3]
        text = f"{words[label]} {i}"
        rows.append({"text": text, "label": [label, "any"] if multi else label})
    return rows


def test_classify_trains_head_and_backbone_and_reports_per_class_and_confusion(tmp_path, write_jsonl):
    source = {"path": str(write_jsonl(labelled())), "format": "labeled_text"}
    config = config_for(
        tmp_path,
        source,
        {"name": "classify", "labels": ["neg", "neu", "pos"]},
        data={"eval_split": 0.25},
        training={"max_steps": 30},
    )
    run_dir, watch = run(config)
    assert watch.changed == watch.trainable and any(n.startswith("classifier") for n in watch.changed)
    report = json.loads((run_dir / "eval" / "classification.json").read_text())
    assert set(report["after"]["per_class"]) == {"neg", "neu", "pos"}
    assert report["after"]["macro_f1"] > report["before"]["macro_f1"]
    assert sum(map(sum, report["after"]["confusion"])) == 15  # every held-out row counted once
    assert (run_dir / "plots" / "confusion_matrix.png").stat().st_size > 1000
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "final")
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}


def test_classify_lora_on_a_decoder_with_balanced_weights(tmp_path, write_jsonl):
    from llm_finetuning.methods.classify import class_weights

    rows = labelled(30)[:24] + [{"text": "rare 1", "label": "rare"}, {"text": "rare 2", "label": "rare"}]
    source = {"path": str(write_jsonl(rows)), "format": "labeled_text"}
    config = config_for(
        tmp_path,
        source,
        {"name": "classify", "class_weights": "balanced"},
        model=LLAMA,
        adapter={"method": "lora", "r": 4, "alpha": 8},
    )
    records = [("x", r) for r in rows]
    weights = class_weights(config, ["neg", "neu", "pos", "rare"], records)
    # 26 rows over 4 classes: 8 neg, 8 neu, 8 pos, 2 rare -> 26 / (4 * count)
    assert torch.allclose(weights, torch.tensor([26 / 32, 26 / 32, 26 / 32, 26 / 8]))
    run_dir, watch = run(config)
    assert all("lora_" in n or "score" in n for n in watch.trainable)  # the head trains in full
    assert watch.changed == watch.trainable
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "final")
    assert model.config.num_labels == 4 and model.config.pad_token_id is not None


def test_classify_multi_label(tmp_path, write_jsonl):
    source = {"path": str(write_jsonl(labelled(30, multi=True))), "format": "labeled_text"}
    config = config_for(
        tmp_path, source, {"name": "classify", "multi_label": True, "threshold": 0.4}, data={"eval_split": 0.2}
    )
    run_dir, _ = run(config)
    report = json.loads((run_dir / "eval" / "classification.json").read_text())
    assert report["multi_label"] and set(report["labels"]) == {"any", "neg", "neu", "pos"}
    assert "micro_f1" in report["after"]
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "final")
    assert model.config.problem_type == "multi_label_classification"


@pytest.mark.parametrize(
    ("row", "method", "message"),
    [
        ({"text": "x", "label": "other"}, {"labels": ["neg", "neu", "pos"]}, r"data.jsonl:61: field `label`: 'other'"),
        ({"text": "x", "label": ["pos", "neg"]}, {}, r"data.jsonl:61: .*set `method.multi_label: true`"),
        ({"text": "", "label": "pos"}, {}, r"data.jsonl:61: field `text` is empty"),
        ({"text": "x", "label": 0.5}, {}, r"data.jsonl:61: field `label` is the number 0.5"),
    ],
    ids=["outside-declared", "list-without-multi-label", "empty-text", "number"],
)
def test_bad_classification_rows_fail_before_training(tmp_path, write_jsonl, row, method, message):
    source = {"path": str(write_jsonl([*labelled(), row])), "format": "labeled_text"}
    with pytest.raises(DataError, match=message):
        train(config_for(tmp_path, source, {"name": "classify", **method}))
    assert not (tmp_path / "run" / "base").exists()


def test_adapters_that_do_not_apply_are_refused(tmp_path, write_jsonl):
    config = config_for(tmp_path, write_jsonl(retrieval_rows()), {"name": "embedding"}, adapter={"method": "ia3"})
    with pytest.raises(ConfigError, match="adapter.method: `ia3` is not available with `method: embedding`"):
        train(config)


# --------------------------------------------------------------------- before/after on held-out PubMedQA
def pubmedqa_split(tmp_path: Path, train_rows: int, held_out: int) -> tuple[Path, Path]:
    """The first rows of PQA-L to train on and later rows, never trained on, to evaluate, both in its own layout."""
    data = json.loads(shared("pubmedqa/ori_pqal.json").read_text())
    keys = list(data)
    train_path, eval_path = tmp_path / "pubmedqa_train.json", tmp_path / "pubmedqa_heldout.json"
    train_path.write_text(json.dumps({k: data[k] for k in keys[:train_rows]}))
    eval_path.write_text(json.dumps({k: data[k] for k in keys[-held_out:]}))
    return train_path, eval_path


CLASSIFY = {"per_device_batch_size": 32, "learning_rate": 1e-4, "lr_scheduler": "constant", "max_steps": 40}


def test_fine_tuned_models_beat_their_start_on_held_out_pubmedqa(tmp_path):
    """The before/after table of the issue: an embedding model, a reranker and a classifier (tiny BERTs with the
    GPT-2 tokenizer), each trained on 400 PubMedQA rows and measured on 60 rows it never saw, against its own
    starting point."""
    train_path, eval_path = pubmedqa_split(tmp_path, 400, 60)
    source = {"dataset": "pubmedqa", "path": str(train_path)}
    # The reranker learns from hard negatives: for each training question, 3 other abstracts that share the most
    # words with it (held-out rows are never among them).
    rows, _ = encoder_tasks.load_rows(EvalTaskConfig(name="pubmedqa_rerank", path=str(train_path)), "rerank", None)
    mined = tmp_path / "mined.jsonl"
    mined.write_text("".join(json.dumps(r) + "\n" for _, r in encoder_tasks.lexical_negatives(rows, 4)))
    model = {**BERT, "tokenizer": str(shared("tokenizers/gpt2"))}
    schedule = {"per_device_batch_size": 32, "learning_rate": 5e-4, "lr_scheduler": "constant", "max_steps": 40}
    cases = [
        ({"name": "embedding"}, source, "pubmedqa_retrieval", "ndcg@10", schedule),
        (
            {"name": "reranker", "loss": "lambda"},
            {"path": str(mined), "format": "retrieval"},
            "pubmedqa_rerank",
            "ndcg@10",
            schedule | {"per_device_batch_size": 16, "learning_rate": 1e-3},
        ),
        ({"name": "classify", "class_weights": "balanced"}, source, "pubmedqa_classify", "macro_f1", CLASSIFY),
    ]
    table = {}
    for method, data, task, metric, training in cases:
        out = tmp_path / method["name"]
        config = config_for(out, data, method, model=model, data={"max_length": 128}, training=training)
        run(config)
        tasks = [EvalTaskConfig(name=task, path=str(eval_path))]
        result = encoder_tasks.before_after(out / "run", tasks, batch_size=32)
        table[task] = result[f"{task}/{metric}"]
        assert (out / "run" / "eval" / "before_after.md").is_file()
    print("\nheld-out PubMedQA, tiny model:", json.dumps(table, indent=1))
    for task, values in table.items():
        assert values["after"] > values["before"], (task, values)


# ----------------------------------------------------------------------------------------- check, estimate
def test_check_reports_what_training_would_refuse(tmp_path, write_jsonl):
    from llm_finetuning.check.preflight import run_checks

    rows = retrieval_rows(4)
    rows[2]["negatives"] = []
    config = config_for(tmp_path, write_jsonl(rows), {"name": "embedding", "loss": "triplet"})
    report = run_checks(config)
    errors = [f.message for f in report.findings if f.level == "error"]
    assert any("data.jsonl:3: field `negative`: loss `triplet`" in e for e in errors), errors
    source = {
        "path": str(write_jsonl([*labelled(9), {"text": "x", "label": "other"}], "l.jsonl")),
        "format": "labeled_text",
    }
    report = run_checks(config_for(tmp_path, source, {"name": "classify", "labels": ["neg", "neu", "pos"]}))
    assert any("l.jsonl:10: field `label`: 'other'" in f.message for f in report.findings if f.level == "error")
    good = run_checks(config_for(tmp_path, write_jsonl(retrieval_rows()), {"name": "embedding"}))
    assert not [f for f in good.findings if f.level == "error"]


def test_estimate_counts_an_encoder_from_its_config_json(tmp_path):
    from llm_finetuning.estimate import estimate
    from tests.encoder_fixtures import tiny_encoder_dir

    encoder = tiny_encoder_dir(tmp_path / "encoder", hidden_size=64)
    model = {"name": str(encoder)}
    for method in ({"name": "embedding"}, {"name": "reranker"}, {"name": "classify"}):
        config = config_for(tmp_path, tmp_path / "unused.jsonl", method, model=model)
        result = estimate(config)
        assert result.plan.loss == "score" and result.plan.shape.head == "sequence_classification"
        assert result.plan.sequences == (24 if method["name"] == "embedding" else 8)
        assert result.memory.total > 0


def test_eval_tasks_run_on_final_after_training_and_wrong_ones_are_refused(tmp_path, write_jsonl):
    held_out = write_jsonl(retrieval_rows(12), "held_out.jsonl")
    tasks = [{"name": "retrieval", "path": str(held_out)}, {"name": "rerank", "path": str(held_out)}]
    config = config_for(tmp_path, write_jsonl(retrieval_rows()), {"name": "embedding"}, eval={"tasks": tasks[:1]})
    run_dir, _ = run(config)
    result = json.loads((run_dir / "eval" / "retrieval.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["final_metrics"]["eval/retrieval/ndcg@10"] == result["metrics"]["ndcg@10"]
    wrong = config_for(tmp_path / "b", write_jsonl(retrieval_rows()), {"name": "embedding"}, eval={"tasks": tasks[1:]})
    with pytest.raises(ConfigError, match="eval.tasks: rerank cannot evaluate a `embedding` model; use"):
        train(wrong)


@pytest.mark.parametrize("method", [{"name": "embedding"}, {"name": "reranker"}, {"name": "classify"}])
def test_a_modernbert_encoder_trains_with_lora_for_every_method(tmp_path, write_jsonl, method):
    from tests.encoder_fixtures import tiny_modernbert_dir

    encoder = tiny_modernbert_dir(tmp_path / "modernbert")
    if method["name"] == "classify":
        source = {"path": str(write_jsonl(labelled(24))), "format": "labeled_text"}
    else:
        source = write_jsonl(retrieval_rows(24))
    config = config_for(
        tmp_path, source, method, model={"name": str(encoder)}, adapter={"method": "lora", "r": 4, "alpha": 8}
    )
    run_dir, watch = run(config)
    assert watch.trainable and watch.changed == watch.trainable
    assert all("lora_" in n or "classifier" in n or "head" in n for n in watch.trainable), sorted(watch.trainable)
    assert not (run_dir / "final" / "adapter_config.json").exists()
    assert encoder_tasks.model_kind(run_dir) == method["name"]
    loaded = encoder_tasks.load_model(run_dir, method["name"])
    assert loaded is not None
