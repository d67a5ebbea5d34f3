"""On-disk cache of judge replies: one SQLite file, safe for the threads of one client and for several
processes (SQLite locks the file), keyed by a hash of everything that determines the reply."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

FILE_NAME = "judge_cache.sqlite"


def cache_key(**parts: Any) -> str:
    """A stable hash of the parts (endpoint, model, sampling settings, rubric, messages with the answer and the
    reference). Key order does not matter."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class JudgeCache:
    """`get(key)` and `put(key, reply)`; a damaged file or a locked database is a miss, never an error."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection shared by the client's threads, serialised by the lock (sqlite3 objects are not
        # thread-safe on their own); the timeout waits for other processes' writes.
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT, created REAL)")

    def get(self, key: str) -> str | None:
        try:
            with self._lock:
                row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def put(self, key: str, reply: str) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO replies (key, reply, created) VALUES (?, ?, ?)", (key, reply, time.time())
                )
        except sqlite3.Error:
            pass  # a cache that cannot be written only costs a repeated request later

    def close(self) -> None:
        with self._lock:
            self._db.close()
