"""The store's commit log: one fsync'd JSON line per committed shard, appended after the sealed
manifest, so a commit costs one small write whatever the store's size (rewriting and resealing
the whole manifest per shard capped the driver at a few commits per second at 2,000 shards).

Each line carries the shard's entry, `base` (the seal of the manifest the log extends), `prev`
(the checksum of the line before it; `base` for the first line) and `sha256` (the checksum of the
line's own content). `base` makes the log belong to one manifest: once the writer folds the log
into a new manifest (`StoreWriter._write_manifest`), a log left behind by a kill before its
removal names the old seal and is stale. The `prev` chain shows a removed or reordered line.
Reading: a damaged *last* line is what a kill or power loss mid-append leaves, so it is ignored
(that shard was never committed; its files are garbage); a damaged or out-of-chain line with valid
lines after it cannot come from a crash and is refused as tampering."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

from featx.errors import IntegrityError
from featx.io.atomic import disk_error, fsync_dir

log = logging.getLogger(__name__)

COMMIT_LOG = "commits.jsonl"


def _digest(base: str, prev: str, shard: dict) -> str:
    body = json.dumps({"base": base, "prev": prev, "shard": shard}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _parse(line: bytes) -> dict | None:
    """The line's record when it is whole and its checksum matches, else None."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("base"), str) and isinstance(record.get("prev"), str)
            and isinstance(record.get("shard"), dict)):
        return None
    return record if record.get("sha256") == _digest(record["base"], record["prev"], record["shard"]) else None


def replay(folder: str | Path, manifest_seal: str, fix: str) -> list[dict]:
    """The shard entries the log at `folder` commits on top of the manifest sealed `manifest_seal`."""
    file = Path(folder) / COMMIT_LOG
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    # a whole line ends in a newline; what follows the last newline is a torn append (or nothing)
    segments = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    shards, prev = [], manifest_seal
    for position, (number, line) in enumerate(segments):
        record = _parse(line)
        last = position == len(segments) - 1
        if record is None:
            if last:
                log.warning("store %s: ignoring a damaged last line of %s (line %d: a commit cut short by a kill "
                            "or power loss); that shard will be extracted again", folder, COMMIT_LOG, number)
                break
            raise IntegrityError(f"'{file}' line {number} is damaged (not the JSON featx wrote, or its checksum does "
                                 f"not match) while later lines are whole: it was changed after featx wrote it. {fix}")
        if record["base"] != manifest_seal:
            if position == 0:  # folded into the manifest already; a kill came before the log's removal
                log.info("store %s: %s belongs to an earlier manifest (already folded in); ignored", folder, COMMIT_LOG)
                return []
            raise IntegrityError(f"'{file}' line {number} extends another manifest than the lines before it: it "
                                 f"was changed after featx wrote it. {fix}")
        if record["prev"] != prev:
            after = f"line {segments[position - 1][0]}" if position else "the manifest"
            raise IntegrityError(f"'{file}' line {number} does not follow {after} (a line was removed, reordered or "
                                 f"inserted after featx wrote it). {fix}")
        shards.append(record["shard"])
        prev = record["sha256"]
    return shards


class CommitLog:
    """Appends commits after the manifest sealed `manifest_seal` (the writer holds the store's lock)."""

    def __init__(self, folder: str | Path, manifest_seal: str):
        self.file = Path(folder) / COMMIT_LOG
        self.base = manifest_seal
        self._prev = manifest_seal
        self._fd: int | None = None

    def append(self, shard: dict) -> None:
        """The commit point of one shard: the line is on disk when this returns."""
        digest = _digest(self.base, self._prev, shard)
        line = json.dumps({"base": self.base, "prev": self._prev, "shard": shard, "sha256": digest},
                          ensure_ascii=True) + "\n"
        data = line.encode()
        try:
            if self._fd is None:
                # a new log starts empty: whatever an earlier writer left here was folded or is garbage
                self._fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666)
                os.fsync(self._fd)
                fsync_dir(self.file.parent)  # the file's name must survive a crash too
            written = os.write(self._fd, data)
            if written != len(data):  # a regular file takes a small write whole unless the disk is full
                raise OSError(errno.ENOSPC, f"short write to {self.file} ({written} of {len(data)} bytes)")
            os.fdatasync(self._fd)
        except OSError as exc:  # the torn line, if any, is ignored on reading: that shard is not committed
            error = disk_error(exc, self.file, len(data))
            if error is None:
                raise
            raise error from None
        self._prev = digest

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Drop the log once the manifest holds its shards (called right after the manifest's write)."""
        self.close()
        remove(self.file.parent)


def remove(folder: str | Path) -> None:
    file = Path(folder) / COMMIT_LOG
    if file.exists():
        file.unlink()
        fsync_dir(file.parent)

