"""`llmft export RUN --format ollama`: a GGUF file and a Modelfile that serves it in the trained chat format.

The Modelfile's TEMPLATE is derived from the run's Jinja chat template and checked to render probe
conversations exactly as training did (`ollama_template`); its stop parameters end a reply where the template
ends an assistant turn; `num_ctx` is the run's `data.max_length`; a fixed system prompt the training data
used (`data.train[].system_prompt`) becomes the SYSTEM default, which Ollama puts first in a chat that has
none, as the data pipeline did.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llm_finetuning import __version__
from llm_finetuning.errors import RunDirError, UserError
from llm_finetuning.export.ollama_template import OllamaChat, ollama_chat

logger = logging.getLogger(__name__)

MODELFILE = "Modelfile"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def tokenizer_folder(source: Path) -> Path:
    """Where the run's trained tokenizer (and its chat template) is: `final/`, `merged/`, or the folder itself."""
    for folder in (source / "final", source / "merged", source):
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    raise RunDirError(
        f"{source}: no tokenizer found; give a completed run directory (with final/) or a model folder that "
        "holds tokenizer files."
    )


def run_config(source: Path) -> dict[str, Any]:
    """The run's resolved config.yaml, or {} for a plain model folder."""
    path = source / "config.yaml"
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def training_system_prompt(config: dict[str, Any]) -> str | None:
    """The system prompt every training source put before its conversations, when they all used one."""
    sources = config.get("data", {}).get("train") or []
    sources = [sources] if isinstance(sources, dict) else sources
    prompts = {source.get("system_prompt") for source in sources if isinstance(source, dict)}
    if len(prompts) == 1 and None not in prompts:
        return prompts.pop()
    if prompts - {None}:
        logger.info("The training sources use different system prompts; the Modelfile sets no SYSTEM default.")
    return None


def runtime_adds_bos(gguf_path: Path) -> bool:
    """Whether llama.cpp/Ollama prepend BOS to prompts for this GGUF (`tokenizer.ggml.add_bos_token`)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    field = reader.get_field("tokenizer.ggml.add_bos_token")
    if field is not None:
        return bool(field.contents())
    model = reader.get_field("tokenizer.ggml.model")
    # Unset, llama.cpp adds BOS for SentencePiece vocabularies and not for BPE ones.
    default = model is not None and model.contents() == "llama"
    logger.warning(
        "%s does not say whether to prepend BOS (tokenizer.ggml.add_bos_token); assuming %s, as llama.cpp does.",
        gguf_path,
        "yes" if default else "no",
    )
    return default


def _printable(text: str) -> bool:
    # Ollama's Modelfile parser keeps printable characters, spaces, tabs and line breaks, and drops the rest.
    return all(char.isprintable() or char in "\n\r\t" for char in text)


def _quoted_block(keyword: str, text: str) -> str:
    if '"""' in text:
        raise UserError(f'The Modelfile {keyword} cannot hold text that contains """: {text[:80]!r}')
    if not _printable(text):
        raise UserError(
            f"The Modelfile {keyword} would lose invisible characters (Ollama drops them): {text[:80]!r}; "
            "remove them from the system prompt or write the Modelfile by hand."
        )
    return f'{keyword} """{text}"""'


def modelfile_text(
    gguf_name: str,
    chat: OllamaChat | None,
    stops: tuple[str, ...],
    system: str | None,
    num_ctx: int | None,
    origin: str,
) -> str:
    """The Modelfile: provenance comments, FROM the GGUF beside it, TEMPLATE, SYSTEM and PARAMETER lines."""
    lines = [
        f"# Ollama Modelfile written by llm-finetuning {__version__} from {origin}.",
        f"# Create the model with: ollama create NAME -f {MODELFILE}",
    ]
    if chat is not None:
        lines.append(
            f"# TEMPLATE: derived from the trained Jinja chat template; renders {chat.probes} probe conversations "
            "exactly as training did."
        )
        lines += [f"# Note: {note}." for note in chat.notes]
    if num_ctx:
        lines.append("# num_ctx: the run's data.max_length, the longest example it trained on.")
    from_path = f"./{gguf_name}"
    lines.append(f'FROM "{from_path}"' if " " in from_path else f"FROM {from_path}")
    # Without a chat template (a pretraining run) the prompt goes to the model as it is.
    lines.append(_quoted_block("TEMPLATE", chat.template if chat is not None else "{{ .Prompt }}"))
    if system:
        lines.append(_quoted_block("SYSTEM", system))
    for stop in stops:
        if '"' in stop or not stop.isprintable():
            logger.warning("Stop sequence %r cannot be written in a Modelfile; it is left out.", stop)
            continue
        lines.append(f'PARAMETER stop "{stop}"')
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def write_modelfile(
    source: str | Path, gguf_path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Write `Modelfile` beside `gguf_path` for the run (or model folder) `source`; returns its path."""
    source, gguf_path = Path(source), Path(gguf_path)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(tokenizer_folder(source)))
    config = run_config(source)
    if tokenizer.chat_template:
        chat = ollama_chat(tokenizer, runtime_adds_bos(gguf_path))
        stops = chat.stops
        for note in chat.notes:
            logger.warning("Ollama template: %s.", note)
    else:
        logger.info("The tokenizer has no chat template; the Modelfile passes prompts through unchanged.")
        chat, stops = None, ((tokenizer.eos_token,) if tokenizer.eos_token else ())
    num_ctx = config.get("data", {}).get("max_length")
    text = modelfile_text(gguf_path.name, chat, stops, training_system_prompt(config), num_ctx, str(source))
    path = gguf_path.parent / MODELFILE
    path.write_text(text, encoding="utf-8", newline="")
    return path


def export_ollama(run_dir: str | Path, destination: str | Path, outtype: str = "f16") -> Path:
    """Write a GGUF file (`export_gguf`) and a Modelfile for it in `destination`; returns the Modelfile."""
    source, output = Path(run_dir), Path(destination)
    if output.exists() and any(output.iterdir()):
        raise RunDirError(f"{output} exists and is not empty; choose a new export folder.")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder(source)))
    if tokenizer.chat_template:  # refuse an inexpressible template before the conversion, whatever the GGUF says
        for adds_bos in (False, True):
            ollama_chat(tokenizer, adds_bos)
    from llm_finetuning.export.gguf import export_gguf

    gguf_path = export_gguf(run_dir, destination, outtype)
    return write_modelfile(source, gguf_path, tokenizer)
