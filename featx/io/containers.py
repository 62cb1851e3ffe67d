"""Images kept inside other files: WebDataset tar shards and Parquet files with an image column.

Each image is named by a member path, `CONTAINER::MEMBER`:
- a tar shard: `/data/shards/00003.tar::000123.jpg` (the tar member's name; WebDataset's key is
  the name up to the first dot of its last part, `000123`);
- a Parquet file: `/data/train.parquet::image/000000000042` (the image column, then the row).
The row identity in a store is this path plus the sha256 of the image bytes. A member is read
with one seek and one read (tar: the offsets come from one scan of the headers, kept per process;
Parquet: one row group's image column at a time, kept while its rows are read), so a shard or a
row group is never loaded whole, and each is read once in order. The container's size and
modification time stand for every member's: an unchanged shard is skipped on a re-run, a changed
one has its members hashed and only the changed ones re-extracted."""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from featx.io.manifests import SPLIT_ALIASES
from featx.options import EXTRACT

log = logging.getLogger(__name__)

SEPARATOR = "::"
TAR_SUFFIXES = (".tar",)
PARQUET_SUFFIXES = (".parquet",)
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "ppm", "pgm"}
ROW_DIGITS = 12
_ROW_GROUPS_KEPT = 4  # per process: the decoding threads read neighbouring rows, seldom more groups at once


class MemberError(Exception):
    """A member that cannot be read; `code` is one of featx.io.decode.ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SourceColumns:
    """Where labels and images are found inside containers (the `featx extract` options of the same names)."""

    image_column: str = EXTRACT.image_column
    label_column: str = EXTRACT.label_column
    split_column: str = EXTRACT.split_column
    label_field: str = EXTRACT.label_field


def split_member(path: str) -> tuple[str, str] | None:
    """(container, member) of a member path, or None for a plain file path."""
    container, sep, member = str(path).rpartition(SEPARATOR)
    if not sep or not container.lower().endswith(TAR_SUFFIXES + PARQUET_SUFFIXES):
        return None
    return container, member


def member_path(container: str | Path, member: str) -> str:
    return f"{container}{SEPARATOR}{member}"


def container_stat(path: str) -> tuple[int, int] | None:
    """Size and mtime of the container a member path lives in (None: it is gone)."""
    parts = split_member(path)
    try:
        st = os.stat(parts[0] if parts else path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def member_exists(path: str) -> bool:
    parts = split_member(path)
    if parts is None:
        return os.path.lexists(path)
    try:
        read_member(path)
    except MemberError:
        return False
    return True


def read_member(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of one member; MemberError (with a decode error code) when it cannot be read."""
    parts = split_member(path)
    if parts is None:
        raise MemberError("not_a_file", f"'{path}' is not a member path (CONTAINER{SEPARATOR}MEMBER)")
    container, member = parts
    if not os.path.isfile(container):
        raise MemberError("missing", f"container not found: {container} (for {path})")
    if container.lower().endswith(TAR_SUFFIXES):
        return _read_tar_member(container, member, max_bytes)
    return _read_parquet_member(container, member)


# --- WebDataset tar shards ---------------------------------------------------------------------

_lock = threading.Lock()
_TAR_INDEX: dict[str, tuple[tuple[int, int], dict[str, tuple[int, int]]]] = {}


def webdataset_key(name: str) -> tuple[str, str]:
    """(key, extension) the way WebDataset splits a member name: at the first dot of its last part."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def tar_index(container: str) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of a tar file, from one pass over its headers (kept per
    process while the file's size and mtime stay). A damaged tail ends the index where it starts."""
    stat = container_stat(container)
    with _lock:
        cached = _TAR_INDEX.get(container)
    if cached and cached[0] == stat:
        return cached[1]
    index = {}
    try:
        with tarfile.open(container, "r:") as tar:
            try:
                for info in tar:
                    if info.isfile():
                        index[info.name] = (info.offset_data, info.size)
            except (tarfile.TarError, OSError) as exc:
                log.warning("tar shard %s is damaged after %d members (%s); the members before are read",
                            container, len(index), exc)
    except (tarfile.TarError, OSError) as exc:
        raise MemberError("unreadable", f"'{container}' is not a readable tar file ({exc}); WebDataset shards are "
                          "uncompressed .tar files") from None
    with _lock:
        _TAR_INDEX[container] = (stat, index)
    return index


