"""The Modelfile beside a GGUF: FROM, TEMPLATE, SYSTEM and PARAMETER lines that Ollama parses back exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import pytest
import yaml
from transformers import AutoTokenizer

from llm_finetuning.errors import UserError
from llm_finetuning.export.ollama import export_ollama, write_modelfile
from llm_finetuning.export.ollama_template import ollama_chat, render_ollama
from llm_finetuning.models.tiny import build_tokenizer
from tests.conftest import shared

pytestmark = pytest.mark.unit


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(COMMAND, value) pairs read the way Ollama's parser reads them: `#` lines are comments, a value is the rest
    of the line, or "..." on one line, or \"\"\"...\"\"\" over several lines; only printable characters, spaces,
    tabs and line breaks are kept."""
    text = "".join(char for char in text if char.isprintable() or char in "\n\r\t")
    commands, position = [], 0
    while position < len(text):
        line_end = text.find("\n", position)
        line_end = len(text) if line_end < 0 else line_end
        line = text[position:line_end].strip()
        if not line or line.startswith("#"):
            position = line_end + 1
            continue
        name, _, rest = line.partition(" ")
        if name == "PARAMETER":
            key, _, rest = rest.partition(" ")
            name = f"PARAMETER {key}"
        start = text.index(rest, position)
        if rest.startswith('"""'):
            end = text.index('"""', start + 3)
            value, position = text[start + 3 : end], text.find("\n", end) + 1 or len(text)
        else:
            value = rest[1:-1] if rest.startswith('"') and rest.endswith('"') else rest
            position = line_end + 1
        commands.append((name, value))
    return commands


def write_gguf(path: Path, add_bos: bool | None, model: str = "llama") -> Path:
    """A GGUF file holding only the tokenizer keys the Modelfile reads."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def fake_run(root: Path, tokenizer, train: list[dict], max_length: int = 256) -> Path:
    """The parts of a run directory the Ollama export reads: config.yaml and final/ with the tokenizer."""
    tokenizer.save_pretrained(root / "final")
    config = {"data": {"train": train, "max_length": max_length}, "output_dir": str(root)}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


SOURCE = {"path": "data.jsonl", "format": "messages"}


def test_modelfile_round_trips_template_system_stops_and_context(tmp_path: Path) -> None:
    system = 'You are terse.\n  Answer with "yes" or "no"; never {{ braces }}.  '
    run = fake_run(tmp_path / "run", build_tokenizer(), [{**SOURCE, "system_prompt": system}] * 2, max_length=384)
    model = write_gguf(tmp_path / "run" / "model-f16.gguf", add_bos=False, model="gpt2")
    path = write_modelfile(run, model)
    assert path == tmp_path / "run" / "Modelfile"
    text = path.read_text()
    assert text.startswith("# Ollama Modelfile written by llm-finetuning")
    commands = parse_modelfile(text)
    expected = ollama_chat(build_tokenizer(), runtime_adds_bos=False)
    assert commands == [
        ("FROM", "./model-f16.gguf"),
        ("TEMPLATE", expected.template),
        ("SYSTEM", system),
        ("PARAMETER stop", "<|im_end|>"),
        ("PARAMETER stop", "<|im_start|>"),
        ("PARAMETER num_ctx", "384"),
    ]
    # Ollama puts SYSTEM first in a chat that has no system message, as the data pipeline did in training.
    messages = [{"role": "user", "content": "Ready?"}]
    prompt = render_ollama(dict(commands)["TEMPLATE"], [{"role": "system", "content": system}, *messages])
    trained = build_tokenizer().apply_chat_template(
        [{"role": "system", "content": system}, *messages], tokenize=False, add_generation_prompt=True
    )
    assert prompt == trained


def test_the_gguf_decides_whether_the_template_writes_bos(tmp_path: Path, caplog) -> None:
    tok = AutoTokenizer.from_pretrained(str(shared("tokenizers/mistral-7b-v0.3")))
    run = fake_run(tmp_path / "run", tok, [SOURCE])
    conversation = [{"role": "user", "content": "Hi"}]
    for add_bos, starts in ((True, "[INST] Hi"), (False, "<s>[INST] Hi"), (None, "[INST] Hi")):
        model = write_gguf(tmp_path / "run" / "m.gguf", add_bos=add_bos, model="llama")
        template = dict(parse_modelfile(write_modelfile(run, model).read_text()))["TEMPLATE"]
        assert render_ollama(template, conversation).startswith(starts)
    # Unset in the GGUF: llama.cpp's default for a SentencePiece vocabulary (add BOS), said out loud.
    assert "does not say whether to prepend BOS" in caplog.text


def test_notes_go_to_the_log_and_the_header(tmp_path: Path, caplog) -> None:
    tok = AutoTokenizer.from_pretrained(str(shared("tokenizers/mistral-7b-v0.3")))  # trims assistant contents
    run = fake_run(tmp_path / "run", tok, [SOURCE])
    with caplog.at_level(logging.WARNING):
        text = write_modelfile(run, write_gguf(tmp_path / "run" / "m.gguf", add_bos=True)).read_text()
    assert "# Note: the training template strips white space around assistant contents" in text
    assert "strips white space around assistant contents" in caplog.text
    assert ("PARAMETER stop", "[INST]") in parse_modelfile(text)


def test_no_system_line_when_sources_differ_and_pass_through_without_a_chat_template(tmp_path: Path) -> None:
    sources = [{**SOURCE, "system_prompt": "A"}, {**SOURCE, "system_prompt": "B"}]
    run = fake_run(tmp_path / "run", build_tokenizer(), sources)
    commands = parse_modelfile(write_modelfile(run, write_gguf(tmp_path / "run" / "m.gguf", False)).read_text())
    assert "SYSTEM" not in dict(commands)
    plain = build_tokenizer()
    plain.chat_template = None
    run = fake_run(tmp_path / "pretrain", plain, [{"path": "t.jsonl", "format": "text"}])
    commands = parse_modelfile(write_modelfile(run, write_gguf(tmp_path / "pretrain" / "m.gguf", False)).read_text())
    assert dict(commands)["TEMPLATE"] == "{{ .Prompt }}" and ("PARAMETER stop", "<|im_end|>") in commands


@pytest.mark.parametrize(
    ("system", "message"), [('Say """hi"""', 'contains """'), ("no\u00a0break space", "invisible characters")]
)
def test_a_system_prompt_the_modelfile_cannot_hold_is_refused(tmp_path: Path, system: str, message: str) -> None:
    run = fake_run(tmp_path / "run", build_tokenizer(), [{**SOURCE, "system_prompt": system}])
    with pytest.raises(UserError, match=message):
        write_modelfile(run, write_gguf(tmp_path / "run" / "m.gguf", False))


def test_export_refuses_an_inexpressible_template_before_converting(tmp_path: Path) -> None:
    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(tmp_path / "model")
    with pytest.raises(UserError, match="cannot be expressed as an Ollama template"):
        export_ollama(tmp_path / "model", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        export_ollama(tmp_path / "model", tmp_path / "busy")
    with pytest.raises(UserError, match="no tokenizer found"):
        export_ollama(tmp_path / "nothing", tmp_path / "out")
