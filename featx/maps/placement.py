"""Placing new images on a saved feature map.

`featx project` keeps the fitted reducer next to the coordinates, so a point it never saw can be
put on the same map later (what `featx serve --projection` does for an uploaded image):

- UMAP: `umap.UMAP.transform`;
- t-SNE: openTSNE's `TSNEEmbedding.transform` (optimises the new points against the fixed map;
  scikit-learn's `TSNE` has no transform, which is why featx uses openTSNE);
- PCA: `PCA.transform`, exact.

The reducer is saved with joblib (pickle: UMAP and openTSNE objects have no other format). Its
sha256 is recorded in the sealed projection.json and checked before anything is unpickled, so a
changed or damaged file is refused, like every other featx artifact."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.errors import IntegrityError, StoreError
from featx.options import PROJECT

log = logging.getLogger(__name__)

PLACER_FILE = "placer.joblib"
COORDS_FILE = "coords.parquet"
RECORD_FILE = "projection.json"
FIX = "run `featx project STORE --out DIR` again"


class Placer:
    """The fitted map: optional PCA before the reducer, then UMAP / openTSNE / PCA."""

    def __init__(self, *, method: str, reducer, pre=None, dims: int = PROJECT.dims):
        self.method = method
        self.reducer = reducer
        self.pre = pre
        self.dims = dims
        self._lock = threading.Lock()  # UMAP's and openTSNE's transforms are not documented thread-safe

    def place(self, X: np.ndarray) -> np.ndarray:
        """(n, dims) map coordinates of (n, D) feature vectors of the map's layer."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise StoreError(f"placing needs (n, D) feature vectors, got shape {X.shape}")
        with self._lock:
            reduced = self.pre.transform(X).astype(np.float32) if self.pre is not None else X
            if self.method == "tsne":
                n_map = int(np.asarray(self.reducer).shape[0])
                # openTSNE's default k=25 neighbours cannot exceed the map's points
                placed = self.reducer.transform(reduced, k=min(25, n_map - 1), perplexity=min(5, (n_map - 1) / 3))
            else:
                placed = self.reducer.transform(reduced)
        return np.asarray(placed, dtype=np.float32)

    def save(self, file: Path) -> None:
        import joblib

        joblib.dump({"method": self.method, "reducer": self.reducer, "pre": self.pre, "dims": self.dims}, file)

    @classmethod
    def load(cls, file: Path) -> "Placer":
        import joblib

        state = joblib.load(file)
        return cls(method=state["method"], reducer=state["reducer"], pre=state["pre"], dims=state["dims"])


@dataclass
class Projection:
    """A saved map: its points (row_id, path, label, split, x, y[, z]), settings and placer."""

    folder: Path
    coords: object  # pandas.DataFrame
    info: dict
    quality: dict
    placer: Placer | None
    _rows: dict = field(default_factory=dict, repr=False)

    @property
    def layer(self) -> str:
        return self.info["layer"]

    def place(self, X: np.ndarray) -> np.ndarray:
        if self.placer is None:
            raise StoreError(f"projection '{self.folder}' was written without its fitted reducer (an older featx), "
                             f"so it cannot place new points; {FIX}")
        return self.placer.place(X)

    def stored(self, row_id: int) -> np.ndarray | None:
        """The map coordinates of a store row that is on the map, else None."""
        if not self._rows:
            axes = [c for c in "xyz" if c in self.coords]
            points = self.coords[axes].to_numpy(np.float32)
            self._rows.update({int(r): points[i] for i, r in enumerate(self.coords["row_id"].to_numpy())})
        return self._rows.get(int(row_id))


def load_projection(folder: str | Path, *, with_placer: bool = True) -> Projection:
    """Read a projection folder, checking the sealed record and the sha256 of every file it names
    before reading (and, for the placer, before unpickling) it."""
    import pandas as pd

    from featx.store import verify_recorded_sha256
    from featx.store.artifacts import read_record

    folder = Path(folder)
    record = read_record(folder, RECORD_FILE, "a featx projection", FIX)
    files = record.get("files") or {}
    if "coords" not in files:
        raise IntegrityError(f"'{folder / RECORD_FILE}' records no checksum of {COORDS_FILE} (written by an older "
                             f"featx); {FIX}")
    verify_recorded_sha256(folder / COORDS_FILE, files["coords"], RECORD_FILE, FIX)
    coords = pd.read_parquet(folder / COORDS_FILE)
    placer = None
    if with_placer and "placer" in files:
        verify_recorded_sha256(folder / PLACER_FILE, files["placer"], RECORD_FILE, FIX)
        placer = Placer.load(folder / PLACER_FILE)
    return Projection(folder, coords, record.get("info", {}), record.get("quality", {}), placer)
