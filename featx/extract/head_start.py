"""A head start for `featx extract` in a fresh process: decode the first images while torch loads.

Importing torch and torchvision and building the network take seconds of ONE core; the other
cores would sit idle. So, before torch is imported, `head_start` forks decoding processes (forking
before torch exists is safe: no threads, no OpenMP pool yet) that read, hash and decode the
inputs in the order the store will use, into a shared-memory buffer. When the extractor is ready,
`HeadStart.take` stops them and hands over what they finished; the extractor decodes the rest
itself, as always.

Nothing changes in the result:
- the views are made by `featx.preprocess.pil`, the very functions `featx.preprocess.views` makes its tensors
  with, so the pixels are the same bytes;
- the preprocessing the processes used is the one a previous run of the same model recorded
  (`remember_preprocess`; no hand-copied constants); at hand-over it is compared with the
  extractor's own, and on any difference (or another decoder, or worker processes) nothing is used;
- a file that fails, or that raises any warning, is left to the extractor, so its error row is
  the normal one.
The first run of a model on a machine (nothing recorded yet) gets no head start."""

from __future__ import annotations

import atexit
import json
import logging
import mmap
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from featx.errors import InputError
from featx.io.cache import recall, remember
from featx.io.decode import read_bytes
from featx.io.sources import ImageRecord, scan_inputs
from featx.options import EXTRACT

log = logging.getLogger(__name__)

_MEMO_FILE = "preprocess.json"
_MEMO_KEPT = 64  # entries; the oldest go first
BUFFER_BYTES = 512 << 20  # decoded views kept ahead at most (4,000 images at 224 px)
NICE = 10  # the decoding processes' niceness
STOP_WAIT_S = 1.0  # at hand-over a process may finish the image it decodes; then it is killed
_PENDING, _DONE, _LEFT = 0, 1, 2  # per-image state in shared memory


# --- the preprocessing a model's previous run recorded ----------------------------------------

def _memo_key(model: str, image_size: int | None, resize: str) -> str:
    return json.dumps([model, image_size, resize])


def remembered_preprocess(model: str, image_size: int | None, resize: str) -> dict | None:
    found = recall(_MEMO_FILE, _memo_key(model, image_size, resize))
    return found if isinstance(found, dict) else None


def remember_preprocess(model: str, image_size: int | None, resize: str, preprocess: dict) -> None:
    """Record the preprocessing `model` used (as JSON), for the next run's head start."""
    remember(_MEMO_FILE, _memo_key(model, image_size, resize), json.loads(json.dumps(preprocess)), kept=_MEMO_KEPT)


# --- starting -----------------------------------------------------------------------------------

