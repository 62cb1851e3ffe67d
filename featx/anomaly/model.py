"""The saved anomaly model: its memory bank, threshold and record (the source store's fingerprint
and extractor config), and scoring new images into a table with optional heatmap overlays."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from featx.anomaly.memory import ImageMemory
from featx.anomaly.patches import PatchMemory, heatmap, patch_features
from featx.errors import InputError, IntegrityError
from featx.io import atomic
from featx.options import ANOMALY_SCORE
from featx.store import read_record, verify_recorded_sha256
from featx.store.artifacts import check_output

log = logging.getLogger(__name__)

ANOMALY_JSON = "anomaly.json"
MEMORY_FILES = {"image": "memory.faiss", "patch": "memory.npy"}
HELD_OUT_FILE = "held_out.parquet"
GRIDS_FILE = "held_out_grids.npy"
FORMAT = 1
REFIT = "fit it again with `featx anomaly fit STORE -o ANOMALY_DIR`"
SCORE_COLUMNS = ["path", "score", "above_threshold", "status", "error"]


class AnomalyModel:
    """A memory bank of normal features with its calibrated threshold (`record['threshold']`)."""

    def __init__(self, memory: ImageMemory | PatchMemory, record: dict, held_out: pd.DataFrame | None = None,
                 grids: np.ndarray | None = None, extractor=None):
        self.memory, self.record = memory, record
        self.held_out, self.grids = held_out, grids  # the rows behind the threshold and the evaluation
        self._extractor = extractor  # built on first use; the fit passes the one it built
        self.html: str | None = None  # the page, when featx.fit_anomaly wrote one

    @property
    def mode(self) -> str:
        return self.record["mode"]

    @property
    def threshold(self) -> float:
        return float(self.record["threshold"]["threshold"])

    @property
    def layers(self) -> list[str]:
        return list(self.record["layers"])

    # --- persistence ---
    def save(self, folder: str | Path) -> Path:
        """The memory and held-out files first, then the sealed anomaly.json naming their sha256."""
        folder = Path(folder)
        check_output(folder, "anomaly", inputs=[self.record.get("store")])
        folder.mkdir(parents=True, exist_ok=True)
        data = self.memory.to_bytes() if self.mode == "image" else _npy_bytes(self.memory.bank)
        files = {"memory": {"path": MEMORY_FILES[self.mode], "sha256": atomic.write_hashed(folder / MEMORY_FILES[
            self.mode], data)}}
        if self.held_out is not None:
            import io

            buffer = io.BytesIO()
            self.held_out.to_parquet(buffer, index=False)
            files["held_out"] = {"path": HELD_OUT_FILE, "sha256": atomic.write_hashed(folder / HELD_OUT_FILE,
                                                                                      buffer.getvalue())}
        if self.grids is not None:
            files["grids"] = {"path": GRIDS_FILE, "sha256": atomic.write_hashed(folder / GRIDS_FILE,
                                                                                _npy_bytes(self.grids))}
        self.record = atomic.write_sealed_json(folder / ANOMALY_JSON, {**self.record, "files": files})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "AnomalyModel":
        """Verify anomaly.json's seal and every file's checksum before anything reads them."""
        folder = Path(folder)
        record = read_record(folder, ANOMALY_JSON, "a featx anomaly model", REFIT)
        if record.get("format") != FORMAT or record.get("mode") not in MEMORY_FILES:
            raise IntegrityError(f"'{folder / ANOMALY_JSON}' has format {record.get('format')!r} and mode "
                                 f"{record.get('mode')!r}; this featx reads format {FORMAT}, modes image and patch. "
                                 f"{REFIT[0].upper() + REFIT[1:]}")
        files = record.get("files", {})
        for entry in files.values():
            verify_recorded_sha256(folder / entry["path"], entry["sha256"], ANOMALY_JSON, REFIT)
        memory_file = folder / files["memory"]["path"]
        if record["mode"] == "image":
            options = record["options"]
            memory = ImageMemory.from_bytes(memory_file.read_bytes(), metric=options["metric"], k=options["k"],
                                            plan=record["memory"].get("plan"))
        else:
            memory = PatchMemory(np.load(memory_file, allow_pickle=False))
        held_out = pd.read_parquet(folder / files["held_out"]["path"]) if "held_out" in files else None
        grids = np.load(folder / files["grids"]["path"], allow_pickle=False) if "grids" in files else None
        return cls(memory, record, held_out, grids)

    # --- scoring ---
    def score_features(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, patch-score grids or None) of features laid out as the source store's layers."""
        if self.mode == "image":
            return self.memory.score(features[self.layers[0]]), None
        return self.memory.score(patch_features(features, self.record["map_shapes"]))

    def extractor(self, *, device: str = ANOMALY_SCORE.device, batch_size: int = ANOMALY_SCORE.batch_size,
                  workers: int | None = ANOMALY_SCORE.workers):
        """The source store's extractor, restricted to the layers this model reads (kept for reuse)."""
        if self._extractor is None:
            from featx.extract.extractor import extractor_from_config

            config = {**self.record["extractor"], "layers": self.layers}
            self._extractor = extractor_from_config(config, device=device, batch_size=batch_size, workers=workers)
        return self._extractor

    def score(self, images: Sequence[str | Path] | str | Path, *, heatmaps: str | Path | None = ANOMALY_SCORE.heatmaps,
              device: str = ANOMALY_SCORE.device, batch_size: int = ANOMALY_SCORE.batch_size,
              workers: int | None = ANOMALY_SCORE.workers, progress: bool = False) -> pd.DataFrame:
        """One row per image: path, score, above_threshold, status, error (a file that cannot be read
        gets its error and no score). `heatmaps`: a folder for heatmap overlay PNGs (patch-level
        models); their paths are in `.attrs['heatmaps']`."""
        from featx.io.sources import scan_inputs

        if heatmaps is not None and self.mode != "patch":
            raise InputError("--heatmaps needs a patch-level model (fit with `featx anomaly fit STORE --patch`); "
                             "an image-level model scores whole images only")
        paths = [r.path for r in scan_inputs(images, missing_ok=True)]
        extractor = self.extractor(device=device, batch_size=batch_size, workers=workers)
        features, meta = extractor.features_of(paths, progress=progress)
        ok = (meta["status"] == "ok").to_numpy()
        scores = np.full(len(paths), np.nan)
        grids = None
        if ok.any():
            scores[ok], grids = self.score_features({layer: v[ok] for layer, v in features.items()})
        frame = meta.assign(score=scores, above_threshold=np.where(ok, scores > self.threshold, None))[SCORE_COLUMNS]
        frame.attrs["threshold"] = self.threshold
        if heatmaps is not None:
            frame.attrs["heatmaps"] = self.write_heatmaps(heatmaps, [p for p, good in zip(paths, ok) if good], grids)
        return frame

    def heatmaps_of(self, grids: np.ndarray) -> list[np.ndarray]:
        size = int(self.record["extractor"]["preprocess"]["crop_size"])
        return [heatmap(grid, size) for grid in grids]

    def write_heatmaps(self, folder: str | Path, paths: Sequence[str], grids: np.ndarray | None) -> dict[str, str]:
        """An overlay PNG per image (the network's view, coloured by the heatmap) in `folder`."""
        from featx.anomaly.heatmap import overlay_png

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written, taken = {}, set()
        extractor = self.extractor()
        for path, heat in zip(paths, self.heatmaps_of(grids) if grids is not None else []):
            name = Path(path).stem + "_heatmap.png"
            while name in taken:
                name = f"{Path(name).stem}_{len(taken)}.png"
            taken.add(name)
            data = overlay_png(Path(path).read_bytes(), heat, self.record, extractor.backbone.preprocess,
                               extractor.decode)
            atomic.write_bytes(folder / name, data)
            written[path] = str(folder / name)
        return written


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def score_anomaly(model: AnomalyModel | str | Path, images, *, heatmaps: str | Path | None = ANOMALY_SCORE.heatmaps,
                  device: str = ANOMALY_SCORE.device, batch_size: int = ANOMALY_SCORE.batch_size,
                  workers: int | None = ANOMALY_SCORE.workers, progress: bool = False) -> pd.DataFrame:
    """Score images (files, folders, globs or a manifest) with a saved anomaly model: a DataFrame of
    path, score, above_threshold, status and error (`AnomalyModel.score`)."""
    model = model if isinstance(model, AnomalyModel) else AnomalyModel.load(model)
    return model.score(images, heatmaps=heatmaps, device=device, batch_size=batch_size, workers=workers,
                       progress=progress)
