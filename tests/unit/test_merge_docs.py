"""The configs of docs/merging.md load, and each mergekit config there is exactly its llmft equivalent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_finetuning.export.merge_config import load_merge_config

pytestmark = pytest.mark.unit
DOC = Path(__file__).resolve().parents[2] / "docs" / "merging.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_every_config_in_the_doc_loads(tmp_path: Path) -> None:
    assert len(BLOCKS) >= 6
    for i, block in enumerate(BLOCKS):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(block, encoding="utf-8")
        load_merge_config(path)


def test_each_mergekit_config_is_its_llmft_equivalent(tmp_path: Path) -> None:
    pairs = [
        (a, b)
        for a, b in zip(BLOCKS, BLOCKS[1:], strict=False)
        if a.startswith("# mergekit") and b.startswith("# llmft")
    ]
    assert len(pairs) == 2
    for i, (mergekit, llmft) in enumerate(pairs):
        configs = []
        for name, text in (("mergekit", mergekit), ("llmft", llmft)):
            path = tmp_path / f"{name}{i}.yaml"
            path.write_text(text, encoding="utf-8")
            configs.append(load_merge_config(path).model_dump(exclude={"output_dir"}))
        assert configs[0] == configs[1]
