"""Which input tensors make each output tensor of a merge, laid out by slices of layers as mergekit does.

A `models:` merge is one slice holding all layers of every model (the base added if it is not listed). Layer
tensors are those named `<prefix>.layers.<i>.<rest>` (also `.h.<i>.` and `.blocks.<i>.`); a slice's output
layers are numbered on from the previous slice's. Tensors outside the layers come from the first slice when
they are embeddings (`embed`, `wte`, `wpe` in the name) and from the last slice otherwise (final norm, head).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llm_finetuning.errors import UserError
from llm_finetuning.export.merge_config import MergeConfig, MergeModel, SliceSource

LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks)\.)(?P<index>\d+)\.(?P<rest>.+)$")
EMBEDDING = re.compile(r"embed|(^|\.)wte\.|(^|\.)wpe\.")


@dataclass(frozen=True)
class Job:
    """One output tensor: its name, its input tensors (one per model of the slice) and where it lies."""

    output: str
    inputs: tuple[tuple[MergeModel, str], ...]
    """Each model of the slice with the name of its tensor that goes into this output."""
    position: float
    """Relative layer within the slice (0 to 1) at which gradient options are read; 0 outside the layers."""

    @property
    def order(self) -> tuple[str, str]:
        """mergekit computes tensors in this order, which fixes the random draws of DARE and DELLA."""
        return max(name for _, name in self.inputs), self.output


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    layer_sources: list[tuple[MergeModel, int]]
    """For each output layer, the first source of its slice and that source's layer index."""


def layer_tensors(names: Sequence[str]) -> dict[int, list[tuple[str, str]]]:
    """Per layer index, its tensors as (prefix, rest) in file order."""
    layers: dict[int, list[tuple[str, str]]] = {}
    for name in names:
        match = LAYER.match(name)
        if match:
            layers.setdefault(int(match["index"]), []).append((match["prefix"], match["rest"]))
    return layers


def slices_of(config: MergeConfig, names: Mapping[str, Sequence[str]]) -> list[list[SliceSource]]:
    """The config's slices, a `models:` merge turned into one slice of whole models."""
    if config.slices is not None:
        return [list(piece.sources) for piece in config.slices]
    models = list(config.models or [])
    if config.base_model is not None and config.base_model not in [m.path for m in models]:
        models.append(MergeModel(path=config.base_model))
    return [
        [
            SliceSource(**m.model_dump(exclude_unset=True), layer_range=(0, len(layer_tensors(names[m.path]))))
            for m in models
        ]
    ]


def _outside(sources: Sequence[SliceSource], names: Mapping[str, Sequence[str]], embeddings: bool) -> list[Job]:
    first = sources[0]
    return [
        Job(name, tuple((s, name) for s in sources), 0.0)
        for name in names[first.path]
        if not LAYER.match(name) and bool(EMBEDDING.search(name)) == embeddings
    ]


def build_plan(config: MergeConfig, names: Mapping[str, Sequence[str]]) -> Plan:
    """Every output tensor of the merge, in the order mergekit computes them; `names` lists each model's tensors
    by its `path`."""
    pieces = slices_of(config, names)
    jobs = _outside(pieces[0], names, embeddings=True)
    layer_sources: list[tuple[MergeModel, int]] = []
    for number, sources in enumerate(pieces):
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sources}
        if len(lengths) != 1:
            raise UserError(f"`slices.{number}`: every source needs a layer range of the same length")
        length = lengths.pop()
        per_source = [layer_tensors(names[s.path]) for s in sources]
        for source, layers in zip(sources, per_source, strict=True):
            start, end = source.layer_range
            if not 0 <= start < end <= len(layers):
                raise UserError(
                    f"`layer_range: [{start}, {end}]` of {source.path} is outside its {len(layers)} layers (0 to "
                    f"{len(layers)}, the end excluded)"
                )
        for offset in range(length):
            out_layer = len(layer_sources)
            first = sources[0]
            layer_sources.append((first, first.layer_range[0] + offset))
            position = offset / (length - 1) if length > 1 else 1.0
            for prefix, rest in per_source[0][first.layer_range[0] + offset]:
                inputs = tuple((s, f"{prefix}{s.layer_range[0] + offset}.{rest}") for s in sources)
                jobs.append(Job(f"{prefix}{out_layer}.{rest}", inputs, position))
    jobs += _outside(pieces[-1], names, embeddings=False)
    return Plan(sorted(jobs, key=lambda job: job.order), layer_sources)
