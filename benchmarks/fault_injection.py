"""Fault injection: a full disk at 10 sizes, read-only mounts, hostile requests and a flood of
slow sockets against the real `featx` commands and a real `featx serve` process; stops by itself.

Targets: 0 tracebacks, 0 HTTP 500 for bad input, 0 rows lost, the server alive after every attack.

- **Full disk.** For each size, a tmpfs of that size is mounted and `featx extract` writes a store
  into it; then the tmpfs grows and the same command runs again. Counted: exit codes (2 expected
  where the disk fills), tracebacks, `featx info`'s `failed` count on the unfinished store (0
  expected: unextracted rows are `pending`), and after the re-run, rows whose features differ from
  a reference store made on a roomy disk (0 expected). `featx index` and `featx train-shallow` are
  run into a full tmpfs too.
- **Read-only.** `extract`, `index`, `train-shallow` into a read-only mount, `search --evaluate`
  and `index --update` on an index on one.
- **Service.** `featx serve` (its descriptor limit set to `--nofile`, 1,024 by default) takes the
  issue's hostile requests (symlink loops, 5,000-character names, NUL bytes, `{"rows": []}`,
  `application/jsonx`, unknown routes and methods, the issue's memory-hungry job), then
  `--sockets` slow sockets (each sends part of a request line, then nothing) while a normal client
  keeps asking; counted: 500s, answers the normal client got, and whether the server still answers.

Needs root (mount); without it the disk parts are skipped, and say so.

    python benchmarks/fault_injection.py
    python benchmarks/fault_injection.py --images data/digits-demo --limit 150 --sockets 2000"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = ["4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1m", "2m"]
TINY = ["--model", "resnet18", "--weights", "random", "--image-size", "64", "--workers", "0", "--batch-size", "16",
        "--shard-size", "32"]


def featx(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "featx.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def traceback_in(done: subprocess.CompletedProcess) -> bool:
    return "Traceback" in done.stdout + done.stderr


@contextmanager
def tmpfs(folder: Path, size: str):
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def remount(folder: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(folder)], check=True)


def can_mount(work: Path) -> str | None:
    if os.geteuid() != 0:
        return "not root"
    try:
        with tmpfs(work / "probe", "4k"):
            return None
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"mount failed: {exc}"


def rows_lost(store_dir: Path, reference) -> int:
    """Rows of the reference store missing from `store_dir` or holding other features."""
    import numpy as np

    from featx.store import FeatureStore

    store = FeatureStore.open(store_dir)
    if not store.complete:
        return len(reference)
    layer = reference.layers[0]
    mine = dict(zip(store.paths, store.features(layer)))
    return sum(1 for path, vector in zip(reference.paths, reference.features(layer))
               if path not in mine or not np.array_equal(mine[path], vector))


def full_disk(images: Path, work: Path, reference) -> list[dict]:
    rows = []
    for size in SIZES:
        with tmpfs(work / f"disk-{size}", size) as disk:
            out = disk / "store"
            first = featx("extract", images, "-o", out, *TINY)
            info = featx("info", out, "--json") if out.exists() else None
            failed = json.loads(info.stdout)["failed"] if info is not None and info.returncode == 0 else None
            pending = json.loads(info.stdout).get("pending") if failed is not None else None
            remount(disk, "size=256m")
            again = featx("extract", images, "-o", out, *TINY)
            rows.append({"attack": f"extract, tmpfs {size}", "exit": first.returncode, "then": again.returncode,
                         "tracebacks": traceback_in(first) + traceback_in(again) + bool(info and traceback_in(info)),
                         "info_failed": failed, "info_pending": pending,
                         "rows_lost": rows_lost(out, reference) if again.returncode == 0 else len(reference),
                         "message": _last_line(first)})
    return rows


def other_steps_on_a_full_disk(store: Path, work: Path) -> list[dict]:
    rows = []
    for step, args in (("index", ["index", store, "-o"]),
                       ("train-shallow", ["train-shallow", store, "--classifier", "logreg", "--cv", "2", "-o"])):
        with tmpfs(work / f"full-{step}", "16k") as disk:
            done = featx(*args, disk / "out")
            rows.append({"attack": f"{step}, tmpfs 16k", "exit": done.returncode, "tracebacks": int(traceback_in(done)),
                         "message": _last_line(done)})
    return rows


def read_only(images: Path, store: Path, work: Path) -> list[dict]:
    from featx.retrieval.index import build_index
    from featx.store import FeatureStore

    rows = []
    with tmpfs(work / "ro", "64m") as ro:
        build_index(FeatureStore.open(store), kind="flat").save(ro / "index")
        remount(ro, "ro")
        for name, args in (("extract -o", ["extract", images, "-o", ro / "s", *TINY]),
                           ("index -o", ["index", store, "-o", ro / "i"]),
                           ("train-shallow -o", ["train-shallow", store, "--classifier", "logreg", "--cv", "2", "-o",
                                                 ro / "m"]),
                           ("search --evaluate", ["search", ro / "index", "--evaluate"]),
                           ("index --update (unchanged)", ["index", "--update", ro / "index"])):
            done = featx(*args)
            rows.append({"attack": f"read-only: {name}", "exit": done.returncode,
                         "tracebacks": int(traceback_in(done)), "message": _last_line(done)})
    return rows


def _last_line(done: subprocess.CompletedProcess) -> str:
    """featx's error message, else the last lines of the output."""
    text = " ".join((done.stderr + "\n" + done.stdout).split())
    at = text.find("error:")
    if at < 0:
        at = max(0, len(text) - 160)
    return text[at:at + 160]


