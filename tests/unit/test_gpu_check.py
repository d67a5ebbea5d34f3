"""The GPU check's own logic on CPU: which wheels it installs, and how it judges the targets from results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))
import check  # noqa: E402
import targets  # noqa: E402

pytestmark = pytest.mark.unit


def sft(tokens_per_s: float, peak_gib: float | None = None, mfu: float | None = None) -> dict:
    figures = {"tokens_per_s": tokens_per_s, "median_step_s": 1.0}
    if mfu is not None:
        figures["mfu"] = mfu
    return {"figures": figures, "memory": {"cuda_peak": peak_gib * 2**30 if peak_gib else None}}


RESULTS = {
    "llmft-lora@1b": sft(30_000, 10, 0.35),
    "hf-peft-padded@1b": sft(10_000, 40),
    "trl-sft@1b": sft(25_000),
    "llmft-full@1b": sft(28_000, 20),
    "llmft-lora@3b": sft(12_000, mfu=0.41),
    "llmft-full@3b": sft(11_000, mfu=0.44),
    "llmft-lora-liger@1b": sft(36_000, 9),
    "llmft-full-liger@1b": sft(30_000, 21),
    "grpo-gen-batched@1b": {"figures": {"split_s": {"generation": 6.0}}},
    "grpo-gen-static@1b": {"figures": {"split_s": {"generation": 1.5}}},
}
EXTRAS = {
    "estimate_errors": [0.05, -0.12],
    "packed_loss_relative_difference": 3e-3,
    "cross_example_difference": 2e-3,
    "kernel_calls_per_forward": 16,
    "layers": 16,
}


def test_each_target_is_judged_from_its_scenarios():
    judged = {t.name: t for t in targets.evaluate(RESULTS, EXTRAS)}
    assert judged["1B LoRA: llmft defaults vs plain HF+PEFT padded"].value == "3.00x"
    assert judged["1B LoRA: llmft defaults vs plain HF+PEFT padded"].met is True
    assert judged["1B LoRA: llmft defaults vs TRL SFTTrainer defaults"].met is False  # 1.2x < 1.3x
    assert judged["3B LoRA MFU (llmft defaults)"].met is True
    assert judged["3B full MFU (llmft defaults)"].met is False  # 44% < 45%
    assert judged["3B: LoRA tokens/s vs full tokens/s"].met is True
    assert judged["1B LoRA peak memory vs plain HF+PEFT padded"].value == "25%"
    assert judged["1B lora: Liger vs without"].met is True  # 1.2x
    assert judged["1B full: Liger vs without"].met is False  # 1.07x
    assert judged["1B full: Liger peak memory vs without"].met is False  # more memory with Liger
    assert judged["GRPO 1B: generation speed-up over batched generation (gen-static)"].value == "4.00x"
    assert judged["1B memory estimate vs measured peak (worst case)"].value == "12.0%"
    assert judged["one attention call per layer on a packed row"].met is True


def test_grpo_generation_is_judged_on_the_fastest_option_measured():
    merged = {**RESULTS, "grpo-gen-static-merged@1b": {"figures": {"split_s": {"generation": 1.2}}}}
    judged = {t.name: t for t in targets.evaluate(merged, EXTRAS)}
    assert judged["GRPO 1B: generation speed-up over batched generation (gen-static-merged)"].value == "5.00x"
    neither = {k: v for k, v in RESULTS.items() if k != "grpo-gen-static@1b"}
    judged = {t.name: t for t in targets.evaluate(neither, EXTRAS)}
    assert judged["GRPO 1B: generation speed-up over batched generation"].met is None


def test_a_target_whose_scenario_did_not_run_is_not_measured_and_fails_the_check():
    partial = {**RESULTS, "trl-sft@1b": {"skipped": "not run: the time budget was spent"}}
    partial.pop("llmft-lora-liger@1b")
    judged = {t.name: t for t in targets.evaluate(partial, {})}
    assert judged["1B LoRA: llmft defaults vs TRL SFTTrainer defaults"].status == "not measured"
    assert judged["1B lora: Liger vs without"].met is None
    assert judged["packed vs unpacked loss, bf16 (relative)"].met is None
    assert "| not measured |" in targets.markdown(list(judged.values()))


def test_install_takes_the_core_wheels_and_only_what_the_image_lacks(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("transformers-5.23.0-py3-none-any", "regex-1-cp312-cp312-manylinux", "pandas-3-cp312-cp312-x"):
        (wheels / f"{name}.whl").write_text("")
    manifest = {"core": ["transformers"], "if_missing": {"regex": "regex", "pandas": "pandas"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(check.importlib.util, "find_spec", lambda name: None if name == "pandas" else object())
    commands = []
    monkeypatch.setattr(check.subprocess, "run", lambda command, check: commands.append(command))
    chosen = check.install(tmp_path, tmp_path / "site")
    assert chosen == ["pandas-3-cp312-cp312-x.whl", "transformers-5.23.0-py3-none-any.whl"]
    command = commands[0]
    assert command[command.index("--target") + 1] == str(tmp_path / "site")
    assert {"--no-index", "--no-deps"} <= set(command) and not any("torch" in part for part in command)
