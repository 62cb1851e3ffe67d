"""A full disk or a read-only filesystem is featx's error (exit 2, the folder and the space
needed), never a traceback; a store whose first write failed resumes (or is replaced by
--overwrite) with no cleanup by hand, and `featx info` does not count unfinished rows as failed."""

from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import TINY, make_class_folder
from typer.testing import CliRunner

from featx.cli import app

TINY_ARGS = ["--model", "resnet18", "--weights", "random", "--image-size", "64", "--workers", "0",
             "--batch-size", "8"]
runner = CliRunner()


def _mount_problem() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a small tmpfs needs root (the tmpfs tests fill a real filesystem)"
    probe = Path("/tmp") / f"featx-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(probe)], capture_output=True)
        if done.returncode != 0:
            return f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"
        subprocess.run(["umount", str(probe)], check=True)
        return None
    except OSError as exc:
        return f"cannot mount a tmpfs here: {exc}"
    finally:
        probe.rmdir()


MOUNT_PROBLEM = _mount_problem()
needs_mount = pytest.mark.skipif(MOUNT_PROBLEM is not None, reason=str(MOUNT_PROBLEM))


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


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("disk") / "images", classes=("a", "b"), per_class=6)


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    return result


@needs_mount
def test_a_full_disk_at_the_first_write_is_exit_2_and_the_store_resumes_without_cleanup(images, tmp_path):
    from featx.store import FeatureStore

    with tmpfs(tmp_path / "disk", "4k") as disk:
        out = disk / "store"
        failed = cli("extract", images, "-o", out, *TINY_ARGS)
        assert failed.exit_code == 2 and "no space left on the device" in failed.output
        assert str(out) in failed.output and "needs" in failed.output
        assert "rows still to extract need about" in " ".join(failed.output.split())
        again = cli("extract", images, "-o", out, *TINY_ARGS)  # still full: the same clear error, not "not a store"
        assert again.exit_code == 2 and "not a featx store" not in again.output
        remount(disk, "size=4m")
        assert cli("extract", images, "-o", out, *TINY_ARGS).exit_code == 0
        store = FeatureStore.open(out)
        assert len(store) == 12 and store.ok.all() and store.complete


@needs_mount
def test_overwrite_replaces_a_store_whose_first_write_failed(images, tmp_path):
    with tmpfs(tmp_path / "disk", "4k") as disk:
        assert cli("extract", images, "-o", disk / "s", *TINY_ARGS).exit_code == 2
        remount(disk, "size=4m")
        assert cli("extract", images, "-o", disk / "s", *TINY_ARGS, "--overwrite").exit_code == 0


@needs_mount
def test_a_disk_full_mid_run_loses_no_row_and_info_counts_pending_not_failed(images, tmp_path):
    from featx.extract.job import extract
    from featx.store import FeatureStore

    reference = extract(images, tmp_path / "reference", **TINY)
    with tmpfs(tmp_path / "disk", "24k") as disk:
        out = disk / "store"
        result = cli("extract", images, "-o", out, *TINY_ARGS, "--shard-size", "2", "--dtype", "float32")
        assert result.exit_code == 2 and "no space left" in result.output, result.output
        info = cli("info", out, "--json")
        assert info.exit_code == 0
        import json

        summary = json.loads(info.output)
        assert summary["failed"] == 0 and summary["pending"] > 0 and summary["ok"] + summary["pending"] == 12
        remount(disk, "size=4m")
        assert cli("extract", images, "-o", out, *TINY_ARGS, "--shard-size", "2").exit_code == 0
        store = FeatureStore.open(out)
        assert len(store) == 12 and store.ok.all()
        layer = store.layers[0]
        assert (store.features(layer) == reference.features(layer)).all()  # nothing lost, nothing changed


