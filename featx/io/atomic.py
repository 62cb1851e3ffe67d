"""Crash-safe writes: a file is written under a temporary name in the same folder, flushed,
fsynced and renamed, so readers see the old file or the new one, never half of one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".tmp-"


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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a store is meant to be shared
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent))
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
