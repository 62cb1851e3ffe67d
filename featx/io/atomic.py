"""Crash-safe writes: a file is written under a temporary name in the same folder, flushed,
fsynced and renamed, so readers see the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".tmp-"
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _read_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux): setting it, even
    for an instant, would race with other threads creating files (the service runs jobs in threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)  # elsewhere: once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


SEAL = "record_sha256"


def canonical_json(record: dict) -> bytes:
    """The bytes a record's seal is the sha256 of: every key but the seal, sorted."""
    body = {k: v for k, v in record.items() if k != SEAL}
    return json.dumps(body, sort_keys=True, default=str, ensure_ascii=True).encode()


def seal(record: dict) -> dict:
    """The record with the sha256 of its own canonical JSON added."""
    sealed = json.loads(json.dumps(record, default=str))  # what will be read back (tuples -> lists)
    sealed[SEAL] = hashlib.sha256(canonical_json(sealed)).hexdigest()
    return sealed


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _as_os_error(exc: BaseException) -> BaseException:
    """A library's error whose message carries the text of a disk errno, as that OSError."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    for number in DISK_ERRNOS:
        if os.strerror(number) in text:
            return OSError(number, text)
    return exc


def disk_error(exc: OSError, path: str | Path, needed: int | None = None):
    """featx's DiskError for a full disk, a quota, a too-large file or a read-only filesystem met
    while writing `path` (`needed`: the bytes that write takes, when known); None for other errors."""
    from featx.errors import DiskError

    if not isinstance(exc, OSError) or exc.errno not in DISK_ERRNOS:
        return None
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if exc.errno == errno.EROFS:
        return DiskError(f"cannot write '{path.name}' in '{folder}': the filesystem is read-only; choose an output "
                         "folder on a writable filesystem (or remount it read-write) and run the command again")
    try:
        free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
    except (OSError, StopIteration):
        free = None
    what = {errno.EDQUOT: "the disk quota is used up", errno.EFBIG: "the file is larger than this filesystem or "
            "this process allows"}.get(exc.errno, "no space left on the device")
    space = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    need = f", which needs {human_bytes(needed)}" if needed else ""
    return DiskError(f"{what} holding '{folder}' ({space}) while writing '{path.name}'{need}. Free space there (or "
                     "choose another output folder) and run the same command again: work already committed is kept")


@contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`. A full
    disk or a read-only filesystem raises featx's DiskError (`size`: the bytes being written)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a store is meant to be shared
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a library's own write (faiss) reports ENOSPC so
        error = disk_error(_as_os_error(exc), path, size)
        if error is None:
            raise
        raise error from None
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # a read-only filesystem: nothing was created there anyway
                pass


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_hashed(path: str | Path, data: bytes) -> str:
    """Write atomically and return the sha256 of the bytes in hand (no reading the file back)."""
    import hashlib

    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def write_json(path: str | Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_sealed_json(path: str | Path, record: dict) -> dict:
    """Write a featx record with the checksum of its own content (`seal`)."""
    sealed = seal(record)
    write_json(path, sealed)
    return sealed


def remove_stale_temporaries(folder: str | Path) -> None:
    """Temporary files left by a killed run are garbage: nothing refers to them."""
    for tmp in Path(folder).rglob(TMP_PREFIX + "*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in: nothing appears at `path`
    unless the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent))
    except OSError as exc:
        error = disk_error(exc, path)
        if error is None:
            raise
        raise error from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; artifacts are meant to be shared
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(TMP_PREFIX + path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        error = disk_error(_as_os_error(exc), path, _tree_size(tmp) or None)
        if error is None:
            raise
        raise error from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tree_size(folder: Path) -> int:
    try:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    except OSError:
        return 0
