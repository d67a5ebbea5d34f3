"""Prepare the GPU check's bundle where a package registry is reachable: wheels, tokenizer, data, model configs.

    .venv/bin/python benchmarks/gpu/prepare.py            # writes .gpu/ (ignored by git), under 60 MiB

The GPU machine (../shared/GPU.md) has a CUDA torch, Triton, accelerate and pyarrow, and no registry. The bundle
brings everything else the check imports, pinned to `constraints.txt`: pure-Python wheels and compiled ones built
for the GPU machine's Python (CPython 3.12, manylinux x86_64), downloaded without dependencies so nothing resolves
there. Its own torch is never replaced (no torch wheel is bundled). `check.py` installs them with
`pip install --no-index --no-deps --target`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
LIMIT = 60 * 2**20

# Always installed on the GPU machine (the tested versions, whatever the image has).
CORE = [
    "transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub", "tokenizers", "safetensors",
    "pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions", "liger-kernel",
]  # fmt: skip
# Installed only where the image lacks the module (name -> module), smallest first where size matters.
IF_MISSING = {
    "PyYAML": "yaml", "regex": "regex", "dill": "dill", "multiprocess": "multiprocess", "xxhash": "xxhash",
    "fsspec": "fsspec", "filelock": "filelock", "tqdm": "tqdm", "packaging": "packaging", "requests": "requests",
    "urllib3": "urllib3", "idna": "idna", "certifi": "certifi", "charset-normalizer": "charset_normalizer",
    "httpx2": "httpx2", "httpcore2": "httpcore2", "h11": "h11", "anyio": "anyio", "sniffio": "sniffio",
    "rich": "rich", "markdown-it-py": "markdown_it", "mdurl": "mdurl", "Pygments": "pygments", "Jinja2": "jinja2",
    "MarkupSafe": "markupsafe", "psutil": "psutil", "six": "six", "python-dateutil": "dateutil", "pytz": "pytz",
    "tzdata": "tzdata", "pandas": "pandas",
}  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def pinned() -> dict[str, str]:
    versions = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            versions[name.strip().lower().replace("_", "-")] = version.strip()
    return versions


def download(names: list[str], into: Path, python: str, versions: dict[str, str]) -> list[str]:
    """Download each wheel for the target Python; returns the names that have no wheel for it."""
    failed = []
    for name in names:
        version = versions.get(name.lower().replace("_", "-"))
        spec = f"{name}=={version}" if version else name
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", python, "--implementation", "cp",
            "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux_2_28_x86_64", "--platform", "any", "-d", str(into), spec,
        ]  # fmt: skip
        if subprocess.run(command, capture_output=True, text=True, check=False).returncode:
            failed.append(spec)
    return failed


def copy_data(out: Path) -> list[str]:
    data = out / "data"
    tokenizer = data / "tokenizers" / "mistral-7b-v0.3"
    tokenizer.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(SHARED / "tokenizers" / "mistral-7b-v0.3" / name, tokenizer / name)
    (data / "alpaca").mkdir(exist_ok=True)
    shutil.copy(SHARED / "alpaca" / "alpaca_sample2000.alpaca_small.json", data / "alpaca")
    (data / "gsm8k").mkdir(exist_ok=True)
    with (SHARED / "gsm8k" / "train.jsonl").open() as source:  # GRPO reads 400 prompts
        lines = [next(source) for _ in range(500)]
    (data / "gsm8k" / "train.jsonl").write_text("".join(lines))
    return [str(p.relative_to(out)) for p in sorted(data.rglob("*")) if p.is_file()]


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".gpu")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (../shared/GPU.md)")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    wheels = args.out / "wheels"
    wheels.mkdir(parents=True)
    versions = pinned()
    failed = download(CORE, wheels, args.python_version, versions)
    if failed:
        sys.exit(f"no wheel for Python {args.python_version}: {', '.join(failed)}")
    files = copy_data(args.out)
    left_out = []
    for name in IF_MISSING:  # optional: kept while the bundle stays under the limit
        before = set(wheels.iterdir())
        if download([name], wheels, args.python_version, versions):
            left_out.append(f"{name} (no wheel)")
            continue
        if size(args.out) > LIMIT:
            for new in set(wheels.iterdir()) - before:
                new.unlink()
            left_out.append(f"{name} (over {LIMIT >> 20} MiB)")
    manifest = {
        "python": args.python_version,
        "core": CORE,
        "if_missing": IF_MISSING,
        "wheels": sorted(p.name for p in wheels.iterdir()),
        "data": files,
        "left_out": left_out,
        "bytes": size(args.out),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{args.out}: {len(manifest['wheels'])} wheels, {len(files)} data files, {manifest['bytes'] / 2**20:.1f} MiB")
    if left_out:
        print("left out: " + ", ".join(left_out))


if __name__ == "__main__":
    main()