# --- the service -------------------------------------------------------------------------------------

@contextmanager
def server(store: Path, data_root: Path, state: Path, nofile: int):
    port = _free_port()

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(state.parent / "serve.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "featx.cli", "serve", "--store", f"s={store}", "--data-root",
                                str(data_root), "--state-dir", str(state), "--port", str(port), "--device", "cpu",
                                "--read-timeout", "5"], stdout=log, stderr=subprocess.STDOUT, env=env,
                               preexec_fn=limit)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process)
        yield base, process, state.parent / "serve.log"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base: str, process) -> None:
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError("featx serve exited at start-up")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("featx serve did not become ready")


def hostile_requests(base: str, data_root: Path) -> list[dict]:
    import httpx

    os.symlink("loop.png", data_root / "loop.png")
    requests = [("POST", "/v1/embed", {"json": {"artifact": "s", "paths": ["loop.png"]}}),
                ("POST", "/v1/embed", {"json": {"artifact": "s", "paths": ["a" * 5000]}}),
                ("POST", "/v1/embed", {"json": {"artifact": "s", "paths": ["x\x00.png"]}}),
                ("POST", "/v1/embed", {"json": {"artifact": "s", "rows": []}}),
                ("POST", "/v1/embed", {"content": b'{"rows": [0]}', "headers": {"Content-Type": "application/jsonx"}}),
                ("POST", "/v1/embed", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
                ("GET", "/no/such/route", {}), ("DELETE", "/v1/embed", {}),
                ("POST", "/v1/jobs/extract", {"json": {"inputs": ["loop.png/*.png"], "store": "x"}}),
                ("POST", "/v1/jobs/extract", {"json": {"inputs": ["a" * 5000], "store": "x"}}),
                ("POST", "/v1/jobs/extract", {"json": {"inputs": ["\x00"], "store": "x"}}),
                ("POST", "/v1/jobs/extract", {"json": {"inputs": ["."], "store": "huge", "options": {
                    "model": "mobilenet_v3_small", "weights": "random", "image_size": 2048, "batch_size": 64}}}),
                ("POST", "/v1/jobs/extract", {"json": {"inputs": ["."], "store": "x", "options": {"model": "alexnet"}}}),
                ("POST", "/v1/jobs/extract", {"json": {"inputs": ["."], "store": "x", "options": {
                    "weights": "/etc/passwd"}}})]
    statuses, shapes = [], 0
    with httpx.Client(base_url=base, timeout=60) as c:
        for method, path, kwargs in requests:
            response = c.request(method, path, **kwargs)
            statuses.append(response.status_code)
            body = response.json()
            shapes += set(body) == {"error"} and {"code", "message"} <= set(body["error"])
        alive = c.get("/healthz").status_code == 200
    return [{"attack": f"{len(requests)} hostile requests", "http_500": sum(s >= 500 for s in statuses),
             "statuses": " ".join(map(str, sorted(set(statuses)))), "featx_error_shape": f"{shapes}/{len(requests)}",
             "server_alive": alive}]


def slow_socket_flood(base: str, sockets: int, normal: int) -> dict:
    import httpx

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, sockets + 256)), hard))
    host, port = base.removeprefix("http://").split(":")
    held, refused = [], 0
    for _ in range(sockets):
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        except OSError:
            refused += 1
    answered, latencies = 0, []
    with httpx.Client(base_url=base, timeout=10) as c:
        for _ in range(normal):
            started = time.perf_counter()
            try:
                answered += c.get("/healthz").status_code == 200
            except httpx.HTTPError:
                pass
            latencies.append(time.perf_counter() - started)
    for sock in held:
        sock.close()
    with httpx.Client(base_url=base, timeout=10) as c:
        alive = c.get("/healthz").status_code == 200
    latencies.sort()
    return {"attack": f"{sockets} slow sockets", "normal_answered": f"{answered}/{normal}",
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1), "max_ms": round(1000 * latencies[-1], 1),
            "connect_refused": refused, "server_alive": alive}


