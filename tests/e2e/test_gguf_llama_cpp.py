"""llama.cpp itself (llama-cpp-python) loads what `llmft export --format gguf` writes: the same greedy tokens and
logits as the transformers model for f16 and q8_0, the same token ids, and the chat template it reads from the
file renders the prompt the model was trained on.

llama-cpp-python is an optional test dependency (the `gguf-check` extra, built from source); without it these
tests skip. What llama.cpp does differently from transformers on its own (not because of the export) is pinned
in the tests named `..._known_difference`, so that a change on either side is noticed; docs/export.md lists it.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config import Config
from llm_finetuning.export.gguf import export_gguf
from llm_finetuning.models.tiny import build_tokenizer
from tests.conftest import tiny_config
from tests.e2e.test_export_gguf import (
    BOUND,
    MESSAGES,
    TEXTS,
    TOKENIZER_CASES,
    export_real,
    relative_error,
    save_source,
)

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the optional gguf-check test dependency")

pytestmark = pytest.mark.e2e

PROMPTS = ["Hello world", "numbers 12345 and 3.14159", "The quick brown fox"]
NEW_TOKENS = 12
CONVERSATION = [{"role": "system", "content": "Be brief."}, *MESSAGES, {"role": "user", "content": "And 3+3?"}]


class Loaded:
    """A GGUF file opened by llama.cpp, closed when the test is done (its destructor fails at interpreter exit)."""

    def __init__(self, path, **options):
        self.llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, seed=0, verbose=False, **options)

    def __enter__(self):
        return self.llm

    def __exit__(self, *exc):
        self.llm.close()


def hf_greedy(model, ids: list[int], count: int) -> tuple[list[int], float]:
    """`count` greedy tokens after `ids`, and the smallest gap between the first and second logit on the way."""
    tokens, margin = list(ids), float("inf")
    with torch.no_grad():
        for _ in range(count):
            logits = model(input_ids=torch.tensor([tokens])).logits[0, -1]
            top = torch.topk(logits, 2).values
            margin = min(margin, (top[0] - top[1]).item())
            tokens.append(int(logits.argmax()))
    return tokens[len(ids) :], margin


def llama_greedy(llm, ids: list[int], count: int) -> list[int]:
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == count:
            return out
    return out


def native_render(template: str, messages: list[dict[str, str]]) -> str | None:
    """llama.cpp's own chat templating (no Jinja: it recognises the template and formats in C++); None if it does
    not recognise the template."""
    array = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages]
    )
    buffer = ctypes.create_string_buffer(1 << 16)
    length = llama_cpp.llama_chat_apply_template(template.encode(), array, len(messages), True, buffer, 1 << 16)
    return buffer.raw[:length].decode() if length >= 0 else None


# --- the model: tiny random models of each architecture, f16 and q8_0 ------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    made = {}
    for arch in ("llama", "qwen2", "mistral"):
        folder = tmp_path_factory.mktemp(f"llama-cpp-{arch}")
        made[arch] = folder, save_source(folder, arch, build_tokenizer(), tied=arch == "qwen2")
    return made


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_llama_cpp_generates_the_greedy_tokens_of_the_source(sources, tmp_path, arch, outtype):
    folder, model = sources[arch]
    tokenizer = build_tokenizer()
    path = export_gguf(folder, tmp_path, outtype)
    with Loaded(path, logits_all=True) as llm:
        for prompt in PROMPTS:
            ids = tokenizer(prompt)["input_ids"]
            assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
            expected, margin = hf_greedy(model, ids, NEW_TOKENS)
            assert llama_greedy(llm, ids, NEW_TOKENS) == expected, (prompt, margin)
            llm.reset()
            llm.eval(ids)
            ours = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
            with torch.no_grad():
                reference = model(input_ids=torch.tensor([ids])).logits[0]
            assert relative_error(ours, reference) < BOUND[outtype]


# --- real tokenizers -------------------------------------------------------------------------------------------

# SentencePiece in llama.cpp always adds the space prefix: also before text that already starts with a space and
# after a special token, where transformers' Metaspace (prepend_scheme "first") adds none.
SPM_PREFIX_CASES = {TEXTS[1], TEXTS[5]}


@pytest.fixture(scope="module", params=TOKENIZER_CASES, ids=[name for _, name in TOKENIZER_CASES])
def real(request, tmp_path_factory):
    arch, name = request.param
    tokenizer, _, path = export_real(arch, name, tmp_path_factory.mktemp(f"llama-cpp-real-{name}"))
    with Loaded(path, vocab_only=True) as llm:
        yield name, tokenizer, llm


def test_llama_cpp_tokenizes_like_the_source_tokenizer(real):
    name, tokenizer, llm = real
    for text in TEXTS:
        if name == "mistral-7b-v0.3" and text in SPM_PREFIX_CASES:
            continue
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text
        decoded = llm.detokenize(tokenizer(text, add_special_tokens=False)["input_ids"], special=True).decode()
        if name == "mistral-7b-v0.3":
            decoded = decoded.removeprefix(" ")  # llama.cpp keeps the space prefix of the first piece
        assert decoded == text


def test_sentencepiece_space_prefix_is_a_known_difference(real):
    name, tokenizer, llm = real
    if name != "mistral-7b-v0.3":
        pytest.skip("byte-level BPE has no space prefix")
    for text in SPM_PREFIX_CASES:  # llama.cpp's tokens read as the same text with one more space
        ours = tokenizer.decode(llm.tokenize(text.encode(), add_bos=True, special=True))
        theirs = tokenizer.decode(tokenizer(text)["input_ids"])
        assert ours.replace(" ", "") == theirs.replace(" ", "") and ours.count(" ") == theirs.count(" ") + 1
    space = tokenizer.convert_tokens_to_ids("\u2581")
    assert llm.tokenize(b"[INST] hi", add_bos=False, special=True)[1] == space  # the prefix after [INST]
    assert tokenizer("[INST] hi", add_special_tokens=False)["input_ids"][1] != space


def test_chat_template_llama_cpp_reads_renders_the_training_prompt(real):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    name, tokenizer, llm = real
    template = llm.metadata["tokenizer.chat_template"]
    assert template == tokenizer.chat_template
    formatter = Jinja2ChatFormatter(template, eos_token=tokenizer.eos_token or "", bos_token=tokenizer.bos_token or "")
    for messages in (MESSAGES[:1], CONVERSATION if name != "mistral-7b-v0.3" else CONVERSATION[1:]):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert formatter(messages=messages).prompt == expected


def test_native_chat_templating_known_differences(real):
    """Without Jinja (llama-server without --jinja, llama-cli's chat), llama.cpp recognises a template by its
    markers: ChatML renders the same as transformers once a system message is given (Qwen2's default system
    prompt is not added), Mistral's [INST] format places the system message and BOS differently, and a template
    it does not recognise is refused."""
    name, tokenizer, llm = real
    template = llm.metadata["tokenizer.chat_template"]
    expected = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    rendered = native_render(template, CONVERSATION)
    if name == "gpt2":
        assert rendered is None
    elif name == "qwen2":
        assert rendered == expected
        assert native_render(template, MESSAGES[:1]) != tokenizer.apply_chat_template(
            MESSAGES[:1], tokenize=False, add_generation_prompt=True
        )  # transformers adds "You are a helpful assistant."
    else:
        assert rendered is not None and rendered != expected


# --- a trained LoRA run, through the CLI, served by llama.cpp's chat completion ---------------------------------


def test_exported_run_answers_in_llama_cpp_as_the_merged_model_does(tmp_path, write_jsonl, qa_rows):
    from llm_finetuning.train import train

    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run"))
    assert train(config).status == "completed"
    run = tmp_path / "run"
    outcome = CliRunner().invoke(app, ["export", str(run), "--format", "gguf", "--outtype", "f16"])
    assert outcome.exit_code == 0, outcome.output
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    prompt = tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt)["input_ids"]
    expected, _ = hf_greedy(merged, ids, 8)
    with Loaded(run / "export-gguf" / "run-f16.gguf") as llm:
        template = llm.metadata["tokenizer.chat_template"]
        assert native_render(template, MESSAGES[:1]) == prompt  # the training template is ChatML
        reply = llm.create_chat_completion(messages=MESSAGES[:1], temperature=0.0, top_k=1, max_tokens=8)
    assert reply["usage"]["prompt_tokens"] == len(ids)
    eos = tokenizer.eos_token_id
    cut = expected.index(eos) if eos in expected else len(expected)
    assert reply["choices"][0]["message"]["content"] == tokenizer.decode(expected[:cut], skip_special_tokens=True)
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
