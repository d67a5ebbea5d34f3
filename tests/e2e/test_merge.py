"""`llmft merge`: the merged model gives the adapter model's logits; merging twice is merging once."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config import Config
from llm_finetuning.export.lora_merge import merge_run
from llm_finetuning.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.e2e
PROBE = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 8]])


def trained(tmp_path, write_jsonl, qa_rows, **sections):
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run", **sections))
    assert train(config).status == "completed"
    return tmp_path / "run"


def adapter_logits(run, quantized: bool = False):
    final = run / "final"
    base_path = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    kwargs = {}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, **kwargs), final).eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def merged_logits(path):
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path).eval()(input_ids=PROBE).logits


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_equals_adapter_and_merging_twice_is_a_no_op(tmp_path, write_jsonl, qa_rows, method):
    run = trained(tmp_path, write_jsonl, qa_rows, adapter={"method": method, "r": 4, "alpha": 8, "dropout": 0.0})
    result = merge_run(run)
    assert result.merged and (result.path / "model.safetensors").is_file()
    torch.testing.assert_close(merged_logits(result.path), adapter_logits(run), rtol=1e-4, atol=1e-5)
    outcome = CliRunner().invoke(app, ["merge", str(run)])
    assert outcome.exit_code == 0 and "already holds this adapter merged" in outcome.output


def test_qlora_base_is_dequantized_before_merging(tmp_path, write_jsonl, qa_rows):
    pytest.importorskip("bitsandbytes")
    run = trained(
        tmp_path,
        write_jsonl,
        qa_rows,
        model={"name": "tiny", "quantization": "nf4", "tiny": {"hidden_size": 64, "num_heads": 2}},
    )
    result = merge_run(run)
    expected = adapter_logits(run, quantized=True)  # what the trained QLoRA model computes
    merged = merged_logits(result.path)
    # Merged into the dequantized 4-bit weights: equal up to the 4-bit kernel's rounding ...
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-2)
    # ... and closer to the trained model than merging into the original full-precision base would be.
    full_base = AutoModelForCausalLM.from_pretrained(
        json.loads((run / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    with torch.no_grad():
        naive = PeftModel.from_pretrained(full_base, run / "final").merge_and_unload().eval()(input_ids=PROBE).logits
    assert (merged - expected).abs().max() < (naive - expected).abs().max()


def test_full_model_run_has_nothing_to_merge(tmp_path, write_jsonl, qa_rows):
    run = trained(tmp_path, write_jsonl, qa_rows, adapter={"method": "full"})
    result = merge_run(run)
    assert not result.merged and "already holds a full model" in result.message


def test_export_hf_writes_merged_weights_tokenizer_and_a_model_card(tmp_path, write_jsonl, qa_rows):
    run = trained(tmp_path, write_jsonl, qa_rows)
    outcome = CliRunner().invoke(app, ["export", str(run), "--format", "hf", "--output", str(tmp_path / "hf")])
    assert outcome.exit_code == 0, outcome.output
    hf = tmp_path / "hf"
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "llmft_config.yaml"} <= {
        p.name for p in hf.iterdir()
    }
    torch.testing.assert_close(merged_logits(hf), adapter_logits(run), rtol=1e-4, atol=1e-5)
    card = (hf / "README.md").read_text()
    assert "`sft`" in card and "lora adapter, merged" in card and "| learning_rate | 0.01 |" in card
    assert "train_loss:" in card and "transformers" in card
    again = CliRunner().invoke(app, ["export", str(run), "--output", str(hf)])
    assert again.exit_code == 2 and "not empty" in again.output
    unknown = CliRunner().invoke(app, ["export", str(run), "--format", "onnx"])
    assert unknown.exit_code == 2 and "choose one of hf, gguf, ollama" in unknown.output
