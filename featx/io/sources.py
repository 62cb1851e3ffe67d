"""Image sources: class folders, CSV/Parquet manifests, globs, single files, WebDataset tar shards
and Parquet image datasets, expanded into one record per image (path, label, split, group), sorted
by path. An image inside a container has a member path (`featx.io.containers`)."""

from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass
from pathlib import Path

from featx.errors import InputError
from featx.io.containers import (
    PARQUET_SUFFIXES,
    TAR_SUFFIXES,
    SourceColumns,
    expand_braces,
    parquet_image_kind,
    scan_parquet_images,
    scan_tar,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
MANIFEST_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: str | None = None
    split: str | None = None
    group: str | None = None  # patient, part, acquisition run: rows that must stay on one side of a split




def is_glob(text: str | Path) -> bool:
    return any(ch in str(text) for ch in "*?[")


def scan_inputs(inputs: str | Path | list[str | Path], missing_ok: bool = False,
                columns: SourceColumns | None = None) -> list[ImageRecord]:
    """Expand folders, manifests, globs, tar shards (`shards/{00000..00009}.tar`) and Parquet image
    datasets into image records, sorted by path, one per image.
    The same file from two places must agree on label, split and group, else InputError.
    `missing_ok`: a path that does not exist is kept as a record (it becomes an error row).
    `columns`: the image, label and split columns of Parquet datasets and the label member of tar shards."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise InputError("no inputs given; pass a folder, a CSV/Parquet manifest or a glob")
    columns = columns or SourceColumns()
    items = [expanded for item in items for expanded in expand_braces(str(item))]
    records: dict[str, tuple[ImageRecord, str]] = {}
    for item in items:
        if missing_ok and not os.path.lexists(item) and not is_glob(item):
            found = [(ImageRecord(_entry_path(Path(item))), f"input '{item}'")]
        else:
            found = _scan_one(str(item), columns)
        for record, where in found:
            _add(records, record, where)
    if not records:
        raise InputError(f"no image files found in {', '.join(map(str, items))}; allowed suffixes: "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    return sorted((record for record, _ in records.values()), key=lambda r: r.path)


def _add(records: dict[str, tuple[ImageRecord, str]], record: ImageRecord, where: str) -> None:
    """One record per file. A second listing may fill in what the first left empty (a folder and a
    file inside it given together); two different values are refused, naming both places."""
    if record.path not in records:
        records[record.path] = (record, where)
        return
    first, first_where = records[record.path]
    merged = {}
    for field in ("label", "split", "group"):
        a, b = getattr(first, field), getattr(record, field)
        if a is not None and b is not None and a != b:
            raise InputError(f"'{record.path}' is listed twice with different {field}s: {field} "
                             f"'{a}' at {first_where} and {field} '{b}' at {where}; "
                             "keep one row per image (paths are compared after resolving '..' and symlinks)")
        merged[field] = a if a is not None else b
    records[record.path] = (ImageRecord(record.path, **merged), first_where)


def _scan_one(item: str, columns: SourceColumns) -> list[tuple[ImageRecord, str]]:
    path = Path(item)
    if path.is_dir():
        return [(r, f"folder {path}") for r in scan_folder(path)]
    if path.is_file() and _is_container(path, columns):
        return _scan_container(path, columns)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        from featx.io.manifests import read_manifest_rows

        where = "line" if path.suffix.lower() == ".csv" else "row"
        return [(ImageRecord(row.path, row.label, row.split, row.group), f"{path.name} {where} {row.line}")
                for row in read_manifest_rows(path)]
    if path.is_file():
        return [(ImageRecord(str(path.resolve())), f"input '{item}'")]
    if os.path.lexists(path):  # a FIFO, a dangling link, a link loop: an error row, never a hang
        return [(ImageRecord(_entry_path(path)), f"input '{item}'")]
    if is_glob(item):
        matches = sorted(globlib.glob(item, recursive=True))
        found = []
        for match in map(Path, matches):
            if match.is_file() and _is_container(match, columns):
                found += _scan_container(match, columns)
            elif _is_image_entry(match):
                found.append((ImageRecord(_entry_path(match)), f"glob '{item}'"))
        return found
    raise InputError(f"input '{item}' does not exist; pass a folder, a .csv/.parquet manifest, an image "
                     "file, a .tar shard or a glob such as 'images/**/*.jpg'")


def _is_container(path: Path, columns: SourceColumns) -> bool:
    """A WebDataset tar shard, or a Parquet file whose image column holds images (else a Parquet
    file is a manifest of paths)."""
    suffix = path.suffix.lower()
    if suffix in TAR_SUFFIXES:
        return True
    if suffix not in PARQUET_SUFFIXES:
        return False
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception:  # a damaged file: the manifest reader says what is wrong
        return False
    return parquet_image_kind(schema, columns.image_column) is not None


def _scan_container(path: Path, columns: SourceColumns) -> list[tuple[ImageRecord, str]]:
    if path.suffix.lower() in TAR_SUFFIXES:
        return [(ImageRecord(member, label), f"shard {path.name}") for member, label in
                scan_tar(path, columns.label_field)]
    return [(ImageRecord(member, label, split), f"{path.name} row {i + 1}") for i, (member, label, split) in
            enumerate(scan_parquet_images(path, columns))]


def _is_image_entry(path: Path) -> bool:
    """An entry named like an image: a regular file, or anything else that must become an error
    row rather than vanish (a FIFO, a dangling link, a link loop, a folder named x.jpg)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and os.path.lexists(path)


def _entry_path(path: Path) -> str:
    from featx.io.manifests import normalise_path

    return normalise_path(str(path), Path.cwd())


def scan_folder(root: Path) -> list[ImageRecord]:
    """Class subfolders give labels; a top-level train/val/test level gives the split."""
    root = root.resolve()
    top = [p for p in root.iterdir() if p.is_dir()]
    split_dirs = [p for p in top if p.name.lower() in SPLIT_NAMES]
    if split_dirs:
        return [ImageRecord(r.path, r.label, d.name.lower()) for d in sorted(split_dirs) for r in _scan_labelled(d)]
    return _scan_labelled(root)


def _scan_labelled(root: Path) -> list[ImageRecord]:
    records = []
    # os.walk does not follow links to folders, so a link loop cannot make the scan run forever
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files + [d for d in subfolders if Path(d).suffix.lower() in IMAGE_SUFFIXES]):
            file = Path(folder) / name
            if not _is_image_entry(file):
                continue
            relative = file.relative_to(root)
            label = relative.parts[0] if len(relative.parts) > 1 else None
            records.append(ImageRecord(_entry_path(file), label))
    return records


def read_manifest(path: Path) -> list[ImageRecord]:
    """The records of a CSV/Parquet manifest (see featx.io.manifests for the format and its checks)."""
    return [record for record, _ in _scan_one(str(path), SourceColumns())]
