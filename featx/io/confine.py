"""Reads confined to one folder (the service's --data-root): a path is checked when it is named
and again, on the file actually opened, when it is read.

`resolve_under` never raises anything but `PathRefused` for a hostile name (a NUL byte, a
5,000-character name, a symbolic link loop, `..`, an absolute path elsewhere). `opened_path`
reads back which file an open descriptor refers to, so a symbolic link swapped in between the
check and the open cannot lead outside the root."""

from __future__ import annotations

import os
from pathlib import Path

from featx.errors import InputError


class PathRefused(InputError):
    """A path that is outside the root or cannot be resolved; `reason` is 'outside' or 'unresolvable'."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def resolve_under(root: str | Path, path: str | Path, *, what: str = "path") -> Path:
    """`path` (relative paths are taken under `root`), symbolic links resolved, which must lie under `root`."""
    root = Path(root).resolve()
    text = str(path)
    try:
        candidate = Path(text)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (ValueError, OSError, RuntimeError) as exc:  # NUL byte; name too long; symlink loop (3.11: RuntimeError)
        raise PathRefused(f"{what} {_short(text)} cannot be resolved under the server's --data-root "
                          f"({type(exc).__name__}: {exc}); name a file under it", "unresolvable") from None
    if not resolved.is_relative_to(root):
        raise PathRefused(f"{what} {_short(text)} is outside the server's --data-root; only files under it can be "
                          "named", "outside")
    return resolved


def opened_path(fd: int) -> Path | None:
    """The file an open descriptor refers to (Linux: /proc/self/fd); None where it cannot be told."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def check_opened(fd: int, path: str, root: str | Path) -> None:
    """PathRefused when the file behind `fd` lies outside `root` (a link swapped in after the check)."""
    real = opened_path(fd)
    if real is None:  # no /proc: resolve the name once more (a narrower race than none at all)
        real = Path(os.path.realpath(path))
    if not real.is_relative_to(Path(root).resolve()):
        raise PathRefused(f"{_short(path)} leads outside the --data-root (to a file elsewhere, through a symbolic "
                          "link); only files under it are read", "outside")


def read_under(root: str | Path, path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file under `root`, its size checked (fstat) before a byte is read."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise PathRefused(f"{_short(str(path))} cannot be opened ({exc.strerror})", "unresolvable") from None
    try:
        check_opened(fd, str(path), root)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused(f"{_short(str(path))} is not a regular file", "unresolvable")
        if info.st_size > max_bytes:
            raise InputError(f"{_short(str(path))} has {info.st_size:,} bytes, above the request limit of "
                             f"{max_bytes:,} (--max-body-mb); send smaller files")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


def _short(text: str, keep: int = 120) -> str:
    shown = text if len(text) <= keep else f"{text[:keep]}… ({len(text)} characters)"
    return repr(shown)
