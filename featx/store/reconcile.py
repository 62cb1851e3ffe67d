"""The inputs are the truth: compare the inputs of a re-run with what a store holds.

Every difference is classified — new files, changed content, relabelled / re-split / regrouped
rows, moved files (same content under a new path) and removed files — and turned into a new plan:
metadata changes are applied in place (no re-extraction), moved rows keep their vectors, changed
and new files become new rows to extract, removed rows are marked inactive (the writer compacts
them away when the run finishes)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from featx.io.containers import MemberError, container_stat, member_exists, read_member, split_member

PLAN_COLUMNS = ["row_id", "path", "label", "split", "group", "active"]
_KEYS = ("label", "split", "group")


@dataclass
class Changes:
    new: int = 0
    changed: int = 0
    relabelled: int = 0
    resplit: int = 0
    regrouped: int = 0
    moved: int = 0
    removed: int = 0

    def __bool__(self) -> bool:
        return any(asdict(self).values())

    def line(self) -> str:
        """One line for the user, e.g. '2 new, 1 relabelled, 1 removed, 1 moved'."""
        words = {"resplit": "re-split"}
        parts = [f"{n} {words.get(k, k)}" for k, n in asdict(self).items() if n]
        return ", ".join(parts) if parts else "no changes"

    def as_dict(self) -> dict:
        return asdict(self)


def plan_from_records(records, start_row: int = 0) -> pd.DataFrame:
    plan = pd.DataFrame({"path": [r.path for r in records],
                         "label": [r.label for r in records],
                         "split": [r.split for r in records],
                         "group": [getattr(r, "group", None) for r in records]}, columns=["path", *_KEYS])
    plan.insert(0, "row_id", np.arange(start_row, start_row + len(plan), dtype=np.int64))
    plan["active"] = True
    return plan[PLAN_COLUMNS].astype({"path": object, "label": object, "split": object, "group": object})


def file_stat(path: str) -> tuple[int, int] | None:
    """Size and mtime of a file; for an image inside a tar shard or Parquet file, of its container."""
    if split_member(path) is not None:
        return container_stat(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def file_sha256_or_none(path: str) -> str | None:
    import hashlib

    from featx.io.atomic import file_sha256

    if split_member(path) is not None:
        try:
            return hashlib.sha256(read_member(path)).hexdigest()
        except MemberError:
            return None
    try:
        return file_sha256(path) if os.path.isfile(path) else None
    except OSError:
        return None


class LocalFiles:
    """Change detection on this machine: stats and content hashes of many files, in threads
    (hashlib and the kernel release the GIL, so reads overlap). An engine can pass its own object
    with the same two methods to run them near the data (`featx.extract.engines.ray.RayFiles`)."""

    def __init__(self, threads: int = 8):
        self.threads = threads

    def _map(self, function, paths: list[str]) -> list:
        if len(paths) < 2 * self.threads:
            return [function(p) for p in paths]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads, thread_name_prefix="featx-probe") as pool:
            return list(pool.map(function, paths, chunksize=64))

    def stat(self, paths: list[str]) -> list[tuple[int, int] | None]:
        return self._map(file_stat, paths)

    def sha256(self, paths: list[str]) -> list[str | None]:
        return self._map(file_sha256_or_none, paths)


def _same(a, b) -> bool:
    a = None if a is None or (isinstance(a, float) and np.isnan(a)) else str(a)
    b = None if b is None or (isinstance(b, float) and np.isnan(b)) else str(b)
    return a == b


def reconcile(plan: pd.DataFrame, results: pd.DataFrame, records, *, append: bool,
              files=None) -> tuple[pd.DataFrame, Changes]:
    """`plan`: the store's rows (PLAN_COLUMNS); `results`: what extraction recorded for committed
    rows (row_id, sha256, status, size, mtime_ns). `append=True` keeps rows that are absent from
    the inputs while their file still exists. `files` stats and hashes files in batches
    (`LocalFiles()` when None): every stat, then every hash that is needed, in one call each.
    Returns the new plan and what changed."""
    files = files or LocalFiles()
    changes = Changes()
    plan = plan.copy()
    current = plan[plan["active"]].merge(results, on="row_id", how="left")
    incoming = plan_from_records(records).drop(columns=["row_id", "active"]).set_index("path")
    position = pd.Series(np.arange(len(plan)), index=plan["row_id"].to_numpy())
    additions: list[dict] = []

    def update_keys(row_id: int, new: pd.Series) -> None:
        at = position[row_id]
        for key, counter in (("label", "relabelled"), ("split", "resplit"), ("group", "regrouped")):
            if not _same(plan.at[at, key], new[key]):
                setattr(changes, counter, getattr(changes, counter) + 1)
                plan.at[at, key] = new[key]

    rows = list(current.itertuples(index=False))
    staying = [row for row in rows if row.path in incoming.index]
    gone = [row for row in rows if row.path not in incoming.index]
    known = set(current["path"])
    arriving = [p for p in incoming.index if p not in known]
    if append:  # rows absent from the inputs stay while their file exists
        gone = [row for row in gone if not member_exists(row.path)]
    by_sha: dict[str, list] = {}
    for row in gone:
        if isinstance(row.sha256, str) and row.status == "ok":
            by_sha.setdefault(row.sha256, []).append(row)

    # size and modification time first (cheap); content hashes only where they moved, and of the
    # arriving files only when some removed file could have moved there
    committed = [row for row in staying if isinstance(row.status, str)]
    stats = dict(zip((row.path for row in committed), files.stat([row.path for row in committed])))
    to_hash = [row.path for row in committed if _needs_hash(row, stats[row.path])]
    to_hash += arriving if by_sha else []
    shas = dict(zip(to_hash, files.sha256(to_hash))) if to_hash else {}

    for row in staying:
        new = incoming.loc[row.path]
        if isinstance(row.status, str) and _content_changed(row, stats[row.path], shas):
            plan.at[position[row.row_id], "active"] = False
            additions.append({"path": row.path, **{k: new[k] for k in _KEYS}})
            changes.changed += 1
        else:
            update_keys(row.row_id, new)

    moved_ids = set()
    for path in arriving:
        digest = shas.get(path)
        if digest in by_sha and by_sha[digest]:
            row = by_sha[digest].pop(0)
            plan.at[position[row.row_id], "path"] = path
            update_keys(row.row_id, incoming.loc[path])
            moved_ids.add(row.row_id)
            changes.moved += 1
        else:
            additions.append({"path": path, **{k: incoming.loc[path][k] for k in _KEYS}})
            changes.new += 1
    for row in gone:
        if row.row_id not in moved_ids:
            plan.at[position[row.row_id], "active"] = False
            changes.removed += 1

    if additions:
        extra = pd.DataFrame(additions, columns=["path", *_KEYS])
        extra.insert(0, "row_id", np.arange(len(plan), len(plan) + len(extra), dtype=np.int64))
        extra["active"] = True
        plan = pd.concat([plan, extra[PLAN_COLUMNS]], ignore_index=True)
    return plan, changes


def _needs_hash(row, stat) -> bool:
    recorded = (row.size, row.mtime_ns)
    if stat is None:
        return False
    return any(pd.isna(v) for v in recorded) or stat != (int(recorded[0]), int(recorded[1]))


def _content_changed(row, stat, shas: dict) -> bool:
    if stat is None:
        return row.status != "missing"
    if not _needs_hash(row, stat):
        return False
    return shas[row.path] != (row.sha256 if isinstance(row.sha256, str) else None)