def _read_tar_member(container: str, member: str, max_bytes: int | None) -> bytes:
    index = tar_index(container)
    if member not in index:
        raise MemberError("missing", f"member '{member}' is not in tar shard {container}")
    offset, size = index[member]
    if max_bytes is not None and size > max_bytes:
        raise MemberError("too_large", f"member is {size:,} bytes, above the limit of {max_bytes:,}: "
                          f"{member_path(container, member)}")
    with open(container, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) < size:
        raise MemberError("truncated", f"member '{member}' of {container} is cut short: {len(data):,} of "
                          f"{size:,} bytes (the shard is truncated)")
    return data


def scan_tar(container: Path, label_field: str = EXTRACT.label_field) -> list[tuple[str, str | None]]:
    """(member path, label) of each image of a WebDataset shard, in the shard's order: one image
    per key (the first member with an image extension); the label is the text of the key's
    `.cls`/`.txt` member, or a field of its `.json` member (`label_field="json:FIELD"`)."""
    container = str(container.resolve())
    index = tar_index(container)
    images: dict[str, str] = {}
    labels: dict[str, str] = {}
    wanted, field = _label_member(label_field)
    for name in index:
        key, extension = webdataset_key(name)
        if extension in IMAGE_EXTENSIONS and key not in images:
            images[key] = name
        elif extension == wanted:
            labels[key] = name
    found = []
    for key, name in images.items():
        label = None
        if key in labels:
            try:
                label = _label_text(read_member(member_path(container, labels[key])), field)
            except (MemberError, ValueError, KeyError) as exc:
                log.warning("label of %s in %s not read: %s", key, container, exc)
        found.append((member_path(container, name), label))
    return found


def _label_member(label_field: str) -> tuple[str, str | None]:
    from featx.errors import InputError

    if label_field in ("cls", "txt"):
        return label_field, None
    if label_field.startswith("json:") and len(label_field) > 5:
        return "json", label_field[5:]
    raise InputError(f"--label-field '{label_field}' is not allowed; allowed: cls, txt (the member's text) or "
                     "json:FIELD (a field of the key's .json member)")


def _label_text(data: bytes, field: str | None) -> str | None:
    if field is None:
        return data.decode("utf-8").strip() or None
    value = json.loads(data)[field]
    return None if value is None else str(value)


# --- Parquet image datasets --------------------------------------------------------------------

_ROW_GROUPS: OrderedDict = OrderedDict()
_GROUP_STARTS: dict[str, tuple] = {}


def parquet_image_kind(schema, column: str) -> str | None:
    """'bytes' or 'struct' ({bytes, path}, as Hugging Face datasets store images) when `column` of
    the Parquet schema holds images, else None."""
    import pyarrow as pa

    if column not in schema.names:
        return None
    kind = schema.field(column).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "bytes"
    if pa.types.is_struct(kind) and any(kind.field(i).name == "bytes" for i in range(kind.num_fields)):
        return "struct"
    return None


