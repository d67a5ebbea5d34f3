"""`llmft export --format ollama`: a folder with the GGUF file and a Modelfile whose template renders the trained
chat template, whose stops end the reply, and whose SYSTEM and num_ctx come from the run."""

from __future__ import annotations

import gguf
import pytest
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config import Config
from llm_finetuning.export.ollama_template import render_ollama
from llm_finetuning.train import train
from tests.conftest import shared, tiny_config
from tests.unit.test_ollama_modelfile import parse_modelfile

pytestmark = pytest.mark.e2e
SYSTEM = "Spell the word, letter by letter."


def export(source, output) -> dict[str, list[str]]:
    outcome = CliRunner().invoke(app, ["export", str(source), "--format", "ollama", "--output", str(output)])
    assert outcome.exit_code == 0, outcome.output
    assert "exported to" in outcome.output and "Modelfile" in outcome.output
    names = sorted(p.name for p in output.iterdir())
    assert len(names) == 2 and names[0] == "Modelfile" and names[1].endswith(".gguf"), names
    commands: dict[str, list[str]] = {}
    for name, value in parse_modelfile((output / "Modelfile").read_text()):
        commands.setdefault(name, []).append(value)
    assert commands["FROM"] == [f"./{names[1]}"]
    return commands


def test_run_exports_gguf_and_a_modelfile_with_the_trained_chat_format(tmp_path, write_jsonl, qa_rows):
    data = {"train": {"path": str(write_jsonl(qa_rows)), "format": "prompt_completion", "system_prompt": SYSTEM}}
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run", data=data))
    assert train(config).status == "completed"
    commands = export(tmp_path / "run", tmp_path / "ollama")
    assert commands["SYSTEM"] == [SYSTEM]
    assert commands["PARAMETER num_ctx"] == ["128"]  # the run's data.max_length
    assert commands["PARAMETER stop"] == ["<|im_end|>", "<|im_start|>"]
    # Ollama puts SYSTEM first in a chat without a system message; the prompt is then the one training built.
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "final"))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Spell golf"}]
    prompt = render_ollama(commands["TEMPLATE"][0], messages)
    trained = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    # The tiny tokenizer has no BOS, so the runtime adds none: the prompt's ids are the text's ids.
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == trained


def test_model_folder_with_bos_gets_a_template_without_it(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(shared("tokenizers/mistral-7b-v0.3")))
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    MistralForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    commands = export(tmp_path / "model", tmp_path / "ollama")
    reader = gguf.GGUFReader(next((tmp_path / "ollama").glob("*.gguf")))
    assert reader.get_field("tokenizer.ggml.add_bos_token").contents() is True
    # llama.cpp prepends BOS, so the template must not write it again.
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    messages.append({"role": "user", "content": "Bye"})
    assert render_ollama(commands["TEMPLATE"][0], messages) == "[INST] Hi[/INST] Hello</s>[INST] Bye[/INST]"
    assert commands["PARAMETER stop"] == ["</s>", "[INST]", "[/INST]"]
    assert "SYSTEM" not in commands and "PARAMETER num_ctx" not in commands  # no run config to take them from
