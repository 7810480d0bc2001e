"""Open Qdrant Edge shards of one store root: per-collection flock, lazy opening, reference counts, and alias
pointer files re-read on change so that an alias swap moves this process's readers to the new shard.

See search/store/edge.py for the file layout and the process and thread rules this implements.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import qdrant_edge as qe

from search.store.payload_cache import PayloadCache
from vitrina.errors import BadInput, NotFound, StoreError
from vitrina.locks import flock_within

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str, what: str = "collection") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadInput(f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.'")
    return name


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of data in a file; the whole file where the system cannot tell its holes."""
    seek_data, seek_hole = getattr(os, "SEEK_DATA", None), getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        yield 0, size
        return
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, seek_data)
        except OSError as e:
            if e.errno != errno.ENXIO:  # holes not supported here: copy the rest as it is
                yield pos, size
            return  # ENXIO: only a hole from pos on
        pos = os.lseek(fd, start, seek_hole)
        yield start, pos


def copy_sparse(src: str, dst: str, chunk: int = 1 << 20) -> None:
    """Copy one file keeping its holes: the engine preallocates its mmap files (32 MiB each, mostly holes)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        for start, end in _data_ranges(fin.fileno(), size):
            while start < end:
                data = os.pread(fin.fileno(), min(chunk, end - start), start)
                if not data:
                    break
                os.pwrite(fout.fileno(), data, start)
                start += len(data)
        fout.truncate(size)


def copy_collection(root: Path, name: str, dest_root: Path, timeout_s: float = 30.0, wal: bool = True
                    ) -> dict[str, Any]:
    """Copy collection `name` of the store at `root` (its shard and meta.json) into the store at `dest_root`,
    holding its lock meanwhile, so that no process has it open (and writes into it) while its files are read.
    wal=False: the copy keeps no write-ahead log (see without_wal). Returns the collection's meta."""
    pool = ShardPool(root, timeout_s)
    if not pool.exists(name):
        raise NotFound(f"collection {name!r} does not exist")
    fd = pool.take_lock(name)
    try:
        if not pool.exists(name):  # dropped while we waited
            raise NotFound(f"collection {name!r} does not exist")
        source, dest = pool.dir(name), Path(dest_root) / "collections" / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source / "shard", dest / "shard", copy_function=copy_sparse)
        shutil.copyfile(source / "meta.json", dest / "meta.json")
    finally:
        os.close(fd)
    if not wal:
        without_wal(dest / "shard")
    return json.loads((dest / "meta.json").read_text())


def without_wal(shard_dir: Path) -> None:
    """Switch a shard's write-ahead log off, for a copy that never has to survive a crash (a serving process's
    replica, made again from the main store and the change log whenever the process starts). The shard is opened
    with its log once and flushed, so whatever the copied log holds is in the segments before the log goes (the
    engine deletes the log of a shard it opens without one); then the copy neither maps a log (41 MiB a worker
    on the fashion index) nor writes each replayed change twice."""
    try:
        shard = qe.EdgeShard.load(str(shard_dir))
        try:
            shard.flush()
        finally:
            shard.close()
        _set_config(shard_dir, "wal_enabled", False)
    except Exception as e:
        raise StoreError(f"cannot switch the write-ahead log off in {shard_dir}: {e}") from e


def search_pool(shard_dir: Path, threads: int) -> None:
    """Size the search thread pool the engine gives the shard when it loads it (its edge_config.json; 0: the
    engine's default, derived from the CPU count). The pool runs a query's per-segment reads while the calling
    thread waits on it, so a one-segment index gains nothing from several threads and pays for handing each query
    over and for the idle ones' wake-ups: on the 2-core box, two serving processes with one thread each search
    with about 8% less CPU than with the default pool (config.toml, [store].search_threads)."""
    _set_config(shard_dir, "max_search_threads", threads if threads > 0 else None)


def _set_config(shard_dir: Path, key: str, value: Any) -> None:
    """Set (None: remove) one key of a shard's persisted engine config, which the engine reads when it loads the
    shard; the file is replaced atomically, and only when the value changes."""
    config_file = shard_dir / "edge_config.json"
    config = json.loads(config_file.read_text())
    if config.get(key) == value:
        return
    if value is None:
        config.pop(key, None)
    else:
        config[key] = value
    staged = config_file.with_suffix(".json.tmp")
    staged.write_text(json.dumps(config))
    os.replace(staged, config_file)


class ShardHandle:
    """An open shard, its lock file, its cached payloads, and how many calls are using it right now."""

    def __init__(self, shard: qe.EdgeShard, lock_fd: int, meta: dict[str, Any], payload_cache: int = 0) -> None:
        self.shard, self.lock_fd, self.meta = shard, lock_fd, meta
        self.payloads = PayloadCache(payload_cache)
        self.users = 0
        self.unsealed_kb = 0.0  # vectors upserted since the shard's last optimisation (EdgeStore.build_due)
        self.retired = False  # no longer in the store's map: close when the last user is done
        self.closed = False

    def close(self) -> None:
        try:
            self.shard.flush()
            self.shard.close()
        finally:
            os.close(self.lock_fd)  # releases the flock


