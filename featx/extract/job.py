"""One extraction job: scan the inputs, reconcile them with the store, and run the missing shards
on an engine (local or Ray); every shard is committed to the store as it completes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from featx.errors import DiskError, InputError
from featx.extract.engines import ENGINES, make_engine  # noqa: F401 (ENGINES: re-exported)
from featx.extract.extractor import Extractor
from featx.io.containers import SourceColumns
from featx.io.sources import scan_inputs
from featx.options import EXTRACT
from featx.store import FeatureStore, StoreWriter

log = logging.getLogger(__name__)

SHARD_BYTES = 256 << 20  # a shard holds at most this much feature data per layer


def extract(inputs, out: str | Path, *, model: str = EXTRACT.model, weights: str = EXTRACT.weights,
            layers: Sequence[str] | None = EXTRACT.layers, pool: str = EXTRACT.pool,
            image_size: int | None = EXTRACT.image_size, tta: int = EXTRACT.tta, batch_size: int = EXTRACT.batch_size,
            workers: int | None = EXTRACT.workers, device: str = EXTRACT.device, amp: str = EXTRACT.amp,
            dtype: str = EXTRACT.dtype, shard_size: int = EXTRACT.shard_size, overwrite: bool = False,
            append: bool = False, frozen: bool = EXTRACT.frozen, decode: str = EXTRACT.decode,
            resize: str = EXTRACT.resize, progress: bool = True, engine: str = EXTRACT.engine,
            ray_address: str | None = EXTRACT.ray_address,
            num_gpus_per_worker: float | None = EXTRACT.num_gpus_per_worker,
            cpus_per_worker: float | None = EXTRACT.cpus_per_worker, compile: bool = EXTRACT.compile,
            image_column: str = EXTRACT.image_column, label_column: str = EXTRACT.label_column,
            split_column: str = EXTRACT.split_column, label_field: str = EXTRACT.label_field,
            head_start=None) -> FeatureStore:
    """Extract features of `inputs` (folders, manifests, globs, tar shards, Parquet images) into `out`.

    The inputs are the truth: re-running reconciles the store with them (new, changed, relabelled,
    moved and removed files; `store.manifest["last_run"]` says what changed) and resumes an
    interrupted run. `append=True` keeps rows whose files are absent from `inputs` but still exist;
    `frozen=True` refuses any difference. Another config into an existing store is refused
    unless `overwrite`.

    `engine="ray"` runs the shards on a Ray cluster (`ray_address`: "auto", "ray://HOST:PORT" or
    None for a local one), one extractor per actor with `cpus_per_worker` / `num_gpus_per_worker`;
    the store folder must be on a filesystem every node sees. `image_column`, `label_column`,
    `split_column`, `label_field`: see `featx.io.containers`.

    `head_start`: a `featx.extract.head_start.HeadStart` started on the same inputs before torch was
    imported (the CLI does); the images it decoded meanwhile are used where its preprocessing is
    this extractor's, and it is stopped before the extraction starts (at the latest when the
    process exits)."""
    if int(shard_size) < 1:
        raise InputError(f"--shard-size {shard_size} must be at least 1")
    if frozen and (overwrite or append):
        raise InputError("--frozen cannot be combined with --overwrite or --append: it refuses any change")
    runner = make_engine(engine, progress=progress, ray_address=ray_address, num_gpus_per_worker=num_gpus_per_worker,
                         cpus_per_worker=cpus_per_worker, compile=compile)
    from featx.extract.head_start import remember_preprocess, same_inputs

    columns = SourceColumns(image_column, label_column, split_column, label_field)  # a head start's are the default
    records = head_start.records if same_inputs(head_start, inputs) and columns == SourceColumns() else \
        scan_inputs(inputs, columns=columns)
    options = dict(weights=weights, layers=layers, pool=pool, image_size=image_size, tta=tta, device=device, amp=amp,
                   dtype=dtype, batch_size=batch_size, workers=workers, decode=decode, resize=resize, compile=compile)
    extractor = Extractor(model, **runner.extractor_options(options))
    remember_preprocess(model, image_size, resize, extractor.backbone.preprocess.to_dict())  # the next head start's
    rows_per_shard = shard_rows(int(shard_size), extractor)
    writer = StoreWriter(out, extractor.config | {"weights_source": weights_source(weights)}, overwrite=overwrite,
                         append=append, frozen=frozen, rows_per_shard=rows_per_shard)
    try:
        with runner.session(), writer:
            work = writer.prepare(records, files=runner.file_checker())
            shards = _missing_shards(work, rows_per_shard, out)
            ready = _take_head_start(head_start, extractor, shards, runner.name)  # stopped in every case
            runner.run(writer, work.plan, shards, extractor, ready)
            store = writer.finalize()
    except DiskError as exc:
        raise _still_needed(exc, writer, len(records), extractor) from None
    summary = store.summary()
    log.info("store %s: %d images, %d ok, %d failed", out, summary["rows"], summary["ok"], summary["failed"])
    return store


def _still_needed(exc: DiskError, writer: StoreWriter, records: int, extractor: Extractor) -> DiskError:
    """A full disk's error that says what the whole run still needs, not only the write that failed."""
    from featx.io.atomic import human_bytes

    left = sum(b - a for a, b in writer.missing_ranges()) if writer.manifest else records
    row = sum(extractor.pooled_dims.values()) * np.dtype(extractor.dtype).itemsize
    return DiskError(f"{exc}. The rows still to extract need about {human_bytes(left * row)} of features "
                     f"({left} rows × {human_bytes(row)})")


def _missing_shards(work, rows_per_shard: int, out) -> list[tuple[int, int]]:
    """The row ranges still to extract, cut into shards."""
    log.info("store %s: %s", out, work.changes.line())
    shards = [(s, min(s + rows_per_shard, stop)) for start, stop in work.missing
              for s in range(start, stop, rows_per_shard)]
    if shards and len(work.plan) and shards[0][0]:
        log.info("resuming store %s: %d of %d rows left", out, sum(b - a for a, b in shards), len(work.plan))
    return shards


def _take_head_start(head_start, extractor: Extractor, shards: list, engine: str) -> dict[str, dict]:
    """The views `head_start` decoded (and it stopped), where this extractor decodes them the same
    way: the local engine, with Pillow, in this process (the CPU plan; the check the head start was
    started under, now with the built extractor's device), with the same preprocessing and TTA
    (checked by `take`)."""
    if head_start is None:
        return {}
    from featx.extract.head_start import can_decode_ahead

    if engine != "local" or not shards or not can_decode_ahead(
            workers=extractor.workers, tta=extractor.tta, decode=extractor.decode, device=extractor.device.type,
            processes=head_start.processes):
        head_start.stop()
        return {}
    return head_start.take(extractor.backbone.preprocess.to_dict(), extractor.tta)


def weights_source(weights: str) -> str:
    return weights if weights in ("default", "random") else str(Path(weights).expanduser().resolve())


def shard_rows(shard_size: int, extractor: Extractor) -> int:
    """Rows per shard: `shard_size`, fewer when a row of the widest layer would make a shard pass SHARD_BYTES."""
    itemsize = np.dtype(extractor.dtype).itemsize
    widest = max(extractor.pooled_dims.values()) * itemsize
    return max(1, min(shard_size, SHARD_BYTES // max(1, widest)))
