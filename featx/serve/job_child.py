"""The process one extract job of the service runs in: `python -m featx.serve.job_child SPEC.json`.

It confines its reads to --data-root (each file is checked as it is opened), sets its address
space limit to what its runtime reserved at import plus the job's memory (RLIMIT_AS), runs
`featx.extract.job.extract` and writes its outcome to the spec's `result` file. Running out of
memory ends this process, never the server; the server tells it from the outcome (or from the
signal that ended it)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

OUT_OF_MEMORY = "out_of_memory"


def address_space() -> int | None:
    """The bytes of address space this process holds now (VmSize), or None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def limit_memory(memory_bytes: int) -> str:
    """RLIMIT_AS = the address space reserved so far (torch maps gigabytes it never touches) + the
    job's memory: an allocation beyond it fails in this process (MemoryError)."""
    import resource

    held = address_space()
    if held is None:
        return "no RLIMIT_AS (address space unknown)"
    limit = held + int(memory_bytes)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return f"RLIMIT_AS {limit / 2**30:.1f} GiB"


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or ("alloc" in text and "memory" in text) or "out of memory" in text


def run(spec: dict) -> dict:
    from featx.errors import FeatxError
    from featx.extract.job import extract  # imported before the limit: its reservations are the runtime's
    from featx.io.decode import confine_reads

    confine_reads(spec["data_root"])
    logging.getLogger(__name__).info("job limits: %s", limit_memory(spec["memory_bytes"]))
    try:
        store = extract(spec["inputs"], spec["out"], progress=False, append=spec.get("append", False),
                        **spec["options"])
        summary = store.summary()
        return {"status": "done", "ok": int(summary["ok"]), "failed": int(summary["failed"])}
    except FeatxError as exc:
        return {"status": "failed", "code": type(exc).__name__, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the server as the job's outcome
        if is_out_of_memory(exc):
            return {"status": "failed", "code": OUT_OF_MEMORY, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        logging.getLogger(__name__).exception("extract job failed")
        return {"status": "failed", "code": "crashed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec_file = Path(argv[0])
    spec = json.loads(spec_file.read_text())
    try:
        outcome = run(spec)
    except MemoryError:
        outcome = {"status": "failed", "code": OUT_OF_MEMORY, "error": "MemoryError"}
    from featx.io import atomic

    atomic.write_json(spec["result"], outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
