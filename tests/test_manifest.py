"""Manifests and sources: every malformed manifest is a clear InputError naming the file, the line
and the fix; every odd file system entry becomes one error row; one file gives one row."""

import logging
import os
import threading

import pytest
from PIL import Image

from featx.errors import InputError
from featx.io.decode import DecodeError, read_bytes
from featx.io.sources import scan_inputs


@pytest.fixture
def imgs(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8), "red").save(folder / f"{name}.png")
    return tmp_path


def write(path, text: str | bytes):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_non_utf8_manifest_names_the_line_and_the_fix(imgs):
    manifest = write(imgs / "m.csv", b"path,label\nimgs/a.png,ant\nimgs/b.png,abeill\xe9\n")
    with pytest.raises(InputError, match=r"m\.csv.* line 3 is not UTF-8.*0xe9.*save it as UTF-8"):
        scan_inputs(manifest)


def test_utf8_bom_is_accepted(imgs):
    manifest = write(imgs / "m.csv", "\ufeffpath,label\nimgs/a.png,abeillé\n".encode())
    assert [r.label for r in scan_inputs(manifest)] == ["abeillé"]


@pytest.mark.parametrize("body,match", [
    ("path,label\nimgs/a.png,ant\nimgs/b.png,bee,extra\n", r"m\.csv.* line 3 has 3 fields, the header has 2.*quote"),
    ('path,label\nimgs/a.png,ant\n"imgs/b.png,bee\nimgs/c.png,bee\n', r"m\.csv.* line 3.*unbalanced quote"),
    (b"", r"m\.csv.* is empty \(0 bytes\).*header line 'path"),
    ("path,label\n", r"m\.csv.* has a header but no rows"),
    ("path,label\nimgs/a.png,ant\n,bee\n", r"m\.csv.* line 3: the 'path' cell is empty"),
], ids=["extra-field", "unbalanced-quote", "zero-bytes", "header-only", "empty-path-cell"])
def test_bad_manifest_names_the_file_and_line(imgs, body, match):
    manifest = write(imgs / "m.csv", body)
    with pytest.raises(InputError, match=match):
        scan_inputs(manifest)


def test_dotdot_and_plain_path_are_one_file(imgs):
    manifest = write(imgs / "m.csv", "path,label\nimgs/../imgs/a.png,ant\nimgs/a.png,ant\n")
    records = scan_inputs(manifest)
    assert len(records) == 1 and records[0].path == str((imgs / "imgs" / "a.png").resolve())


def test_absolute_paths_are_normalised_too(imgs):
    absolute = f"{imgs}/imgs/../imgs/a.png"
    manifest = write(imgs / "m.csv", f"path,label\n{absolute},ant\nimgs/a.png,ant\n")
    assert len(scan_inputs(manifest)) == 1


def test_conflicting_labels_are_refused_with_both_lines(imgs):
    manifest = write(imgs / "m.csv", "path,label\nimgs/a.png,ant\nimgs/b.png,bee\nimgs/../imgs/a.png,bee\n")
    with pytest.raises(InputError, match=r"a\.png.*label 'ant' at m\.csv line 2.*label 'bee' at m\.csv line 4"):
        scan_inputs(manifest)


def test_conflict_between_two_inputs_names_both(imgs):
    (imgs / "folder" / "ant").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(imgs / "folder" / "ant" / "x.png")
    manifest = write(imgs / "m.csv", "path,label\nfolder/ant/x.png,bee\n")
    with pytest.raises(InputError, match=r"x\.png.*'ant' at folder .*'bee' at m\.csv line 2"):
        scan_inputs([imgs / "folder", manifest])


def test_labels_are_strings_even_with_empty_cells(imgs):
    manifest = write(imgs / "m.csv", "path,label\nimgs/a.png,0\nimgs/b.png,\nimgs/c.png,1\n")
    assert [r.label for r in scan_inputs(manifest)] == ["0", None, "1"]


def test_labels_keep_leading_zeros_and_text_like_na(imgs):
    manifest = write(imgs / "m.csv", "path,label\nimgs/a.png,007\nimgs/b.png,NA\n")
    assert [r.label for r in scan_inputs(manifest)] == ["007", "NA"]


def test_split_aliases_are_mapped_and_said(imgs, caplog):
    manifest = write(imgs / "m.csv", "path,label,split\nimgs/a.png,x,TRAINING\nimgs/b.png,x,Validation\n"
                                     "imgs/c.png,x,test\n")
    with caplog.at_level(logging.WARNING, logger="featx.io.manifests"):
        records = scan_inputs(manifest)
    assert [r.split for r in records] == ["train", "val", "test"]
    assert "split 'TRAINING' read as 'train'" in caplog.text and "split 'Validation' read as 'val'" in caplog.text


def test_unknown_split_is_refused(imgs):
    manifest = write(imgs / "m.csv", "path,label,split\nimgs/a.png,x,train\nimgs/b.png,x,holdout\n")
    with pytest.raises(InputError, match=r"m\.csv.* line 3: split 'holdout' is not allowed; allowed: train, val, test"):
        scan_inputs(manifest)


def test_group_column_and_unknown_columns(imgs):
    manifest = write(imgs / "m.csv", "path,label,group,flag\nimgs/a.png,x,patient-1,1\nimgs/b.png,x,,0\n")
    records = scan_inputs(manifest)
    assert [(r.label, r.group) for r in records] == [("x", "patient-1"), ("x", None)]


