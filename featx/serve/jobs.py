"""Extract jobs of the service: inputs under --data-root into stores under --state-dir.

A job is a JSON record plus a manifest of the exact files it was given (checked to lie under
--data-root, symlinks resolved). Jobs run one at a time in a background thread; a job that was
queued or running when the server stopped runs again at start-up, and `featx extract` resumes
its store after the last committed shard."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from featx.errors import FeatxError
from featx.io import atomic
from featx.io.sources import is_glob
from featx.options import ExtractJobRequest, ServeOptions
from featx.serve.errors import Forbidden, NotFound

log = logging.getLogger(__name__)


class JobManager:
    def __init__(self, state_dir: Path, options: ServeOptions):
        self.root = Path(state_dir)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        (self.root / "stores").mkdir(parents=True, exist_ok=True)
        self.options = options
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="featx-job")

    def _record_file(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id / "job.json"

    def _write(self, record: dict) -> None:
        with self._lock:
            atomic.write_json(self._record_file(record["id"]), record)

    def _read(self, job_id: str) -> dict:
        if not job_id.isalnum() or not self._record_file(job_id).is_file():
            raise NotFound(f"no job '{job_id}'")
        return json.loads(self._record_file(job_id).read_text())

    def submit(self, request: ExtractJobRequest) -> dict:
        """Check every input file (under --data-root, symlinks resolved), write the job's manifest
        of exactly those files, and queue it."""
        from featx.io.sources import scan_inputs

        root = Path(self.options.data_root).resolve()
        named = [_inside(root, item) for item in request.inputs]  # a traversal is refused before any scan
        records = scan_inputs([str(p) for p in named])
        outside = [r.path for r in records if not Path(r.path).resolve().is_relative_to(root)]
        if outside:
            raise Forbidden(f"{len(outside)} input files resolve outside --data-root (e.g. '{outside[0]}', "
                            "through a symlink); only files under it can be extracted")
        job_id = uuid.uuid4().hex[:16]
        folder = self.root / "jobs" / job_id
        folder.mkdir(parents=True)
        manifest = folder / "inputs.csv"
        pd.DataFrame([{"path": r.path, "label": r.label, "split": r.split} for r in records]).to_csv(manifest,
                                                                                                     index=False)
        record = {"id": job_id, "kind": "extract", "status": "queued", "store": request.store,
                  "out": str(self.root / "stores" / request.store), "inputs": request.inputs, "planned": len(records),
                  "options": request.options.model_dump(exclude_none=True), "created": time.time(), "error": None,
                  "runs": 0}
        self._write(record)
        self._pool.submit(self._run, job_id)
        return self.status(job_id)

    def status(self, job_id: str) -> dict:
        record = self._read(job_id)
        record["done"] = self._committed(record)
        record["progress"] = record["done"] / record["planned"] if record["planned"] else 1.0
        return record

    def resume(self) -> None:
        """Queue again every job a stopped server left queued or running."""
        for file in sorted((self.root / "jobs").glob("*/job.json")):
            record = json.loads(file.read_text())
            if record.get("status") in ("queued", "running"):
                log.info("resuming extract job %s", record["id"])
                record["status"] = "queued"
                self._write(record)
                self._pool.submit(self._run, record["id"])

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _committed(record: dict) -> int:
        manifest = Path(record["out"]) / "manifest.json"
        try:
            return int(json.loads(manifest.read_text()).get("n_rows", 0))
        except (OSError, ValueError):
            return 0

    def _run(self, job_id: str) -> None:
        from featx.extract.job import extract

        record = self._read(job_id)
        record.update(status="running", started=time.time(), runs=record.get("runs", 0) + 1)
        self._write(record)
        options = dict(record["options"])
        options.setdefault("workers", 0)  # no DataLoader processes forked from a threaded server
        try:
            store = extract(str(self._record_file(job_id).parent / "inputs.csv"), record["out"], progress=False,
                            **options)
            summary = store.summary()
            record.update(status="done", finished=time.time(), ok=summary["ok"], failed=summary["failed"])
        except FeatxError as exc:
            record.update(status="failed", finished=time.time(), error=str(exc))
        except Exception as exc:  # a job must never take the server down
            log.exception("extract job %s failed", job_id)
            record.update(status="failed", finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        self._write(record)


def _inside(root: Path, item: str) -> Path:
    """An input (file, folder, manifest or glob) as a path under `root`; Forbidden otherwise."""
    path = Path(item) if Path(item).is_absolute() else root / item
    fixed = Path(*[part for part in path.parts if not is_glob(part)][: next(
        (i for i, part in enumerate(path.parts) if is_glob(part)), len(path.parts))])
    if ".." in Path(item).parts or not fixed.resolve().is_relative_to(root):
        raise Forbidden(f"input '{item}' is outside the server's --data-root; only paths under it can be extracted")
    return path
