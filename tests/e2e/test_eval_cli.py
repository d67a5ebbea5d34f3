"""`llmft eval` and the `eval:` section end to end on tiny models: tasks on a run (results equal the library's),
the golden set failing a deliberately worse model with a per-item diff and passing within tolerance, the
before/after report over base, adapter, merged and GGUF export (merged and GGUF equal the adapter), and tasks
during and after training, with a golden regression failing the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config import Config
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.evaluation.callback import GoldenRegression
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.runner import evaluate_task
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.serve.generation import load_for_inference
from llm_finetuning.train import train
from tests.conftest import shared, tiny_config

pytestmark = pytest.mark.e2e

QUESTION = "Capital of France?"
GOLDEN = {"tolerance": 0.0, "max_new_tokens": 6, "items": [{"id": "france", "prompt": QUESTION, "contains": "Paris"}]}
SHAPE = TinyModelConfig(hidden_size=32, num_heads=2, num_layers=2, seed=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained tiny model and the same model taught (plain torch loop) to answer "Paris"."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = build_tokenizer()
    base = build_model(SHAPE, tokenizer)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    taught = build_model(SHAPE, tokenizer)
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Paris"}]
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), return_tensors="pt")["input_ids"]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    labels = ids.clone()
    labels[:, : len(tokenizer(prompt)["input_ids"])] = -100
    optimizer = torch.optim.Adam(taught.parameters(), lr=1e-2)
    for _ in range(40):
        taught(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    taught.save_pretrained(root / "paris")
    tokenizer.save_pretrained(root / "paris")
    return root / "base", root / "paris"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("evalrun")
    rows = [{"prompt": f"Spell {w}", "completion": " ".join(w.upper())} for w in ["alpha", "bravo", "delta"] * 6]
    (tmp / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config(tmp / "d.jsonl", tmp / "run", training={"max_steps": 6, "learning_rate": 5e-2})
    assert train(Config.model_validate(config)).status == "completed"
    return tmp / "run"


def invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_eval_command_runs_tasks_on_a_run(run):
    gsm8k, arc = shared("gsm8k/test.jsonl"), shared("arc/ARC-Challenge-Dev.jsonl")
    outcome = invoke(
        run, "--tasks", "gsm8k_accuracy,arc_loglik", "--path", f"gsm8k_accuracy={gsm8k}", "--path", f"arc_loglik={arc}",
        "--limit", "2", "--max-new-tokens", "4",
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    assert "gsm8k_accuracy" in outcome.output and "acc_norm" in outcome.output
    saved = json.loads((run / "eval" / "arc_loglik.json").read_text())
    model, tokenizer = load_for_inference(run)
    expected = evaluate_task(model, tokenizer, EvalTaskConfig(name="arc_loglik", path=str(arc), limit=2))
    assert saved["metrics"] == pytest.approx(expected.metrics)
    for got, want in zip(saved["examples"], expected.examples, strict=True):
        assert got["logprobs"] == pytest.approx(want["logprobs"])
    gsm = json.loads((run / "eval" / "gsm8k_accuracy.json").read_text())
    assert len(gsm["examples"]) == 2 and gsm["settings"]["max_new_tokens"] == 4


def test_eval_command_errors_are_short(run):
    outcome = invoke(run, "--tasks", "gsm8k_acuracy")
    assert outcome.exit_code == 2 and "Did you mean `gsm8k_accuracy`" in outcome.output
    outcome = invoke(run, "--tasks", "gsm8k_accuracy", "--path", "arc_loglik=x.jsonl")
    assert outcome.exit_code == 2 and "not being run: arc_loglik" in outcome.output
    outcome = invoke(run)
    assert outcome.exit_code == 2 and "--tasks" in outcome.output
    outcome = invoke(run, "--golden", "g.yaml", "--tasks", "gsm8k_accuracy")
    assert outcome.exit_code == 2 and "--golden and --tasks are separate evaluations" in outcome.output


def test_golden_regression_exits_non_zero_with_a_per_item_diff(models, tmp_path):
    base, paris = models
    golden = tmp_path / "golden.yaml"
    golden.write_text(yaml.safe_dump(GOLDEN))
    # The untrained model against the one that answers "Paris": the item regresses.
    worse = invoke(base, "--golden", golden, "--baseline", paris, "--output", tmp_path / "out")
    assert worse.exit_code == 1, worse.output
    assert "regressed" in worse.output and "france" in worse.output and "REGRESSION" in worse.output
    report = json.loads((tmp_path / "out" / "golden.json").read_text())
    item = report["items"][0]
    assert (item["status"], item["baseline_pass"], item["candidate_pass"]) == ("regressed", True, False)
    assert "Paris" in item["baseline_output"] and "Paris" not in item["candidate_output"]
    assert (report["baseline_pass_rate"], report["candidate_pass_rate"], report["regressed"]) == (1.0, 0.0, True)
    # Within tolerance, and the other way round (the fine-tuned model fixed the item), the check passes.
    assert (
        invoke(base, "--golden", golden, "--baseline", paris, "--tolerance", "1", "--output", tmp_path).exit_code == 0
    )
    better = invoke(paris, "--golden", golden, "--baseline", base, "--output", tmp_path / "b")
    assert better.exit_code == 0, better.output
    assert json.loads((tmp_path / "b" / "golden.json").read_text())["items"][0]["status"] == "fixed"


def test_before_after_report_over_base_adapter_merged_and_gguf(run, tmp_path):
    from llm_finetuning.export.gguf import export_gguf
    from llm_finetuning.export.lora_merge import merge_run

    merge_run(run)
    export_gguf(run, run / "export-gguf", "f32")
    document = tmp_path / "doc.txt"
    document.write_text("Spell alpha: A L P H A. Spell delta: D E L T A. " * 3)
    arc = shared("arc/ARC-Easy-Dev.jsonl")
    outcome = invoke(
        run, "--before-after", "--tasks", "perplexity,arc_loglik", "--path", f"perplexity={document}",
        "--path", f"arc_loglik={arc}", "--limit", "2",
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    data = json.loads((run / "eval" / "before_after.json").read_text())
    assert list(data["variants"]) == ["base", "adapter", "merged", "gguf"]
    ppl = data["metrics"]["perplexity/perplexity"]
    assert ppl["merged"] == pytest.approx(ppl["adapter"], rel=1e-4)
    assert ppl["gguf"] == pytest.approx(ppl["adapter"], rel=1e-4)  # f32 export: the same model
    assert abs(ppl["base"] - ppl["adapter"]) > 1e-2 * ppl["base"]  # training changed it
    table = (run / "eval" / "before_after.md").read_text()
    assert table.splitlines()[0] == "| task / metric | base | adapter | merged | gguf | gguf - base |"
    assert any(line.startswith("| arc_loglik/acc |") for line in table.splitlines())
    assert (run / "plots" / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "eval" / "base" / "perplexity.json").is_file() and (
        run / "eval" / "gguf" / "arc_loglik.json"
    ).is_file()
    missing = invoke(
        run, "--before-after", "--tasks", "perplexity", "--path", f"perplexity={document}", "--variants", "full"
    )
    assert missing.exit_code == 2 and "no full variant" in missing.output


def test_eval_section_runs_during_and_after_training_and_a_golden_regression_fails_the_run(models, tmp_path):
    _, paris = models
    rows = [{"prompt": f"Spell {w}", "completion": " ".join(w.upper())} for w in ["alpha", "bravo"] * 4]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    golden = tmp_path / "golden.yaml"
    golden.write_text(yaml.safe_dump(GOLDEN))
    section = {
        "tasks": [{"name": "rouge_bleu", "path": str(data), "limit": 2, "max_new_tokens": 4}],
        "tasks_every_steps": 1,
        "golden": {"path": str(golden), "baseline": str(paris)},
    }
    config = Config.model_validate(tiny_config(data, tmp_path / "run", training={"max_steps": 2}, eval=section))
    with pytest.raises(GoldenRegression, match="golden set .*regressed items: france"):
        train(config)
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "GoldenRegression" in manifest["error"]
    assert manifest["eval"]["golden"]["regressed"] and "rouge_bleu" in manifest["eval"]["tasks"]
    assert (run / "final" / "adapter_config.json").is_file()  # the model is kept for inspection
    assert json.loads((run / "eval" / "golden.json").read_text())["items"][0]["status"] == "regressed"
    for step in (1, 2):
        assert (run / "eval" / f"step-{step}" / "rouge_bleu.json").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [line["step"] for line in lines if "eval/rouge_bleu/rougeL" in line]
    assert logged == [1, 2, 2]  # during training at each step, then the final model
    final = json.loads((run / "eval" / "rouge_bleu.json").read_text())
    assert lines[-1]["eval/rouge_bleu/bleu"] == final["metrics"]["bleu"]
    # `llmft eval RUN` without --tasks runs the run's own eval.tasks.
    outcome = invoke(run, "--output", tmp_path / "again")
    assert outcome.exit_code == 0, outcome.output
    again = json.loads((tmp_path / "again" / "rouge_bleu.json").read_text())
    assert [e["output"] for e in again["examples"]] == [e["output"] for e in final["examples"]]


def test_eval_command_reports_examples_skipped_or_truncated_to_fit_a_short_context(tmp_path):
    """A 64-token model: generation prompts that leave no room for the answer are skipped and counted, ARC
    questions (all longer than 64 tokens) are scored on their cut context and counted; the run succeeds."""
    tokenizer = build_tokenizer()
    shape = TinyModelConfig(hidden_size=32, num_heads=2, seed=4, max_position_embeddings=64)
    build_model(shape, tokenizer).save_pretrained(tmp_path / "short")
    tokenizer.save_pretrained(tmp_path / "short")
    # ChatML adds 19 tokens to a user message (byte-level tokens): with 8 new tokens, up to 37 bytes fit.
    prompts = ["Hi", "x" * 100, "Name a colour", "y" * 38]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "completion": "ok"}) + "\n" for p in prompts))
    arc = shared("arc/ARC-Challenge-Dev.jsonl")
    outcome = invoke(
        tmp_path / "short", "--tasks", "rouge_bleu,arc_loglik", "--path", f"rouge_bleu={rows}",
        "--path", f"arc_loglik={arc}", "--limit", "3", "--max-new-tokens", "8", "--output", tmp_path / "out",
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    text = " ".join(outcome.output.split())
    assert "rouge_bleu: 1 skipped as too long for the model's context of 64 tokens; 2 scored" in text
    assert "arc_loglik: 3 with context cut from the left to fit 64 tokens (`truncated`); 3 scored" in text
    saved = json.loads((tmp_path / "out" / "rouge_bleu.json").read_text())
    assert saved["metrics"]["skipped_too_long"] == 1 and saved["metrics"]["examples"] == 2
    assert "exceeds the model's context of 64 tokens" in saved["skipped"][0]
    loglik = json.loads((tmp_path / "out" / "arc_loglik.json").read_text())
    assert loglik["metrics"]["truncated"] == 3 and all(e["truncated"] for e in loglik["examples"])
    # --max-length overrides the context the config states.
    tighter = invoke(
        tmp_path / "short", "--tasks", "rouge_bleu", "--path", f"rouge_bleu={rows}", "--max-new-tokens", "8",
        "--max-length", "30", "--output", tmp_path / "tight",
    )  # fmt: skip
    assert tighter.exit_code == 0, tighter.output
    assert json.loads((tmp_path / "tight" / "rouge_bleu.json").read_text())["metrics"]["skipped_too_long"] == 3
