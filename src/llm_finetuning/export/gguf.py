"""`llmft export RUN --format gguf`: one GGUF file with the weights, the tokenizer and the chat template.

The source is a run directory (its adapter merged first, see `lora_merge`) or a plain Hugging Face model folder
(config.json, safetensors, tokenizer). The file follows llama.cpp's conventions so that llama.cpp, Ollama and
transformers' GGUF loader read it: tensor names from the `gguf` library's name map, q/k rows permuted for the
`llama` architecture, norms and other 1-D tensors in F32, no `output.weight` when the head is tied.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import yaml
from transformers import AutoConfig

from llm_finetuning.errors import RunDirError, UserError
from llm_finetuning.export.gguf_tensors import (
    OUTTYPES,
    architecture,
    encoded_tensors,
    plan_tensors,
    write_hyperparameters,
)
from llm_finetuning.export.gguf_tokenizer import load_tokenizer, read_vocab, write_vocab
from llm_finetuning.runs.rundir import RunDir

logger = logging.getLogger(__name__)


class _Writer(gguf.GGUFWriter):
    """`GGUFWriter` that can also write an empty array, which the format allows but the library refuses."""

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool, sub_type: Any = None) -> bytes:
        if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
            prefix = self._pack("I", vtype) if add_vtype else b""
            return prefix + self._pack("I", sub_type) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _source(path: Path) -> tuple[Path, str]:
    """The model folder to convert and the model's name: a run's merged model, or the folder itself."""
    run = RunDir(path)
    if run.manifest.is_file() and run.final.is_dir():
        from llm_finetuning.export.lora_merge import merge_run

        config = yaml.safe_load(run.config.read_text(encoding="utf-8")) if run.config.is_file() else {}
        return merge_run(run.root).path, Path(config.get("output_dir") or path.resolve()).name
    if (path / "config.json").is_file():
        return path, path.resolve().name
    raise RunDirError(
        f"{path}: neither a completed run directory (manifest.json and final/) nor a Hugging Face model folder "
        "(config.json); point the export at one of them."
    )


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def export_gguf(run_dir: str | Path, destination: str | Path, outtype: str = "f16") -> Path:
    """Write `destination/NAME-OUTTYPE.gguf` from a run directory or a model folder; return its path.

    `destination` must not exist or be empty. `outtype` is f32, f16, bf16 or q8_0 (Q8_0 for 2-D weights whose
    rows are whole 32-value blocks, F16 for the others; 1-D tensors are F32 in every case).
    """
    if outtype not in OUTTYPES:
        raise UserError(f"GGUF outtype {outtype}: choose one of {', '.join(OUTTYPES)}.")
    output = Path(destination)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise RunDirError(f"{output} exists and is not empty; choose a new export folder.")
    folder, name = _source(Path(run_dir))
    arch = architecture(folder)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    vocab = read_vocab(load_tokenizer(folder), config.vocab_size)
    plans = plan_tensors(folder, config, arch, outtype)

    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-') or 'model'}-{outtype}.gguf"
    partial = path.with_name(path.name + ".part")  # renamed when complete: no half-written .gguf is left behind
    writer = _Writer(partial, gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        write_hyperparameters(writer, config, arch, OUTTYPES[outtype][1])
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, vocab)
        for plan in plans:
            writer.add_tensor_info(plan.name, plan.shape, np.float32, plan.nbytes, raw_dtype=plan.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in encoded_tensors(folder, config, arch, plans):
            writer.write_tensor_data(data)
        writer.close()
        partial.replace(path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        if created and not any(output.iterdir()):
            output.rmdir()
        raise
    counts: dict[str, int] = {}
    for plan in plans:
        counts[plan.qtype.name] = counts.get(plan.qtype.name, 0) + 1
    logger.info(
        "Wrote %s: %s, %d tensors (%s), %s, architecture %s, %d tokens (%s)",
        path,
        _size(path.stat().st_size),
        len(plans),
        ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items())),
        outtype,
        gguf.MODEL_ARCH_NAMES[arch],
        len(vocab.tokens),
        vocab.model,
    )
    return path