# --- main --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=REPO / "data" / "digits-demo")
    parser.add_argument("--limit", type=int, default=150, help="images taken from --images (spread over it)")
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--nofile", type=int, default=1024, help="the server's file-descriptor limit")
    parser.add_argument("--normal", type=int, default=20, help="requests of the normal client during the flood")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    from featx.extract.job import extract
    from featx.io.sources import scan_inputs

    work = Path(tempfile.mkdtemp(prefix="featx-faults-"))
    try:
        images = work / "images"
        records = scan_inputs(str(args.images))
        for i, record in enumerate(records[:: max(1, len(records) // args.limit)][: args.limit]):  # every class
            target = images / (record.label or "x") / f"{i:05d}{Path(record.path).suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(record.path, target)
        reference = extract(images, work / "reference", progress=False, **_api(TINY))
        rows = []
        problem = can_mount(work)
        if problem is None:
            rows += full_disk(images, work, reference) + other_steps_on_a_full_disk(work / "reference", work)
            rows += read_only(images, work / "reference", work)
        else:
            print(f"full-disk and read-only parts skipped: {problem}", file=sys.stderr)
        with server(work / "reference", images, work / "state", args.nofile) as (base, process, log):
            rows += hostile_requests(base, images)
            rows.append(slow_socket_flood(base, args.sockets, args.normal))
            rows[-1]["server_alive"] = rows[-1]["server_alive"] and process.poll() is None
        rows.append({"attack": "server log", "tracebacks": log.read_text(errors="replace").count("Traceback")})
        _report(rows, args.json)
    finally:
        for mount in sorted(work.glob("*")):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _api(cli_args: list[str]) -> dict:
    pairs = dict(zip(cli_args[::2], cli_args[1::2]))
    return {k.removeprefix("--").replace("-", "_"): (int(v) if v.isdigit() else v) for k, v in pairs.items()}


def _cell(value) -> str:
    return "–" if value is None else str(value).replace("|", "/")


def _report(rows: list[dict], json_file: Path | None) -> None:
    columns = ["attack", "exit", "then", "tracebacks", "info_failed", "info_pending", "rows_lost", "http_500",
               "statuses", "featx_error_shape", "normal_answered", "p50_ms", "max_ms", "server_alive", "message"]
    used = [c for c in columns if any(c in r for r in rows)]
    print("| " + " | ".join(used) + " |")
    print("|" + "---|" * len(used))
    for row in rows:
        print("| " + " | ".join(_cell(row.get(c, "")) for c in used) + " |")
    totals = {"tracebacks": sum(int(r.get("tracebacks") or 0) for r in rows),
              "http_500": sum(int(r.get("http_500") or 0) for r in rows),
              "rows_lost": sum(int(r.get("rows_lost") or 0) for r in rows),
              "server_alive_after_every_attack": all(r.get("server_alive", True) for r in rows)}
    print("\ntotals: " + json.dumps(totals))
    if json_file is not None:
        json_file.write_text(json.dumps({"rows": rows, "totals": totals}, indent=2))


if __name__ == "__main__":
    main()