class ShardPool:
    """The shards of `root` this process has open, each shared by the calls using it and closed when retired."""

    def __init__(self, root: Path, timeout_s: float = 30.0, payload_cache: int = 0, search_threads: int = 0) -> None:
        self.root = Path(root)
        self.timeout_s = timeout_s  # longest wait for a shard lock held by another process
        self.payload_cache = payload_cache  # payloads each open shard keeps in memory (search/store/payload_cache.py)
        self.search_threads = search_threads  # each open shard's search pool (search_pool; 0: the engine's default)
        self._lock = threading.RLock()
        self._handles: dict[str, ShardHandle] = {}
        self._openers: dict[str, threading.Lock] = {}
        self._moved_from: set[str] = set()  # collections an alias of this process moved away from
        self._aliases: dict[str, tuple[tuple[int, int], str]] = {}  # alias -> (stat key, target)
        self._closed = False

    def dir(self, name: str) -> Path:
        return self.root / "collections" / name

    def exists(self, name: str) -> bool:
        return (self.dir(name) / "meta.json").is_file()

    def take_lock(self, name: str) -> int:
        """flock the collection's lock file (waiting up to timeout_s); StoreError names the holder."""
        path = self.dir(name) / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not flock_within(fd, self.timeout_s):
            holder = path.read_text(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"collection {name!r} is open in another process ({holder}); an edge shard can be "
                "open in one process at a time",
                detail="stop that process (e.g. `vitrina serve`), write through its HTTP API, "
                       "or use the qdrant backend for several writers")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:200]}".encode(), 0)
        return fd

    def _open(self, name: str) -> ShardHandle:
        if not self.exists(name):
            raise NotFound(f"collection {name!r} does not exist")
        fd = self.take_lock(name)
        if not self.exists(name):  # dropped while we waited for its lock
            os.close(fd)
            raise NotFound(f"collection {name!r} does not exist")
        try:
            meta = json.loads((self.dir(name) / "meta.json").read_text())
            search_pool(self.dir(name) / "shard", self.search_threads)
            shard = qe.EdgeShard.load(str(self.dir(name) / "shard"))
        except Exception as e:
            os.close(fd)
            raise StoreError(f"cannot open collection {name!r}: {e}") from e
        return ShardHandle(shard, fd, meta, self.payload_cache)

    def resolve(self, name: str) -> str:
        """The collection behind `name`: an alias's target (re-read when its pointer file changed), or name."""
        path = self.root / "aliases" / name
        try:
            st = os.stat(path)
        except FileNotFoundError:
            with self._lock:
                old = self._aliases.pop(name, None)
            if old:
                self._moved_away(old[1])
            return name
        key = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            cached = self._aliases.get(name)
            if cached and cached[0] == key:
                return cached[1]
        target = path.read_text().strip()
        with self._lock:
            old = self._aliases.get(name)
            self._aliases[name] = (key, target)
            self._moved_from.discard(target)
        if old and old[1] != target:
            log.info("alias %r moved %s -> %s: releasing the old shard", name, old[1], target)
            self._moved_away(old[1])
        return target

    def _moved_away(self, name: str) -> None:
        """An alias stopped pointing at `name`: close it once idle, and after each later use, until an
        alias points at it again (so a search that resolved the alias just before the swap cannot
        leave the old shard open in this process, where it would block the indexer from dropping it)."""
        with self._lock:
            if name in {t for _, t in self._aliases.values()}:
                return
            self._moved_from.add(name)
        self.retire(name)

    def _acquire(self, target: str) -> ShardHandle:
        """Count a user on the open handle of `target`, opening it first (outside the store lock)."""
        with self._lock:
            handle = self._handles.get(target)
            if handle is not None:
                handle.users += 1
                return handle
            opener = self._openers.setdefault(target, threading.Lock())
        with opener:  # one opener per collection; others wait for it rather than fight over the flock
            with self._lock:
                handle = self._handles.get(target)
                if handle is not None:
                    handle.users += 1
                    return handle
            handle = self._open(target)
            with self._lock:
                self._handles[target] = handle
                handle.users += 1
                return handle

    def _release(self, target: str, handle: ShardHandle) -> None:
        with self._lock:
            handle.users -= 1
            idle = handle.users == 0
            if idle and target in self._moved_from and self._handles.get(target) is handle:
                del self._handles[target]
                handle.retired = True
            closing = idle and handle.retired and not handle.closed
            handle.closed = handle.closed or closing
        if closing:
            handle.close()

    @contextmanager
    def use(self, name: str) -> Iterator[ShardHandle]:
        """The open handle of collection or alias `name` for the duration of one call."""
        if self._closed:
            raise StoreError("the store is closed")
        target = self.resolve(check_name(name))
        try:
            handle = self._acquire(target)
        except NotFound:
            # An alias resolved just before it moved, and its old collection dropped since: take the new one.
            again = self.resolve(name) if target != name else target
            if again == target:
                raise
            target, handle = again, self._acquire(again)
        try:
            yield handle
        except (StoreError, NotFound, BadInput):
            raise
        except Exception as e:  # engine errors arrive as plain Exception
            raise StoreError(f"edge store: {target}: {e}") from e
        finally:
            self._release(target, handle)

    def retire(self, name: str) -> None:
        """Close this process's handle on `name` now, or when the last running call on it ends."""
        with self._lock:
            handle = self._handles.pop(name, None)
            if handle is None:
                return
            handle.retired = True
            closing = handle.users == 0 and not handle.closed
            handle.closed = handle.closed or closing
        if closing:
            handle.close()


    def adopt(self, name: str, handle: ShardHandle) -> None:
        """Hold a shard this process has just created (and locked) as the open handle of `name`."""
        with self._lock:
            self._handles[name] = handle

    def close(self) -> None:
        """Close every shard (each once its running calls end); later calls raise StoreError."""
        with self._lock:
            self._closed = True
            for name in list(self._handles):
                self.retire(name)
