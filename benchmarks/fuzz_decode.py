"""Bad-image fuzzing: a seeded corpus of good, mutated and certainly-bad files (tests/fuzz_corpus.py:
byte flips, truncations, header corruption, absurd declared sizes, 16-bit, CMYK, palette+alpha,
animated GIF, TIFF, WebP, SVG, zero-byte, folders named like images, symlink loops, dangling
links, FIFOs) through featx's reader: read, decode, network input.

    python benchmarks/fuzz_decode.py [--tries 10000] [--seed 0] [--workers 2] [--time-limit 10]

Files are decoded by worker processes under a watchdog, so a segfault or a hang that the
per-file time limit missed is counted, not fatal. Targets: 0 crashes, 0 hangs, every good file
kept, every certainly-bad file one error row with the right code. Prints the counts by kind and
outcome, the targets, and the slowest files; exit status 1 when a target is missed."""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz_corpus import Outcome, cases, judge, materialise  # noqa: E402


def worker(list_file: str, out_file: str, time_limit: float) -> None:
    """Decode the listed files in order, appending one JSON line per file as soon as it is done
    (after a 'ready' line), so the parent knows which file a dead or stuck worker was on."""
    import warnings

    import featx.io.decode
    import featx.preprocess.views  # noqa: F401  (imports torch: before 'ready', so it is not timed)
    from featx.preprocess.config import Preprocess
    from tests.fuzz_corpus import decode_outcome

    featx.io.decode.FILE_TIME_LIMIT_S = time_limit
    warnings.simplefilter("ignore")  # Pillow warns about every corrupt EXIF block; the outcome is what counts
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # libtiff writes its complaints to stderr
    preprocess = Preprocess(256, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the default's
    paths = Path(list_file).read_text().splitlines()
    warm = Path(out_file).with_suffix(".warm.png")  # the first decode loads Pillow's plugins: not timed either
    from PIL import Image

    Image.new("RGB", (8, 8)).save(warm)
    decode_outcome(warm, preprocess)
    with open(out_file, "a", buffering=1) as out:
        out.write("ready\n")
        for path in paths:
            outcome = decode_outcome(Path(path), preprocess)
            out.write(json.dumps([outcome.status, outcome.seconds, outcome.detail[:300]]) + "\n")


class Shard:
    """A slice of the corpus decoded by one worker process at a time; a worker that dies or stops
    answering is killed, its current file counted as a crash or hang, and a new one continues."""

    def __init__(self, paths: list[str], folder: Path, number: int, time_limit: float, hang_after: float):
        self.paths, self.folder, self.number = paths, folder, number
        self.time_limit, self.hang_after = time_limit, hang_after
        self.outcomes: list[Outcome] = []
        self.process = None
        self._start()

    def _start(self) -> None:
        self.attempt = len(self.outcomes)
        self.list_file = self.folder / f"shard{self.number}-{self.attempt}.txt"
        self.out_file = self.folder / f"shard{self.number}-{self.attempt}.jsonl"
        self.list_file.write_text("\n".join(self.paths[self.attempt:]))
        self.out_file.write_text("")
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", str(self.list_file),
                                         str(self.out_file), str(self.time_limit)])
        self.seen, self.ready, self.last_change = 0, False, time.monotonic()

    def poll(self) -> bool:
        """Read new answers; True when the shard is finished."""
        lines = self.out_file.read_text().splitlines()
        complete = lines if self.out_file.read_text().endswith("\n") else lines[:-1]
        if len(complete) > self.seen:
            self.last_change = time.monotonic()
            for line in complete[self.seen:]:
                if line == "ready":
                    self.ready = True
                else:
                    status, seconds, detail = json.loads(line)
                    self.outcomes.append(Outcome(status, seconds, detail))
            self.seen = len(complete)
        if len(self.outcomes) == len(self.paths):
            self.process.wait()
            return True
        died = self.process.poll() is not None
        stuck = self.ready and time.monotonic() - self.last_change > self.hang_after
        if died or stuck:
            self.process.kill()
            self.process.wait()
            what = f"worker died (exit {self.process.returncode})" if died else f"no answer in {self.hang_after:g} s"
            self.outcomes.append(Outcome("crash" if died else "hang", self.hang_after, what))
            if len(self.outcomes) == len(self.paths):
                return True
            self._start()
        return False


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=10.0, help="per-file limit inside featx (seconds)")
    args = parser.parse_args()
    hang_after = 2 * args.time_limit + 5  # the watchdog: beyond this the limit did not work
    all_cases = cases(args.tries, args.seed)
    counts: collections.Counter = collections.Counter()
    misses: list[tuple[str, str]] = []
    slowest: list[tuple[float, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        start = time.perf_counter()
        paths = [str(materialise(case, corpus, args.seed)) for case in all_cases]
        made = time.perf_counter() - start
        start = time.perf_counter()
        step = -(-len(paths) // args.workers)
        shards = [Shard(paths[i:i + step], Path(tmp), n, args.time_limit, hang_after)
                  for n, i in enumerate(range(0, len(paths), step))]
        running = list(shards)
        while running:
            time.sleep(0.2)
            running = [shard for shard in running if not shard.poll()]
        decoded = time.perf_counter() - start
        outcomes = [o for shard in shards for o in shard.outcomes]
    for case, outcome in zip(all_cases, outcomes):
        counts[(case.kind, outcome.status)] += 1
        slowest.append((outcome.seconds, case.name, outcome.status))
        why = judge(case, outcome, hang_after)
        if outcome.status == "hang":
            why = f"hang: {outcome.detail}"
        if why:
            misses.append((case.name, why))
    print(f"{args.tries} tries (seed {args.seed}): corpus made in {made:.1f} s, decoded in {decoded:.1f} s "
          f"by {args.workers} worker processes ({args.tries / decoded:.0f} files/s, start-up included)\n")
    print("| kind | outcome | files |\n|---|---|---|")
    for (kind, status), n in sorted(counts.items()):
        print(f"| {kind} | {status} | {n} |")
    crashes = sum(1 for _, why in misses if why.startswith("crash"))
    hangs = sum(1 for _, why in misses if why.startswith("hang") or "no answer" in why)
    good_lost = sum(1 for _, why in misses if why.startswith("good file lost"))
    bad_wrong = sum(1 for _, why in misses if why.startswith("bad file") or why.startswith("unknown code"))
    good = sum(n for (kind, _), n in counts.items() if kind == "good")
    bad = sum(n for (kind, _), n in counts.items() if kind == "bad")
    timeouts = sum(n for (_, status), n in counts.items() if status == "timeout")
    print(f"\ntargets: crashes {crashes} (0), hangs {hangs} (0), good files kept {good - good_lost}/{good}, "
          f"bad files with the right error code {bad - bad_wrong}/{bad}; time-limit error rows: {timeouts}")
    print("slowest files: " + ", ".join(f"{name} {status} {s * 1000:.0f} ms" for s, name,
                                        status in sorted(slowest)[-3:]))
    for name, why in misses[:20]:
        print(f"MISS {name}: {why}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
