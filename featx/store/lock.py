"""One writer per store: an exclusive `flock` on STORE/.featx-lock.

The kernel drops the lock when its process dies, so a lock file left by a killed run is stale by
construction: the next writer takes it over (and says so). The file records who holds the lock,
for the message a second writer gets."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from featx.errors import StoreLockedError

log = logging.getLogger(__name__)

LOCK_FILE = ".featx-lock"


class StoreLock:
    def __init__(self, folder: str | Path):
        self.file = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "StoreLock":
        if self._fd is not None:
            return self
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            from featx.io.atomic import disk_error

            error = disk_error(exc, self.file)
            if error is None:
                raise
            raise error from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreLockedError(
                f"store '{self.file.parent}' is being written by PID {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} (since {holder.get('since', '?')}); wait for that run to finish or stop "
                "it, then run this command again") from None
        previous = _holder(fd)
        if previous.get("pid"):
            log.info("store %s: took over the lock left by PID %s (that process is gone)",
                     self.file.parent, previous["pid"])
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
