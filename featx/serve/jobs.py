"""Extract jobs of the service: inputs under --data-root into stores under --state-dir.

A job is a JSON record plus a manifest of the exact files it was given (checked to lie under
--data-root, symlinks resolved; checked again by the job as each file is opened). Its options are
bounded before it is accepted (`featx.serve.job_limits`). Jobs run one at a time, each in its own
process under the job memory limit (`featx.serve.job_child`): running out of memory fails the job,
never the server. One job per store: a second one gets 409 naming the first; an existing store
takes more inputs only with `"existing": "append"`. A job still queued when the server stopped runs at
start-up; one that was running when the server died is not restarted by itself (it may be what
killed it): `POST /v1/jobs/ID/resume` runs it again, and `featx extract` resumes its store after
the last committed shard."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from featx.errors import FeatxError, InputError, StoreError
from featx.io import atomic
from featx.io.confine import PathRefused, resolve_under
from featx.io.sources import is_glob
from featx.options import ExtractJobRequest, ServeOptions
from featx.serve.errors import Forbidden, NotFound

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
WATCH_S = 0.5  # how often a running job's memory is looked at


class StoreBusy(StoreError):
    """409: the store is being written by another job, or exists and the job did not ask to append."""


class JobManager:
    def __init__(self, state_dir: Path, options: ServeOptions):
        self.root = Path(state_dir)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        (self.root / "stores").mkdir(parents=True, exist_ok=True)
        self.options = options
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="featx-job")
        self._busy: dict[str, str] = {}  # store name -> id of its queued or running job
        self._children: dict[str, subprocess.Popen] = {}
        self._stopping = False

    def _record_file(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id / "job.json"

    def _write(self, record: dict) -> None:
        with self._lock:
            atomic.write_json(self._record_file(record["id"]), record)

    def _read(self, job_id: str) -> dict:
        if not (job_id.isascii() and job_id.isalnum()) or not self._record_file(job_id).is_file():
            raise NotFound(f"no job '{job_id[:40]}'")
        return json.loads(self._record_file(job_id).read_text())

    # --- accepting ---
    def submit(self, request: ExtractJobRequest) -> dict:
        """Bound the options, check every input file (under --data-root, symlinks resolved), claim
        the store, write the job's manifest of exactly those files, and queue it."""
        from featx.serve.job_limits import check_job

        chosen = check_job(request.options, self.options)
        records = self._scan(request.inputs)
        out = self.root / "stores" / request.store
        with self._lock:
            self._claim(request.store, out, request.existing == "append")
            job_id = uuid.uuid4().hex[:16]
            folder = self.root / "jobs" / job_id
            folder.mkdir(parents=True)
            pd.DataFrame([{"path": r.path, "label": r.label, "split": r.split} for r in records]).to_csv(
                folder / "inputs.csv", index=False)
            memory = chosen.pop("memory")
            record = {"id": job_id, "kind": "extract", "status": "queued", "store": request.store, "out": str(out),
                      "inputs": request.inputs, "planned": len(records), "append": request.existing == "append",
                      "options": chosen, "memory": memory, "created": time.time(), "error": None, "code": None,
                      "runs": 0}
            self._write(record)
            self._busy[request.store] = job_id
        self._pool.submit(self._run, job_id)
        return self.status(job_id)

    def _scan(self, inputs: list[str]):
        from featx.io.sources import scan_inputs

        root = Path(self.options.data_root).resolve()
        named = [_inside(root, item) for item in inputs]  # a traversal is refused before any scan
        try:
            records = scan_inputs([str(p) for p in named])
        except FeatxError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:  # a link loop in a glob, a name too long
            raise InputError(f"the job's inputs cannot be listed ({type(exc).__name__}: {str(exc)[:200]}); name "
                             "folders, manifests, files or globs under --data-root") from None
        outside = [r.path for r in records if not Path(os.path.realpath(r.path)).is_relative_to(root)]
        if outside:
            raise Forbidden(f"{len(outside)} input files resolve outside --data-root (e.g. '{outside[0][:200]}', "
                            "through a symlink); only files under it can be extracted")
        return records

    def _claim(self, store: str, out: Path, append: bool) -> None:
        running = self._busy.get(store)
        if running is not None:
            raise StoreBusy(f"store '{store}' is being written by job {running} ({self._read(running)['status']}); "
                            f"wait for it (GET /v1/jobs/{running}) or choose another store name")
        if out.exists() and any(out.iterdir()) and not append:
            raise StoreBusy(f"store '{store}' already exists; send \"existing\": \"append\" to add these inputs to it "
                            "(rows it holds stay), or choose another store name. A job never replaces a store")

    # --- reading ---
    def status(self, job_id: str) -> dict:
        record = self._read(job_id)
        record["done"], total = self._committed(record)
        record["progress"] = record["done"] / total if total else (1.0 if record["status"] == "done" else 0.0)
        return record

    @staticmethod
    def _committed(record: dict) -> tuple[int, int]:
        """(rows committed, rows planned) of the job's store: the shards its manifest and commit log list."""
        from featx.io.atomic import SEAL
        from featx.store import commit_log

        out = Path(record["out"])
        try:
            manifest = json.loads((out / "manifest.json").read_text())
            shards = list(manifest.get("shards", [])) + commit_log.replay(out, manifest.get(SEAL, ""), "")
        except (OSError, ValueError, FeatxError):
            return 0, 0
        return sum(int(s["stop"]) - int(s["start"]) for s in shards), int(manifest.get("n_rows", 0))

    # --- running ---
    def resume(self) -> None:
        """At start-up: queue again every job a stopped server left queued. A job left running
        was under way when the server died (maybe of that job): it waits for a resume request."""
        for file in sorted((self.root / "jobs").glob("*/job.json")):
            record = json.loads(file.read_text())
            if record.get("status") == "queued":
                log.info("resuming extract job %s", record["id"])
                self._busy[record["store"]] = record["id"]
                self._pool.submit(self._run, record["id"])
            elif record.get("status") == "running":
                record.update(status="failed", code="interrupted", finished=time.time(),
                              error="the server stopped while this job ran; it is not restarted by itself. "
                                    f"Run it again with POST /v1/jobs/{record['id']}/resume")
                self._write(record)

    def resume_job(self, job_id: str) -> dict:
        """Run a failed job again (its store resumes after its last committed shard)."""
        with self._lock:
            record = self._read(job_id)
            if record["status"] != "failed":
                raise StoreBusy(f"job {job_id} is {record['status']}; only a failed job can be resumed")
            running = self._busy.get(record["store"])
            if running is not None:
                raise StoreBusy(f"store '{record['store']}' is being written by job {running}; wait for it")
            record.update(status="queued", error=None, code=None)
            self._write(record)
            self._busy[record["store"]] = job_id
        self._pool.submit(self._run, job_id)
        return self.status(job_id)

    def shutdown(self) -> None:
        """Stop the running job's process; its record goes back to queued, so it runs at the next start."""
        self._stopping = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for child in list(self._children.values()):
            if child.poll() is None:
                child.terminate()

    def _run(self, job_id: str) -> None:
        record = self._read(job_id)
        if self._stopping:
            return
        record.update(status="running", started=time.time(), runs=record.get("runs", 0) + 1)
        self._write(record)
        try:
            outcome = self._run_child(record)
        except Exception as exc:  # noqa: BLE001 - a job must never take the server down
            log.exception("extract job %s could not run", job_id)
            outcome = {"status": "failed", "code": "crashed", "error": f"{type(exc).__name__}: {exc}"}
        if outcome is None:  # the server is stopping: run again at the next start
            record.update(status="queued")
        else:
            record.update(outcome, finished=time.time())
        with self._lock:
            self._write(record)
            if self._busy.get(record["store"]) == job_id:
                del self._busy[record["store"]]

    def _run_child(self, record: dict) -> dict | None:
        from featx.serve.job_child import OUT_OF_MEMORY

        folder = self._record_file(record["id"]).parent
        result = folder / f"result-{record['runs']}.json"
        limit = int(record["memory"]["limit_bytes"])
        spec = {"inputs": str(folder / "inputs.csv"), "out": record["out"], "options": record["options"],
                "append": record.get("append", False), "data_root": str(Path(self.options.data_root).resolve()),
                "memory_bytes": limit, "result": str(result)}
        atomic.write_json(folder / "spec.json", spec)
        env = dict(os.environ)
        env.setdefault("MALLOC_ARENA_MAX", "2")  # fewer reserved malloc arenas: less address space under RLIMIT_AS
        with open(folder / "job.log", "ab") as job_log:
            child = subprocess.Popen([sys.executable, "-m", "featx.serve.job_child", str(folder / "spec.json")],
                                     stdout=job_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            self._children[record["id"]] = child
            try:
                peak = _watch(child, limit)
            finally:
                self._children.pop(record["id"], None)
        if self._stopping and child.returncode != 0:
            return None
        if peak > limit:
            return {"status": "failed", "code": OUT_OF_MEMORY,
                    "error": f"the job used {peak / 2**30:.2f} GiB, above its limit of {limit / 2**30:.2f} GiB "
                             "(--job-memory), and was stopped; lower batch_size or image_size and resume it with "
                             f"POST /v1/jobs/{record['id']}/resume"}
        try:
            outcome = json.loads(result.read_text())
        except (OSError, ValueError):
            how = (f"signal {signal.Signals(-child.returncode).name}" if child.returncode < 0
                   else f"exit code {child.returncode}")
            code = OUT_OF_MEMORY if child.returncode == -signal.SIGKILL else "crashed"
            return {"status": "failed", "code": code, "error": f"the job's process ended by {how} without an outcome "
                    f"({'likely out of memory; ' if code == OUT_OF_MEMORY else ''}see {folder / 'job.log'})"}
        if outcome.get("code") == OUT_OF_MEMORY:
            outcome["error"] = (f"the job ran out of memory under its limit of {limit / 2**30:.2f} GiB "
                                f"(--job-memory): {outcome.get('error')}; lower batch_size or image_size, then "
                                f"POST /v1/jobs/{record['id']}/resume")
        return outcome


def _watch(child: subprocess.Popen, limit: int) -> int:
    """Wait for the child; kill it when its resident memory passes `limit`. Returns the peak seen
    when it was killed for that, else 0."""
    while child.poll() is None:
        rss = _resident(child.pid)
        if rss > limit:
            child.kill()
            child.wait()
            return rss
        try:
            child.wait(WATCH_S)
        except subprocess.TimeoutExpired:
            pass
    return 0


def _resident(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _inside(root: Path, item: str) -> Path:
    """An input (file, folder, manifest or glob) as a path under `root`; Forbidden otherwise."""
    try:
        path = Path(item) if Path(item).is_absolute() else root / item
        parts = path.parts
        first_glob = next((i for i, part in enumerate(parts) if is_glob(part)), len(parts))
        fixed = Path(*parts[:first_glob])
        resolve_under(root, fixed, what="input")
    except PathRefused as exc:
        raise Forbidden(str(exc)) from None
    except (ValueError, OSError, RuntimeError) as exc:
        raise Forbidden(f"input {item[:120]!r} cannot be resolved under the server's --data-root ({exc})") from None
    if ".." in Path(item).parts:
        raise Forbidden(f"input '{item[:120]}' is outside the server's --data-root; only paths under it can be "
                        "extracted")
    return path
