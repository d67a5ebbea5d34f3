"""Which prompts come next: a seeded shuffle of the dataset, reshuffled after each pass, with a resumable position."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


class PromptOrder:
    """Draws dataset indices in a seeded random order, one permutation per pass over the data.

    The position is state: `state_dict()` / `load_state_dict()` carry the generator, the pass number and how far
    into the current pass the draws got, so a restored order continues with exactly the indices an uninterrupted
    one would have drawn, through the reshuffles of later passes. Its own generator makes the order independent
    of how many random numbers sampling consumed.
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.size: int | None = None
        self.epoch = 0
        """Permutations drawn so far (the pass the next index belongs to, counting from 1)."""
        self.position = 0
        """Indices of the current permutation already drawn."""
        self._epoch_start: Tensor | None = None  # generator state before the current permutation was drawn
        self._permutation: list[int] = []

    def take(self, count: int, size: int) -> list[int]:
        """The next `count` indices into a dataset of `size` rows (a pass may end inside the batch)."""
        if size <= 0:
            raise ValueError("the prompt dataset is empty")
        if size != self.size:
            if self.size is not None:
                logger.info("Prompt dataset changed size (%d -> %d): starting a new shuffled pass", self.size, size)
            self.size, self.position, self._permutation = size, 0, []
        indices: list[int] = []
        while len(indices) < count:
            if self.position >= len(self._permutation):
                self._epoch_start = self.generator.get_state()
                self._permutation = torch.randperm(size, generator=self.generator).tolist()
                self.epoch += 1
                self.position = 0
            indices.append(self._permutation[self.position])
            self.position += 1
        return indices

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(JSON-ready position, generator states as uint8 tensors)."""
        tensors = {"generator": self.generator.get_state()}
        if self._epoch_start is not None:
            tensors["epoch_start"] = self._epoch_start
        return {"size": self.size, "epoch": self.epoch, "position": self.position}, tensors

    def load_state_dict(self, position: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Continue from a `state_dict()`: redraw the current permutation from its saved starting state."""
        self.size, self.epoch, self.position = position["size"], position["epoch"], position["position"]
        self._permutation, self._epoch_start = [], None
        if "epoch_start" in tensors:
            self._epoch_start = tensors["epoch_start"].clone()
            self.generator.set_state(self._epoch_start)
            self._permutation = torch.randperm(self.size, generator=self.generator).tolist()
        self.generator.set_state(tensors["generator"].clone())
