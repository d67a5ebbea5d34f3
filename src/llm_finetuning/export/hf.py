"""`llmft export RUN --format hf`: a standalone Hugging Face model folder with a model card.

The folder holds merged safetensors (the adapter folded in, see `lora_merge`), the tokenizer with its chat
template, and a README.md model card written from the run directory: base model, method, adapter, data and
their fingerprints, hyperparameters, final metrics and package versions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from llm_finetuning.errors import RunDirError
from llm_finetuning.export.lora_merge import merge_run
from llm_finetuning.runs.rundir import RunDir


def _card(config: dict[str, Any], manifest: dict[str, Any], base: str) -> str:
    training = config.get("training", {})
    sources = [s.get("dataset") or s.get("path") or s.get("hub") for s in config.get("data", {}).get("train", [])]
    metrics = manifest.get("final_metrics", {})
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {base}" if "/" in base and not base.startswith("/") else "base_model: local",
        "tags: [llm-finetuning]",
        "---",
        "",
        f"# {Path(config.get('output_dir', 'model')).name}",
        "",
        f"Fine-tuned from `{base}` with `{config.get('method', {}).get('name')}` "
        f"({config.get('adapter', {}).get('method')} adapter, merged) by llm-finetuning.",
        "",
        "## Data",
        "",
        *[
            f"- `{source}`"
            + (
                f" (sha256 `{manifest.get('data', {}).get('fingerprints', {}).get(source, '')[:16]}`)"
                if manifest.get("data", {}).get("fingerprints", {}).get(source)
                else ""
            )
            for source in sources
        ],
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in training.items() if key != "extra" and value is not None],
        "",
        "## Results",
        "",
        *(
            [
                f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}"
                for key, value in metrics.items()
            ]
            or ["(no final metrics recorded)"]
        ),
        "",
        "## Versions",
        "",
        *[f"- {name} {version}" for name, version in manifest.get("versions", {}).items()],
        "",
    ]
    return "\n".join(lines)


def export_hf(run_dir: str | Path, output: str | Path) -> Path:
    """Merged weights + tokenizer + model card in `output` (created; must not exist or be empty)."""
    run = RunDir(Path(run_dir))
    if not run.manifest.is_file() or not run.final.is_dir():
        raise RunDirError(f"{run.root}: not a completed run directory (manifest.json and final/ are needed).")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise RunDirError(f"{output} exists and is not empty; choose a new export folder.")
    source = merge_run(run.root).path
    shutil.copytree(
        source, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns("merge_info.json", "llmft_config.yaml")
    )
    config = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    manifest = json.loads(run.manifest.read_text(encoding="utf-8"))
    base = config.get("model", {}).get("name", "unknown")
    (output / "README.md").write_text(_card(config, manifest, base), encoding="utf-8")
    (output / "llmft_config.yaml").write_text(run.config.read_text(encoding="utf-8"), encoding="utf-8")
    return output
