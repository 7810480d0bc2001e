"""Reindex bookkeeping on disk: the resume checkpoint (atomic writes), the run lock, and the JSON report."""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from indexer.reader import Skipped
from vitrina.config import Config
from vitrina.errors import VitrinaError

STATE_VERSION = 1


@dataclass
class ReindexState:
    """What a reindex has durably done: the collection it fills and how far into the catalogue it got.

    `position` counts reader outputs (Products and Skipped rows, in file order) whose fate is settled:
    written to the store and flushed, or skipped. A rerun skips that many and continues.
    """

    alias: str
    collection: str
    fingerprint: dict[str, Any]
    position: int = 0
    indexed: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "writing"  # writing | finalizing | replaying (count verified; replaying the write log)
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    resumes: int = 0
    version: int = STATE_VERSION

    def add_skips(self, skips: list[Skipped]) -> None:
        self.skipped.extend({"id": s.id, "reason": s.reason, "row": s.row} for s in skips)


def reindex_dir(cfg: Config) -> Path:
    return cfg.data_dir / "reindex"


def state_path(cfg: Config) -> Path:
    return reindex_dir(cfg) / f"{cfg.store.alias}.state.json"


def report_path(cfg: Config) -> Path:
    return reindex_dir(cfg) / f"{cfg.store.alias}.report.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file, fsync it, then rename over `path`: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_state(cfg: Config, state: ReindexState) -> None:
    state.updated_at = time.time()
    write_json_atomic(state_path(cfg), asdict(state))


def load_state(cfg: Config) -> ReindexState | None:
    """The checkpoint of an unfinished reindex for this alias, or None. A corrupt file is an error."""
    path = state_path(cfg)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"version {raw.get('version')!r}")
        return ReindexState(**raw)
    except (OSError, ValueError, TypeError) as e:
        raise VitrinaError(f"cannot read the reindex checkpoint {path}: {e}",
                           detail="rerun with --fresh to discard it") from e


def clear_state(cfg: Config) -> None:
    try:
        state_path(cfg).unlink()
    except FileNotFoundError:
        pass


class RunLock:
    """An exclusive flock on data_dir/reindex/<alias>.lock: one reindex per alias at a time."""

    def __init__(self, cfg: Config) -> None:
        self.path = reindex_dir(cfg) / f"{cfg.store.alias}.lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text(errors="replace").strip() or "another process"
            os.close(fd)
            raise VitrinaError(f"another reindex of this alias is running ({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