def test_parquet_labels_are_strings(imgs):
    import pandas as pd

    pd.DataFrame({"path": ["imgs/a.png", "imgs/b.png", "imgs/c.png"], "label": [0.0, None, 1.0],
                  "group": [3, 3, 4]}).to_parquet(imgs / "m.parquet")
    records = scan_inputs(imgs / "m.parquet")
    assert [(r.label, r.group) for r in records] == [("0", "3"), (None, "3"), ("1", "4")]


def test_fifo_is_an_error_row_not_a_hang(imgs):
    fifo = imgs / "imgs" / "pipe.png"
    os.mkfifo(fifo)
    manifest = write(imgs / "m.csv", "path\nimgs/pipe.png\nimgs/a.png\n")
    assert len(scan_inputs(manifest)) == 2
    result = {}

    def read():
        try:
            read_bytes(str(fifo))
        except DecodeError as exc:
            result["code"] = exc.code

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert result["code"] == "not_a_file"


def plant_odd_entries(folder):
    """A FIFO, a dangling link and a two-link loop, all named like images."""
    os.mkfifo(folder / "pipe.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    os.symlink(folder / "loop2.png", folder / "loop1.png")
    os.symlink(folder / "loop1.png", folder / "loop2.png")


def test_folder_scan_reports_fifo_dangling_link_and_loop(imgs):
    folder = imgs / "imgs"
    plant_odd_entries(folder)
    (folder / "dir.png").mkdir()
    paths = {os.path.basename(r.path) for r in scan_inputs(folder)}
    assert paths == {"a.png", "b.png", "c.png", "pipe.png", "dangling.png", "loop1.png", "loop2.png", "dir.png"}
    codes = {}
    for name in ("pipe.png", "dangling.png", "loop1.png", "dir.png"):
        with pytest.raises(DecodeError) as info:
            read_bytes(str(folder / name))
        codes[name] = info.value.code
    assert codes == {"pipe.png": "not_a_file", "dangling.png": "broken_link", "loop1.png": "symlink_loop",
                     "dir.png": "not_a_file"}


def test_symlinked_directory_loop_does_not_hang_the_scan(imgs):
    os.symlink(imgs / "imgs", imgs / "imgs" / "again")
    records = scan_inputs(imgs / "imgs")
    assert sorted(os.path.basename(r.path) for r in records) == ["a.png", "b.png", "c.png"]


def test_read_time_limit(imgs, monkeypatch):
    import featx.io.decode as images

    monkeypatch.setattr(images, "FILE_TIME_LIMIT_S", 0.2)
    monkeypatch.setattr(images, "_READ_CHUNK", 1)  # one byte at a time, each slowed down below
    real_read = os.read

    def slow_read(fd, n):
        import time
        time.sleep(0.05)
        return real_read(fd, n)

    monkeypatch.setattr(images.os, "read", slow_read)
    with pytest.raises(DecodeError) as info:
        read_bytes(str(imgs / "imgs" / "a.png"))
    assert info.value.code == "timeout"


def test_decode_time_limit(monkeypatch):
    import io
    import time

    import featx.io.decode as images

    monkeypatch.setattr(images, "FILE_TIME_LIMIT_S", 0.2)
    monkeypatch.setattr(images.Image, "open", lambda *a, **k: time.sleep(3))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    start = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        images.decode_image(buffer.getvalue())
    assert info.value.code == "timeout" and time.perf_counter() - start < 2


def test_extract_turns_odd_entries_into_error_rows(imgs):
    from featx.extract.job import extract
    from tests.conftest import TINY

    plant_odd_entries(imgs / "imgs")
    manifest = write(imgs / "m.csv", "path,label,split\nimgs/a.png,x,training\nimgs/pipe.png,x,train\n"
                                     "imgs/dangling.png,y,train\nimgs/loop1.png,y,val\nimgs/b.png,0,val\n")
    store = extract(manifest, imgs / "store", **TINY)
    meta = store.meta.set_index(store.meta["path"].map(os.path.basename))
    assert meta["status"].to_dict() == {"a.png": "ok", "b.png": "ok", "dangling.png": "broken_link",
                                        "loop1.png": "symlink_loop", "pipe.png": "not_a_file"}
    assert meta.loc["b.png", "label"] == "0" and meta.loc["a.png", "split"] == "train"


def test_cli_bad_manifest_exits_2_with_the_line(imgs):
    from typer.testing import CliRunner

    from featx.cli import app

    manifest = write(imgs / "m.csv", b"path,label\nimgs/a.png,\xff\xfe\n")
    result = CliRunner().invoke(app, ["extract", str(manifest), "-o", str(imgs / "s"), "--model", "resnet18",
                                      "--weights", "random", "--image-size", "64", "--workers", "0"])
    assert result.exit_code == 2 and "line 2 is not UTF-8" in result.output


def test_a_folder_and_a_file_inside_it_give_one_row_with_the_label(imgs):
    (imgs / "folder" / "ant").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(imgs / "folder" / "ant" / "x.png")
    records = scan_inputs([imgs / "folder" / "ant" / "x.png", imgs / "folder"])
    assert [(os.path.basename(r.path), r.label) for r in records] == [("x.png", "ant")]


def test_a_read_stuck_in_the_kernel_is_interrupted(imgs, monkeypatch):
    import time

    import featx.io.decode as images

    monkeypatch.setattr(images, "FILE_TIME_LIMIT_S", 0.2)
    monkeypatch.setattr(images.os, "read", lambda fd, n: time.sleep(5))  # one read that never returns in time
    start = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        read_bytes(str(imgs / "imgs" / "a.png"))
    assert info.value.code == "timeout" and time.perf_counter() - start < 2
