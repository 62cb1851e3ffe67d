"""The throughput benchmark runs end to end (on the CPU; its --decode torch path is the GPU one's)."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import HYMENOPTERA, REPO, needs_hymenoptera

pytestmark = [needs_hymenoptera(), pytest.mark.slow]


@pytest.mark.parametrize("extra", [[], ["--decode", "torch"]])
def test_benchmark_prints_a_full_row(extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), FEATX_HYMENOPTERA=str(HYMENOPTERA))
    done = subprocess.run([sys.executable, "benchmarks/extract_throughput.py", "--quick", "--models", "squeezenet1_1",
                           "--images", "40", "--sets", "small", "--device", "cpu", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("squeezenet1_1"))
    numbers = [float(v) for v in re.findall(r"\d+\.\d+|nan", row)]
    assert len(numbers) == 11 and all(v > 0 for v in numbers), row  # every column measured, API and CLI included
