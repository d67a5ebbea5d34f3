"""`method: multi_head`: one shared backbone, several heads with their own data, losses and weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from llm_finetuning.config import Config
from llm_finetuning.errors import ConfigError, DataError
from llm_finetuning.models.multihead import HeadSpec, MultiHeadModel, pool
from llm_finetuning.train import train

pytestmark = pytest.mark.e2e

BERT = {"name": "tiny", "tiny": {"architecture": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 4}}
LLAMA = {"name": "tiny", "tiny": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4}}
WORDS = {"sport": "ball goal team match", "food": "bread soup cook taste", "tech": "chip code byte disk"}


class Watch(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.changed = {n for n, p in model.named_parameters() if not torch.equal(self.before[n], p.detach())}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}


def topic_rows(count: int) -> list[dict]:
    topics = list(WORDS)
    return [{"text": f"{WORDS[topics[i % 3]]} {i}", "label": topics[i % 3]} for i in range(count)]


def count_rows(count: int) -> list[dict]:
    """The target is the number of `x` in the text: something the model must read to predict."""
    return [{"text": "x " * (i % 6) + f"row {i}", "label": float(i % 6)} for i in range(count)]


def text_rows(count: int) -> list[dict]:
    return [{"text": "the cat sat on the mat. " * 2} for _ in range(count)]


def config_for(
    tmp_path: Path, heads: list[dict], train: list[dict], evaluation: list[dict], model=BERT, **extra
) -> Config:
    return Config.model_validate(
        {
            "model": model,
            "adapter": extra.pop("adapter", "full"),
            "method": {"name": "multi_head", "heads": heads, **extra.pop("method", {})},
            "data": {"train": train, "eval": evaluation, "max_length": 48},
            "training": {
                "max_steps": 40,
                "per_device_batch_size": 8,
                "learning_rate": 2e-3,
                "lr_scheduler": "constant",
            },
            "output_dir": str(tmp_path / "run"),
            **extra,
        }
    )


def sources(write_jsonl, head: str, rows: list[dict], held_out: list[dict], fmt: str = "labeled_text"):
    return (
        {"path": str(write_jsonl(rows, f"{head}.jsonl")), "format": fmt, "head": head},
        {"path": str(write_jsonl(held_out, f"{head}_eval.jsonl")), "format": fmt, "head": head},
    )


def test_classification_and_regression_heads_share_an_encoder(tmp_path, write_jsonl):
    topic, topic_eval = sources(write_jsonl, "topic", topic_rows(48), topic_rows(12))
    count, count_eval = sources(write_jsonl, "count", count_rows(48), count_rows(12))
    heads = [
        {"name": "topic", "type": "classification", "labels": list(WORDS)},
        {"name": "count", "type": "regression", "weight": 0.5},
    ]
    config = config_for(tmp_path, heads, [topic, count], [topic_eval, count_eval])
    watch = Watch()
    assert train(config, callbacks=[watch]).status == "completed"
    assert watch.changed == watch.trainable
    assert {"heads.topic.weight", "heads.count.weight"} <= watch.changed
    assert any(n.startswith("backbone.") for n in watch.changed)
    run_dir = Path(config.output_dir)
    report = json.loads((run_dir / "eval" / "multi_head.json").read_text())
    assert report["after"]["topic"]["macro_f1"] > report["before"]["topic"]["macro_f1"]
    assert report["after"]["count"]["rmse"] < report["before"]["count"]["rmse"]
    assert (run_dir / "plots" / "confusion_topic.png").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "eval/topic/accuracy" in manifest["final_metrics"] and "eval/count/pearson_r" in manifest["final_metrics"]

    # final/ reloads exactly; each head works alone; the backbone loads with plain transformers.
    final = run_dir / "final"
    model = MultiHeadModel.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    batch = tokenizer(["ball goal team match 1", "x x x row"], padding=True, return_tensors="pt")
    with torch.no_grad():
        full = model(batch["input_ids"], batch["attention_mask"], "topic")["logits"]
        alone = model.head("topic")(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(full, alone)
    assert model.head("topic").predict(["ball goal team match 7"], tokenizer) == ["sport"]
    assert isinstance(model.head("count").predict(["x x row"], tokenizer)[0], float)
    backbone = AutoModel.from_pretrained(final)
    assert torch.allclose(
        backbone(**batch).last_hidden_state, model.hidden(batch["input_ids"], batch["attention_mask"]), atol=1e-6
    )


def test_classification_and_language_modelling_on_a_decoder_with_lora(tmp_path, write_jsonl):
    topic, topic_eval = sources(write_jsonl, "topic", topic_rows(48), topic_rows(12))
    lm, lm_eval = sources(write_jsonl, "lm", text_rows(24), text_rows(4), fmt="text")
    heads = [{"name": "topic", "type": "classification", "labels": list(WORDS)}, {"name": "lm", "type": "lm"}]
    config = config_for(
        tmp_path,
        heads,
        [topic, lm],
        [topic_eval, lm_eval],
        model=LLAMA,
        adapter={"method": "lora", "r": 8, "alpha": 16},
    )
    watch = Watch()
    assert train(config, callbacks=[watch]).status == "completed"
    assert all("lora_" in n or n.startswith("heads.") for n in watch.trainable)
    assert watch.changed == watch.trainable
    report = json.loads((Path(config.output_dir) / "eval" / "multi_head.json").read_text())
    assert report["after"]["lm"]["perplexity"] < report["before"]["lm"]["perplexity"]
    assert report["after"]["topic"]["accuracy"] > report["before"]["topic"]["accuracy"]
    final = Path(config.output_dir) / "final"
    causal = AutoModelForCausalLM.from_pretrained(final)  # LoRA merged: a plain causal LM
    assert not any("lora" in n for n, _ in causal.named_parameters())
    model = MultiHeadModel.from_pretrained(final)
    assert isinstance(model.head("lm"), type(causal))
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("the cat", return_tensors="pt")["input_ids"]
    assert model.head("lm").generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_a_head_weight_scales_its_loss():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    one = MultiHeadModel(backbone, [HeadSpec("a", "classification", ["x", "y"], weight=1.0)], "auto", decoder=False)
    two = MultiHeadModel(backbone, [HeadSpec("a", "classification", ["x", "y"], weight=2.0)], "auto", decoder=False)
    two.heads.load_state_dict(one.heads.state_dict())
    ids, mask, labels = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.tensor([0, 1])
    one.eval(), two.eval()
    assert torch.allclose(two(ids, mask, "a", labels)["loss"], 2 * one(ids, mask, "a", labels)["loss"])


def test_pooling_picks_the_last_real_token_on_either_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "lasttoken").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "lasttoken").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


@pytest.mark.parametrize(
    ("head", "row", "message"),
    [
        (
            {"name": "topic", "type": "classification", "labels": ["a", "b"]},
            {"text": "t", "label": "c"},
            "'c' is not in the labels of head `topic`",
        ),
        (
            {"name": "score", "type": "regression"},
            {"text": "t", "label": "high"},
            "head `score` \\(regression\\) needs a number",
        ),
    ],
)
def test_bad_labels_name_file_line_and_field(tmp_path, write_jsonl, head, row, message):
    good = {"text": "t", "label": "a"} if head["type"] == "classification" else {"text": "t", "label": 1.0}
    source = {
        "path": str(
            write_jsonl([good, row]),
        ),
        "format": "labeled_text",
        "head": head["name"],
    }
    with pytest.raises(DataError, match=rf"data.jsonl:2: field `label`.*{message}|data.jsonl:2: .*{message}"):
        train(config_for(tmp_path, [head], [source], []))


def test_cls_pooling_on_a_decoder_and_unknown_heads_are_refused(tmp_path, write_jsonl):
    source = {"path": str(write_jsonl(topic_rows(6))), "format": "labeled_text", "head": "topic"}
    heads = [{"name": "topic", "type": "classification", "labels": list(WORDS)}]
    with pytest.raises(ConfigError, match="method.pooling: `cls`.*decoder"):
        train(config_for(tmp_path, heads, [source], [], model=LLAMA, method={"pooling": "cls"}))
    with pytest.raises(ValueError, match="`head: topc` is not in `method.heads`.*Did you mean `topic`"):
        config_for(tmp_path, heads, [{**source, "head": "topc"}], [])


class Steps(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 8:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, write_jsonl):
    """Checkpoints hold the whole module (backbone, heads, optimizer state): resumed equals uninterrupted."""
    from safetensors.torch import load_file

    topic, _ = sources(write_jsonl, "topic", topic_rows(24), topic_rows(3))
    count, _ = sources(write_jsonl, "count", count_rows(24), count_rows(3))
    heads = [
        {"name": "topic", "type": "classification", "labels": list(WORDS)},
        {"name": "count", "type": "regression"},
    ]
    finals = []
    for name, interrupt in (("straight", False), ("resumed", True)):
        config = config_for(tmp_path / name, heads, [topic, count], [])
        schedule = {"max_steps": 12, "save_steps": 6, "logging_steps": 3}  # logs line up with checkpoints
        config = config.model_copy(update={"training": config.training.model_copy(update=schedule)})
        if interrupt:
            with pytest.raises(KeyboardInterrupt):
                train(config, callbacks=[Interrupt()])
            steps = Steps()
            assert train(config, resume=True, callbacks=[steps]).status == "completed"
            assert steps.steps == list(range(7, 13))  # continued from checkpoint-6, not from the start
        else:
            assert train(config).status == "completed"
        finals.append(Path(config.output_dir) / "final")
    straight, resumed = (json.loads((f.parent / "manifest.json").read_text())["final_metrics"] for f in finals)
    assert resumed["resumed_from_step"] == 6 and "resumed_from_step" not in straight
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], abs=1e-5)  # the whole run's loss
    assert resumed["session_train_loss"] != pytest.approx(straight["train_loss"], abs=1e-5)  # not steps 7-12 alone
    assert resumed["train_runtime"] > resumed["session_train_runtime"]
    for file in ("heads.safetensors", "model.safetensors"):
        a, b = load_file(finals[0] / file), load_file(finals[1] / file)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), file


def test_check_reports_a_label_outside_a_heads_labels(tmp_path, write_jsonl):
    from llm_finetuning.check.preflight import run_checks

    rows = [*topic_rows(6), {"text": "t", "label": "music"}]
    source = {"path": str(write_jsonl(rows)), "format": "labeled_text", "head": "topic"}
    heads = [{"name": "topic", "type": "classification", "labels": list(WORDS)}]
    report = run_checks(config_for(tmp_path, heads, [source], []))
    errors = [f.message for f in report.findings if f.level == "error"]
    assert any("data.jsonl:7: field `label`: 'music' is not in the labels of head `topic`" in e for e in errors), errors