def scan_parquet_images(container: Path, columns: SourceColumns) -> list[tuple[str, str | None, str | None]]:
    """(member path, label, split) of each row of a Parquet image dataset; only the label and
    split columns are read here. A Hugging Face ClassLabel column gives its class names."""
    import pyarrow.parquet as pq

    from featx.errors import InputError

    container = container.resolve()
    file = pq.ParquetFile(container)
    schema = file.schema_arrow
    if parquet_image_kind(schema, columns.image_column) is None:
        raise InputError(f"'{container}': column '{columns.image_column}' is not an image column (binary, or a "
                         f"struct with 'bytes'); its columns: {', '.join(schema.names)}. Name the image column "
                         "with --image-column")
    read = [c for c in (columns.label_column, columns.split_column) if c in schema.names]
    table = file.read(columns=read) if read else None
    names = _class_names(schema, columns.label_column)
    n = file.metadata.num_rows
    labels = table.column(columns.label_column).to_pylist() if columns.label_column in read else [None] * n
    splits = table.column(columns.split_column).to_pylist() if columns.split_column in read else [None] * n
    out = []
    for row in range(n):
        label = labels[row]
        if label is not None and names and isinstance(label, int) and 0 <= label < len(names):
            label = names[label]
        split = None if splits[row] is None else str(splits[row]).strip().lower()
        out.append((member_path(container, f"{columns.image_column}/{row:0{ROW_DIGITS}d}"),
                    None if label is None else str(label), SPLIT_ALIASES.get(split, split)))
    return out


def _class_names(schema, column: str) -> list[str] | None:
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (TypeError, KeyError, ValueError):
        return None
    return feature.get("names") if feature.get("_type") == "ClassLabel" else None


def _read_parquet_member(container: str, member: str) -> bytes:
    column, _, row_text = member.rpartition("/")
    if not column or not row_text.isdigit():
        raise MemberError("missing", f"'{member}' is not a Parquet member (COLUMN/ROW) of {container}")
    values, first = _row_group_of(container, column, int(row_text))
    value = values[int(row_text) - first]
    if isinstance(value, dict):  # {bytes, path}: the path is used where the bytes are not stored
        if value.get("bytes") is None and value.get("path"):
            file = Path(container).parent / value["path"]
            if not file.is_file():
                raise MemberError("missing", f"row {row_text} of {container} names the file '{value['path']}', "
                                  "which does not exist")
            return file.read_bytes()
        value = value.get("bytes")
    if value is None:
        raise MemberError("empty", f"row {row_text} of {container} has no image bytes (null)")
    if not value:
        raise MemberError("empty", f"row {row_text} of {container} has empty image bytes (0 bytes)")
    return bytes(value)


def _row_group_of(container: str, column: str, row: int) -> tuple[list, int]:
    """The image column of the row group holding `row` (as Python values) and its first row; the
    last few groups read are kept, so consecutive rows read their group once."""
    import pyarrow.parquet as pq

    stat = container_stat(container)
    with _lock:
        cached = _GROUP_STARTS.get(container)
    if not cached or cached[0] != stat:
        metadata = pq.read_metadata(container)
        starts = [0]
        for group in range(metadata.num_row_groups):
            starts.append(starts[-1] + metadata.row_group(group).num_rows)
        cached = (stat, starts)
        with _lock:
            _GROUP_STARTS[container] = cached
    starts = cached[1]
    if not 0 <= row < starts[-1]:
        raise MemberError("missing", f"row {row} is not in {container} ({starts[-1]} rows)")
    group = bisect.bisect_right(starts, row) - 1
    key = (container, stat, column, group)
    with _lock:
        if key in _ROW_GROUPS:
            _ROW_GROUPS.move_to_end(key)
            return _ROW_GROUPS[key], starts[group]
    file = pq.ParquetFile(container)
    if column not in file.schema_arrow.names:
        raise MemberError("missing", f"{container} has no column '{column}'")
    values = file.read_row_group(group, columns=[column]).column(column).to_pylist()
    with _lock:
        _ROW_GROUPS[key] = values
        while len(_ROW_GROUPS) > _ROW_GROUPS_KEPT:
            _ROW_GROUPS.popitem(last=False)
    return values, starts[group]


def expand_braces(text: str) -> list[str]:
    """WebDataset's shard notation: `{00000..00099}` (zero padding kept) and `{a,b}`, nested in order."""
    match = re.search(r"\{([^{}]*)\}", text)
    if match is None:
        return [text]
    body = match.group(1)
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        low, high = span.groups()
        width = len(low) if low.startswith("0") else 0
        choices = [f"{i:0{width}d}" for i in range(int(low), int(high) + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        return [text]
    return [expanded for choice in choices
            for expanded in expand_braces(text[:match.start()] + choice + text[match.end():])]
