"""Many models behind one server, loaded when first asked for: the models of a fine-tuning API server.

A catalog says which model ids an owner may use and where each one is; the pool keeps the most recently used
`max_loaded` of them loaded (each its own embedded engine) and closes the idle one used longest ago when another
must load. A model trained a moment ago is served at its first request: nothing restarts.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from llm_finetuning.serve.engine import Engine
from llm_finetuning.serve.protocol import model_not_found

logger = logging.getLogger(__name__)


class Catalog(Protocol):
    def visible(self, owner: str | None) -> list[str]:
        """Model ids `owner` may use (None: the ones everybody may use)."""

    def locate(self, model: str, owner: str | None) -> str | None:
        """Where `model` loads from, if `owner` may use it."""


class EnginePool:
    def __init__(self, catalog: Catalog, load: Callable[[str, str], Engine], max_loaded: int = 2) -> None:
        self.catalog, self.load, self.max_loaded = catalog, load, max_loaded
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()

    def model_ids(self, owner: str | None = None) -> list[str]:
        return self.catalog.visible(owner)

    def engine_for(self, model: str, owner: str | None) -> Engine:
        """The engine serving `model` for `owner`, loading it if needed (call it off the event loop)."""
        path = self.catalog.locate(model, owner)
        if path is None:
            raise model_not_found(model, self.catalog.visible(owner))
        with self._lock:
            if model in self._engines:
                self._engines.move_to_end(model)
                return self._engines[model]
            idle = [m for m, e in self._engines.items() if not e.pending_count() and not e.active_count()]
            while len(self._engines) >= self.max_loaded and idle:  # a busy engine is never closed under its users
                old = idle.pop(0)
                logger.info("unloading %s", old)
                self._engines.pop(old).close()
            logger.info("loading %s from %s", model, path)
            engine = self.load(path, model)
            self._engines[model] = engine
            return engine

    def pending_count(self) -> int:
        return sum(e.pending_count() for e in list(self._engines.values()))

    def active_count(self) -> int:
        return sum(e.active_count() for e in list(self._engines.values()))

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
