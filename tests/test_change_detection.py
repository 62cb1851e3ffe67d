"""Change detection reads files in batches: in threads locally (the Ray engine's tasks are tested
in test_ray_engine.py); the answers are in the order of the paths asked for."""

import hashlib
import os

from featx.store.reconcile import LocalFiles


def test_threaded_stats_and_hashes_match_each_file_in_order(tmp_path):
    paths = []
    for i in range(40):  # above the threshold where threads start
        file = tmp_path / f"{i:02d}.bin"
        file.write_bytes(os.urandom(100 + i))
        paths.append(str(file))
    paths.insert(7, str(tmp_path / "missing.bin"))
    files = LocalFiles(threads=4)
    expected_sha = [hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.exists(p) else None for p in paths]
    assert files.sha256(paths) == expected_sha
    stats = files.stat(paths)
    assert stats[7] is None
    assert [s[0] for i, s in enumerate(stats) if i != 7] == [100 + i for i in range(40)]