def head_start(inputs, *, model: str, image_size: int | None = EXTRACT.image_size, resize: str = EXTRACT.resize,
               tta: int = EXTRACT.tta, decode: str = EXTRACT.decode, device: str = EXTRACT.device,
               workers: int | None = EXTRACT.workers, engine: str = EXTRACT.engine,
               processes: int | None = None) -> "HeadStart | None":
    """Start decoding `inputs` ahead, or None where it cannot pay or cannot be proven equal: another
    engine, decoder or device than a local CPU run decoding with Pillow in this process, corner-crop
    TTA, one core, no preprocessing recorded for this model, or FEATX_HEAD_START=0 in the
    environment. Call it before importing torch.
    `processes`: decoding processes (default: the cores but one, which imports torch)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = processes or cores - 1
    if engine != "local" or not can_decode_ahead(workers=workers, tta=tta, decode=decode, device=device,
                                                 processes=processes):
        return None
    preprocess = remembered_preprocess(model, image_size, resize)
    if preprocess is None:
        return None
    try:
        records = scan_inputs(inputs)
    except InputError:  # extract() reports it, in its own order of checks
        return None
    return start_decoding(records, preprocess, tta, processes,
                          inputs=list(inputs) if not isinstance(inputs, (str, os.PathLike)) else [inputs])


def can_decode_ahead(*, workers: int | None, tta: int, decode: str, device: str, processes: int) -> bool:
    """Whether views decoded ahead by `processes` forked decoders would be used: the extractor
    decodes with Pillow in its own process on the CPU (the CPU plan: no `workers`, no accelerator
    behind `device="auto"`), TTA 1-2 (not corner crops), and FEATX_HEAD_START=0 is not set (to
    compare, or to rule it out). The CLI's head start and a lone Ray actor's both ask this."""
    if os.environ.get("FEATX_HEAD_START", "1") == "0" or processes < 1 or not hasattr(os, "fork"):
        return False
    if workers is not None or tta not in (1, 2) or decode not in ("auto", "pil") or device not in ("auto", "cpu"):
        return False
    return not (device == "auto" and _accelerator_present())


def start_decoding(records: list[ImageRecord], preprocess: dict, tta: int, processes: int, *,
                   inputs: list | None = None) -> "HeadStart":
    """Fork `processes` decoders of `records` (in order) with `preprocess` (a `Preprocess.to_dict()`)
    and `tta`: the shared start of the CLI's head start and a Ray actor's. Call it before torch
    is imported; the entry point that calls it also calls `featx.runtime.spin_briefly`."""
    started = HeadStart(inputs or [], records, json.loads(json.dumps(preprocess)), tta, processes)  # as `take` compares
    started.start()
    return started


def _accelerator_present() -> bool:
    """Whether `--device auto` may pick something else than the CPU (CUDA, Apple MPS), told
    without importing torch: then the head start is not worth a guess."""
    return sys.platform == "darwin" or os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")


@dataclass
class HeadStart:
    inputs: list  # as given to head_start, to tell whether extract() got the same
    records: list[ImageRecord]  # scan_inputs(inputs), so extract() need not scan again
    preprocess: dict  # the recorded preprocessing the views are made with
    tta: int
    processes: int

    def start(self) -> None:
        pre = self.preprocess
        self.slot_shape = (self.tta, 3, int(pre["crop_size"]), int(pre["crop_size"]))
        slot_bytes = int(np.prod(self.slot_shape))
        self.count = min(len(self.records), max(1, BUFFER_BYTES // slot_bytes))
        self.paths = [r.path for r in self.records[:self.count]]
        # anonymous shared memory: pages are only taken as the processes fill them
        self._views = mmap.mmap(-1, self.count * slot_bytes)
        self._states = mmap.mmap(-1, self.count)
        self._digests = mmap.mmap(-1, self.count * 32)
        self._stop = mmap.mmap(-1, 1)
        self._pids: list[int] = []
        self.started_at = time.perf_counter()
        atexit.register(self.stop)  # a caller that raised before the hand-over leaves no process behind
        for worker in range(self.processes):
            pid = os.fork()
            if pid == 0:  # the child never returns into the caller's code
                code = 0
                try:
                    self._decode(worker)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            self._pids.append(pid)
        log.debug("head start: %d processes decoding up to %d images", self.processes, self.count)

    def _decode(self, worker: int) -> None:
        """In a child: images worker, worker + processes, ... until stopped or done."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
        try:  # idle cores only: on a busy machine, slowing the parent's imports would cost more than it saves
            os.nice(NICE)
        except OSError:
            pass
        parent = os.getppid()
        pre = SimpleNamespace(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.preprocess.items()})
        from featx.preprocess.pil import decode_for_network, plain_views

        views = np.frombuffer(self._views, dtype=np.uint8).reshape(self.count, *self.slot_shape)
        for i in range(worker, self.count, self.processes):
            if self._stop[0] or os.getppid() != parent:
                return
            state = _LEFT
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    data, digest = read_bytes(self.paths[i])
                    image = decode_for_network(data, pre, self.tta)
                    made = plain_views(image, pre, self.tta)
                if not caught and made.shape == self.slot_shape:
                    views[i] = made
                    self._digests[i * 32:(i + 1) * 32] = bytes.fromhex(digest)
                    state = _DONE
            except Exception:  # a bad file: the extractor decodes it again and writes its error row
                pass
            self._states[i] = state  # written last: a state of _DONE means the slot is complete

    def pending(self) -> int:
        """Images not yet decoded (or left to the extractor) by the processes."""
        return self._states[:self.count].count(_PENDING)

    # --- hand-over ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the decoding processes (each may finish its image, for up to STOP_WAIT_S) and reap them."""
        if not self._pids:
            return
        self._stop[0] = 1
        deadline = time.monotonic() + STOP_WAIT_S
        for pid in self._pids:
            while True:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        self._pids = []
        atexit.unregister(self.stop)

    def take(self, preprocess: dict, tta: int) -> dict[str, dict]:
        """Stop decoding; the finished images by path ({"views": (tta, 3, S, S) uint8, "sha256"}),
        or nothing when the extractor's preprocessing or TTA is not the one used here."""
        self.stop()  # after waitpid every write of the children is visible here
        if json.loads(json.dumps(preprocess)) != self.preprocess or tta != self.tta:
            log.info("head start not used: the model's preprocessing differs from the one recorded")
            return {}
        views = np.frombuffer(self._views, dtype=np.uint8).reshape(self.count, *self.slot_shape)
        ready = {self.paths[i]: {"views": views[i], "sha256": self._digests[i * 32:(i + 1) * 32].hex()}
                 for i in range(self.count) if self._states[i] == _DONE}
        log.info("head start: %d of %d images decoded while the network loaded (%.1f s)", len(ready),
                 len(self.records), time.perf_counter() - self.started_at)
        return ready

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "HeadStart":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def same_inputs(head: "HeadStart | None", inputs) -> bool:
    """Whether `head` scanned exactly these `inputs`, so that its records can be reused."""
    given = list(inputs) if not isinstance(inputs, (str, os.PathLike)) else [inputs]
    return head is not None and [str(i) for i in head.inputs] == [str(i) for i in given]
