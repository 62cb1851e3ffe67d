"""What makes a folder a featx artifact, and the rules that keep featx from touching anything else.

Each artifact kind has one record file (JSON) that names it. Records are *sealed*: they carry the
sha256 of their own content, so an edited or damaged record is refused before anything trusts it.
Output folders are checked before any work: featx replaces only its own artifact of the same kind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from featx.errors import IntegrityError, OutputFolderError, StoreError
from featx.io.atomic import SEAL, TMP_PREFIX, canonical_json, seal  # noqa: F401 (seal: re-exported)

RECORD_FILES = {"store": "manifest.json", "model": "model.json", "index": "index.json",
                "projection": "projection.json", "audit": "audit.json", "probe": "probe.json",
                "anomaly": "anomaly.json"}
SCHEMA_VERSION = 2  # of a store's manifest.json
# files featx itself leaves in folders that are otherwise empty
BOOKKEEPING = (".featx-lock",)
# what a store's writer makes before its first manifest, by folder: the files' suffixes
STORE_FIRST_WRITES = {"plan": (".parquet",), "features": (".npy",), "meta": (".parquet",)}


def unfinished_store(folder: str | Path) -> bool:
    """A store whose first write failed (a full disk, a kill): no manifest, and nothing but the lock
    and the plan, feature and metadata files a store's writer names. Nothing in it was committed,
    so a new run starts it again."""
    folder = Path(folder)
    if (folder / RECORD_FILES["store"]).exists() or not folder.is_dir():
        return False
    found = False
    for entry in folder.iterdir():
        if entry.name in BOOKKEEPING or entry.name.startswith(TMP_PREFIX):
            continue
        suffixes = STORE_FIRST_WRITES.get(entry.name)
        if suffixes is None or entry.is_symlink() or not entry.is_dir():
            return False
        for file in entry.rglob("*"):
            if file.is_symlink() or not (file.is_dir() or file.name.endswith(suffixes)
                                         or file.name.startswith(TMP_PREFIX)):
                return False
        found = True
    return found


def read_record(folder: str | Path, name: str, what: str, fix: str) -> dict:
    """The sealed JSON record that makes `folder` a featx store, model or index, or a clear error."""
    file = Path(folder) / name
    if not file.is_file():
        raise StoreError(f"'{folder}' is not {what} (no {name}); {fix}")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"'{file}' is damaged: not valid JSON ({exc}); {fix}") from exc
    if not isinstance(record, dict):
        raise IntegrityError(f"'{file}' is damaged: not a JSON object; {fix}")
    expected = record.get(SEAL)
    if expected is None:
        raise IntegrityError(f"'{file}' carries no checksum ('{SEAL}'): it was written by an older featx or by "
                             f"hand; {fix}")
    if hashlib.sha256(canonical_json(record)).hexdigest() != expected:
        raise IntegrityError(f"'{file}' was changed after featx wrote it (its checksum does not match its "
                             f"content); featx refuses to use it. {fix[0].upper() + fix[1:]}")
    return record


def artifact_kind(folder: str | Path) -> str | None:
    """'store', 'model', 'index', … when `folder` holds that artifact's record file, else None."""
    folder = Path(folder)
    for kind, name in RECORD_FILES.items():
        if (folder / name).is_file():
            return kind
    return None


def check_output(folder: str | Path, kind: str, *, inputs: tuple | list = ()) -> bool:
    """Refuse an output folder featx must not write: one inside (or equal to) an input artifact, a
    file, or a non-empty folder that is not a featx `kind`. Returns True when `folder` already
    holds a `kind` artifact (the caller decides whether to resume, replace or refuse it)."""
    folder = Path(folder).expanduser().resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).expanduser().resolve()
        if folder == source or source in folder.parents:
            raise OutputFolderError(f"output folder '{folder}' is inside the input '{source}'; featx never writes "
                                    "into its inputs. Choose a folder outside it")
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise OutputFolderError(f"output '{folder}' is a file, not a folder; choose a new folder name")
    found = artifact_kind(folder)
    if found == kind:
        return True
    entries = sorted(p.name for p in folder.iterdir() if p.name not in BOOKKEEPING)
    if not entries or (kind == "store" and unfinished_store(folder)):
        return False
    what = (f"a featx {found} ({RECORD_FILES[found]})" if found else
            f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: " + ", ".join(entries[:5])
            + (", …" if len(entries) > 5 else ""))
    raise OutputFolderError(f"output folder '{folder}' is not empty and is not a featx {kind} (found {what}); "
                            f"featx only replaces its own {kind} folders and never deletes other files. "
                            "Choose a new or empty folder")
