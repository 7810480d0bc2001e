"""flock with a deadline: the one way vitrina waits for a file lock another thread or process holds."""

from __future__ import annotations

import fcntl
import time


def flock_within(fd: int, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Take an exclusive flock on `fd`, retrying every `poll_s` until `timeout_s` has passed; False if never."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