@needs_mount
def test_index_and_train_on_a_full_disk_are_exit_2(images, tmp_path):
    from featx.extract.job import extract

    store = extract(images, tmp_path / "store", **TINY)
    with tmpfs(tmp_path / "disk", "16k") as disk:
        indexed = cli("index", store.path, "-o", disk / "index")  # faiss reports ENOSPC in its own RuntimeError
        assert indexed.exit_code == 2 and "no space left" in indexed.output and "index.faiss" in indexed.output
        trained = cli("train-shallow", store.path, "-o", disk / "model", "--classifier", "logreg", "--cv", "2")
        assert trained.exit_code == 2 and "no space left" in trained.output


@needs_mount
def test_read_only_filesystems_are_exit_2_and_unchanged_work_needs_no_write(images, tmp_path):
    import shutil

    from featx.extract.job import extract
    from featx.retrieval.index import build_index

    store = extract(images, tmp_path / "store", **TINY)
    with tmpfs(tmp_path / "ro", "8m") as ro:
        build_index(store, kind="flat").save(ro / "index")
        shutil.copytree(store.path, ro / "store")
        remount(ro, "ro")
        extracted = cli("extract", images, "-o", ro / "new", *TINY_ARGS)
        assert extracted.exit_code == 2 and "read-only" in extracted.output and str(ro) in extracted.output
        evaluated = cli("search", ro / "index", "--evaluate")
        assert evaluated.exit_code == 2 and "read-only" in evaluated.output and "--json FILE" in evaluated.output
        assert "recall" in evaluated.output.lower() or "precision" in evaluated.output.lower()  # the work is shown
        assert cli("search", ro / "index", "--evaluate", "--json", tmp_path / "eval.json").exit_code == 0
        updated = cli("index", "--update", ro / "index")
        assert updated.exit_code == 0 and "unchanged" in updated.output
        trained = cli("train-shallow", ro / "store", "-o", ro / "model", "--classifier", "logreg", "--cv", "2")
        assert trained.exit_code == 2 and "read-only" in trained.output


def test_disk_errors_name_the_folder_and_the_space(tmp_path):
    from featx.errors import DiskError
    from featx.io.atomic import disk_error, write_bytes

    full = disk_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "shard.npy", 3 * 2**20)
    assert isinstance(full, DiskError) and str(tmp_path) in str(full) and "needs 3.0 MiB" in str(full)
    assert "read-only" in str(disk_error(OSError(errno.EROFS, "Read-only file system"), tmp_path / "x"))
    assert disk_error(OSError(errno.ENOENT, "No such file"), tmp_path / "x") is None
    if os.path.exists("/dev/full"):  # the kernel's always-full device: a real ENOSPC from a real write
        with pytest.raises(OSError) as caught:
            with open("/dev/full", "wb") as f:
                f.write(b"x" * 4096)
                f.flush()
        assert isinstance(disk_error(caught.value, tmp_path / "x", 4096), DiskError)
    write_bytes(tmp_path / "ok.bin", b"fine")  # and an ordinary write still works
    assert (tmp_path / "ok.bin").read_bytes() == b"fine"


def test_a_store_whose_first_write_failed_is_started_again_but_foreign_files_are_refused(images, tmp_path):
    from featx.errors import OutputFolderError
    from featx.extract.job import extract
    from featx.store.artifacts import unfinished_store

    out = tmp_path / "s"
    (out / "plan").mkdir(parents=True)
    (out / "plan" / "0f3a.parquet").write_bytes(b"PAR1 torn")  # what a full disk leaves before the manifest
    (out / ".featx-lock").write_text("")
    assert unfinished_store(out)
    assert len(extract(images, out, **TINY)) == 12
    foreign = tmp_path / "f"
    (foreign / "plan").mkdir(parents=True)
    (foreign / "plan" / "notes.txt").write_text("mine")
    assert not unfinished_store(foreign)
    with pytest.raises(OutputFolderError, match="not a featx store"):
        extract(images, foreign, **TINY)
    assert (foreign / "plan" / "notes.txt").read_text() == "mine"
