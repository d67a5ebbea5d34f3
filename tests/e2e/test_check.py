"""`llmft check`: each error and warning path, on small configs and real tokenizers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llm_finetuning.check.data_checks import _completions_end_with_eos
from llm_finetuning.check.preflight import run_checks
from llm_finetuning.cli.main import app
from llm_finetuning.config import Config
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.data.tokenize import IGNORE_INDEX, Encoded
from llm_finetuning.models.tiny import build_model, build_tokenizer
from tests.conftest import shared, tiny_config

pytestmark = pytest.mark.e2e
OWN = "tests.e2e.grpo_rewards"


def findings(report, level):
    return [f"{f.where}: {f.message}" for f in report.by_level(level)]


def config(tmp_path, data_path, model=None, **sections):
    raw = tiny_config(data_path, tmp_path / "run", **sections)
    raw["model"] = model or raw["model"]  # replaced whole: `tiny` shapes belong to `name: tiny` only
    return Config.model_validate(raw)


def test_a_sound_config_passes_and_shows_masked_examples(tmp_path, write_jsonl, write_yaml, qa_rows):
    path = write_yaml(tiny_config(write_jsonl(qa_rows), tmp_path / "run", training={"learning_rate": 2e-4}))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "20 rows sampled, 0 malformed" in result.output and "example 1" in result.output
    assert "passed: 0 errors, 0 warnings" in result.output
    assert not (tmp_path / "run").exists()  # nothing is written


def test_bad_rows_are_errors_when_training_would_stop_and_warnings_when_skipped(
    tmp_path, write_jsonl, write_yaml, qa_rows
):
    data = write_jsonl([*qa_rows, {"prompt": "no completion"}])
    strict = config(tmp_path, data)
    assert any(
        "1 of 21 sampled rows are malformed (training would stop" in f for f in findings(run_checks(strict), "error")
    )
    lenient = config(tmp_path, data, data={"on_error": "skip"})
    report = run_checks(lenient)
    assert report.ok and any("data.jsonl:21" in f for f in findings(report, "warning"))
    path = write_yaml(tiny_config(data, tmp_path / "run"))
    assert CliRunner().invoke(app, ["check", str(path)]).exit_code == 1


def test_examples_over_max_length_are_counted(tmp_path, write_jsonl, qa_rows):
    report = run_checks(config(tmp_path, write_jsonl(qa_rows), data={"max_length": 24}))
    warning = [f for f in findings(report, "warning") if "longer than the limit of 24 tokens" in f]
    lengths = report.sources[0].lengths
    over = sum(length > 24 for length in lengths)
    assert warning and f"{over} of {len(lengths)} sampled examples" in warning[0]


def test_completion_spans_must_end_with_eos():
    eos = 9
    ignore = IGNORE_INDEX
    good = Encoded([1, 2, 3, eos, 4, 5, eos], [ignore, 2, 3, eos, ignore, 5, eos], "")
    missing = Encoded([1, 2, 3, eos, 4, 5, 6], [ignore, 2, 3, eos, ignore, 5, 6], "")
    assert _completions_end_with_eos(good, eos) and not _completions_end_with_eos(missing, eos)
    assert not _completions_end_with_eos(Encoded([1], [ignore], ""), eos)  # nothing trained at all


@pytest.mark.parametrize(
    ("rate", "adapter", "expected"),
    [
        (1e-2, {"method": "full"}, "above the usual range for `sft` with `full`"),
        (1e-7, {"method": "lora", "r": 4}, "below the usual range for `sft` with `lora`"),
        (1e-5, {"method": "prompt", "num_virtual_tokens": 4}, "below the usual range for `sft` with `prompt`"),
    ],
)
def test_learning_rates_far_from_the_usual_range_are_warned(tmp_path, write_jsonl, qa_rows, rate, adapter, expected):
    report = run_checks(config(tmp_path, write_jsonl(qa_rows), adapter=adapter, training={"learning_rate": rate}), 4)
    assert any(expected in f for f in findings(report, "warning"))


def test_a_base_model_without_chat_template(tmp_path, write_jsonl, qa_rows):
    gpt2 = str(shared("tokenizers/gpt2"))
    model = {"name": gpt2}
    with_template = config(tmp_path, write_jsonl(qa_rows), model=model, data={"chat_template": "chatml"})
    report = run_checks(with_template, 4)
    assert any("has no chat template (a base model)" in f and "<|im_start|>" in f for f in findings(report, "warning"))
    without = config(tmp_path, write_jsonl(qa_rows), model=model)
    assert any("no chat template" in f for f in findings(run_checks(without, 4), "error"))


def test_kto_label_imbalance_and_missing_labels(tmp_path, write_jsonl):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i < 9} for i in range(10)]
    kto = {"name": "kto"}
    report = run_checks(
        config(
            tmp_path,
            write_jsonl(rows),
            data={"train": {"path": str(write_jsonl(rows)), "format": "unpaired"}},
            method=kto,
        )
    )
    warning = [f for f in findings(report, "warning") if "9 desirable vs 1 undesirable" in f]
    assert warning and "weighted ratio 9.00" in warning[0] and "desirable_weight: 0.11" in warning[0]
    only_good = [dict(r, label=True) for r in rows]
    path = write_jsonl(only_good, "good.jsonl")
    report = run_checks(config(tmp_path, path, data={"train": {"path": str(path), "format": "unpaired"}}, method=kto))
    assert any("no undesirable example" in f for f in findings(report, "error"))


def test_eval_rows_that_are_also_training_rows(tmp_path, write_jsonl, qa_rows):
    evaluation = write_jsonl(qa_rows[:3] + [{"prompt": "new", "completion": "row"}], "eval.jsonl")
    eval_source = {"path": str(evaluation), "format": "prompt_completion"}
    report = run_checks(config(tmp_path, write_jsonl(qa_rows), data={"eval": eval_source}), 50)
    assert any(
        "3 of 4 sampled evaluation rows also appear in the training data" in f for f in findings(report, "warning")
    )


def test_broken_rewards_fail_the_check(tmp_path, write_jsonl):
    rows = [{"prompt": f"{i}+1?", "answer": str(i + 1)} for i in range(4)]
    data = {"train": {"path": str(write_jsonl(rows)), "format": "prompt_only"}}
    method = {"name": "grpo", "num_generations": 4, "rewards": [{"name": "bad", "function": f"{OWN}:not_finite"}]}
    report = run_checks(config(tmp_path, write_jsonl(rows), data=data, method=method))
    assert any("reward `bad`: returned nan" in f for f in findings(report, "error"))
    method["rewards"] = [{"name": "answer_correctness"}]
    report = run_checks(config(tmp_path, write_jsonl(rows), data=data, method=method, training={"learning_rate": 1e-5}))
    assert report.ok, report.findings


def test_a_model_that_cannot_be_found(tmp_path, write_jsonl, qa_rows):
    report = run_checks(config(tmp_path, write_jsonl(qa_rows), model={"name": str(tmp_path / "missing")}))
    assert findings(report, "error") and findings(report, "error")[0].startswith("model.name")


def test_config_errors_exit_2_without_traceback(write_yaml):
    path = write_yaml({"data": {"train": {"path": "x.jsonl"}}, "trainig": {}})
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output and "training" in result.output


def test_pad_equal_to_eos_is_an_error(tmp_path, write_jsonl, qa_rows, monkeypatch):
    import llm_finetuning.models.loading as loading
    from llm_finetuning.models.loading import TokenizerChanges

    def keep_pad_as_eos(tokenizer, *args, **kwargs):
        tokenizer.pad_token = tokenizer.eos_token
        return TokenizerChanges()

    monkeypatch.setattr(loading, "prepare_tokenizer", keep_pad_as_eos)
    report = run_checks(config(tmp_path, write_jsonl(qa_rows)), 4)
    assert any("the pad token is the EOS token" in f for f in findings(report, "error"))


def test_findings_serialise_to_json(tmp_path, write_jsonl, qa_rows):
    # The report is plain data: it can be serialised for CI dashboards.
    report = run_checks(config(tmp_path, write_jsonl(qa_rows)), 4)
    assert json.dumps([f.__dict__ for f in report.findings])


def test_the_exported_ollama_template_is_checked_against_the_training_template(tmp_path, write_jsonl, qa_rows):
    report = run_checks(config(tmp_path, write_jsonl(qa_rows)), 4)
    assert any("renders 8 probe conversations exactly as training does" in f for f in findings(report, "info"))
    # A template that numbers its turns cannot be written as an Ollama template: a warning, not an error.
    numbered = (
        "{% for m in messages %}{{ loop.index }}: {{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}A:{% endif %}"
    )
    report = run_checks(config(tmp_path, write_jsonl(qa_rows), data={"chat_template": numbered}), 4)
    assert any("`llmft export --format ollama` would refuse it" in f for f in findings(report, "warning"))


def test_the_memory_estimate_is_part_of_the_check(tmp_path, write_jsonl, qa_rows, write_yaml):
    report = run_checks(config(tmp_path, write_jsonl(qa_rows)), 4)
    assert report.estimate is not None and any("GiB per device at peak; fits" in f for f in findings(report, "info"))
    # A 70B-sized full fine-tune does not fit one L4: with --gpu that fails the check.
    raw = tiny_config(write_jsonl(qa_rows), tmp_path / "run", adapter={"method": "full"})
    raw["model"]["tiny"] = {"hidden_size": 8192, "num_layers": 80, "num_heads": 64}
    path = write_yaml(raw)
    result = CliRunner().invoke(app, ["check", str(path), "--rows", "4", "--gpu", "L4"])
    assert result.exit_code == 1 and "does not fit L4" in result.output
    assert CliRunner().invoke(app, ["check", str(path), "--rows", "4"]).exit_code == 0  # without --gpu: info only


def test_duplicates_before_an_eval_split_are_warned_unless_cleaned(tmp_path, write_jsonl, qa_rows):
    # qa_rows holds every word twice: 10 of its 20 rows repeat an earlier one.
    data = write_jsonl(qa_rows)
    report = run_checks(config(tmp_path, data, data={"eval_split": 0.2}), 50)
    assert any("10 of 20 sampled training rows repeat an earlier row" in f for f in findings(report, "warning"))
    report = run_checks(config(tmp_path, data, data={"eval_split": 0.2, "clean": {}}), 50)
    assert not any("repeat an earlier row" in f for f in findings(report, "warning"))


def test_gpu_only_kernels_and_backends_that_cannot_run_here_are_errors(tmp_path, write_jsonl, qa_rows):
    # No liger-kernel, no unsloth and no CUDA on this machine: `llmft train` would refuse both, so the check does.
    liger = run_checks(config(tmp_path, write_jsonl(qa_rows), training={"liger_kernel": True}))
    assert [f for f in findings(liger, "error") if f.startswith("training.liger_kernel: liger-kernel is not installed")]
    model_dir = tmp_path / "model"  # the backend loads checkpoints, not the in-process tiny model
    tokenizer = build_tokenizer()
    build_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2), tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    unsloth = run_checks(config(tmp_path, write_jsonl(qa_rows), model={"name": str(model_dir), "backend": "unsloth"}))
    assert [f for f in findings(unsloth, "error") if f.startswith("model.backend") and "unsloth" in f]
    plain = run_checks(config(tmp_path, write_jsonl(qa_rows)))
    assert not [f for f in findings(plain, "error") if f.startswith(("model.backend", "training.liger_kernel"))]


def test_rows_the_chat_template_loses_are_bad_rows_not_usable(tmp_path):
    from tests.tool_fixtures import sharegpt_rows, tool_config, write_rows

    data = write_rows(tmp_path / "tools.jsonl", sharegpt_rows(2))
    raw = tool_config(data, tmp_path / "run")
    raw["model"]["tokenizer"] = str(shared("tokenizers/qwen2"))
    del raw["data"]["chat_template"]  # Qwen2's shipped template: no tool turns, no tools, no calls
    report = run_checks(Config.model_validate(raw))
    errors = findings(report, "error")
    assert any("8 of 8 sampled rows are malformed" in f and "tools.jsonl:1: turn " in f for f in errors), errors
    raw["data"]["chat_template"] = "hermes"
    assert not findings(run_checks(Config.model_validate(raw)), "error")
