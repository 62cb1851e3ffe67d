"""The artifacts a server has loaded: models, indexes, stores, and the networks they share.

A `Registry` is built whole (every checksum verified) and then only read; a reload builds a new
one and swaps the reference, so a request that started on the old registry finishes on it. Each
network (`Engine`) is loaded once per extractor config and shared by every artifact made with it;
a reload keeps the engines whose config did not change."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.errors import FeatxError, StoreError
from featx.options import ServeOptions

log = logging.getLogger(__name__)

# what makes two artifacts' features come from the same network and preprocessing (not the layer)
_ENGINE_KEYS = ("backbone", "weights_id", "weights_sha256", "pool", "preprocess", "tta", "dtype")


class UnknownArtifact(FeatxError, KeyError):
    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def engine_key(config: dict) -> str:
    identity = {k: config.get(k) for k in _ENGINE_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Engine:
    """One network with every layer its artifacts need, and the batcher feeding it."""

    key: str
    extractor: object  # featx.extract.Extractor
    layers: tuple[str, ...]
    batcher: object = None  # featx.serve.batching.MicroBatcher, attached by the app

    @property
    def preprocess(self):
        return self.extractor.backbone.preprocess

    def forward(self, views):
        """Runs in the batcher's thread: {layer: (n, D) float32 numpy}."""
        pooled = self.extractor.forward(views)
        return {layer: tensor.cpu().numpy().astype(np.float32, copy=False) for layer, tensor in pooled.items()}


@dataclass
class LoadedModel:
    name: str
    folder: Path
    model: object  # featx.learn.classify.ShallowModel
    engine: str


@dataclass
class LoadedIndex:
    name: str
    folder: Path
    index: object  # featx.retrieval.index.Index
    engine: str
    store: str  # name of the store holding its rows (thumbnails, labels)


@dataclass
class LoadedProjection:
    name: str
    folder: Path
    projection: object  # featx.maps.placement.Projection
    engine: str
    store: str  # name of the store whose rows the map shows


@dataclass
class LoadedAnomaly:
    name: str
    folder: Path
    model: object  # featx.anomaly.model.AnomalyModel
    engine: str


@dataclass
class Registry:
    models: dict[str, LoadedModel]
    indexes: dict[str, LoadedIndex]
    stores: dict[str, object]  # name -> featx.store.FeatureStore
    engines: dict[str, Engine]
    generation: int = 1
    loaded_at: float = field(default_factory=time.time)
    projections: dict[str, LoadedProjection] = field(default_factory=dict)
    anomalies: dict[str, LoadedAnomaly] = field(default_factory=dict)
    _inflight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def use(self):
        """Counts the requests running on this registry, so a swap can wait for them."""
        with self._lock:
            self._inflight += 1
        try:
            yield self
        finally:
            with self._lock:
                self._inflight -= 1

    @property
    def inflight(self) -> int:
        return self._inflight

    # --- look-ups (a missing name says which exist) ---
    def model(self, name: str | None) -> LoadedModel:
        return _pick(self.models, name, "model", "--model NAME=MODEL_DIR")

    def index(self, name: str | None) -> LoadedIndex:
        return _pick(self.indexes, name, "index", "--index NAME=INDEX_DIR")

    def store(self, name: str | None):
        return _pick(self.stores, name, "store", "--store NAME=STORE_DIR")

    def projection(self, name: str | None) -> LoadedProjection:
        return _pick(self.projections, name, "projection", "--projection NAME=PROJECTION_DIR")

    def anomaly(self, name: str | None) -> LoadedAnomaly:
        return _pick(self.anomalies, name, "anomaly model", "--anomaly NAME=ANOMALY_DIR")

    def engine_of(self, name: str | None) -> tuple[Engine, str]:
        """The engine and layer of a model, index or projection (`None`: the only model or index loaded)."""
        if name is None:  # fine when every loaded artifact uses the same network and layer
            pairs = {(m.engine, reads(m.model)) for m in self.models.values()} | {
                (i.engine, i.index.info["layer"]) for i in self.indexes.values()}
            if len(pairs) != 1:
                names = list(self.models) + list(self.indexes)
                raise UnknownArtifact(f"name a model or index; loaded: {', '.join(names) or 'none'}")
            key, layer = pairs.pop()
            return self.engines[key], layer
        if name in self.models:
            loaded = self.models[name]
            return self.engines[loaded.engine], reads(loaded.model)
        if name in self.indexes:
            loaded = self.indexes[name]
            return self.engines[loaded.engine], loaded.index.info["layer"]
        if name in self.projections:
            loaded = self.projections[name]
            return self.engines[loaded.engine], loaded.projection.layer
        if name in self.anomalies:  # the layers it reads apart: features come as {layer: vectors}
            loaded = self.anomalies[name]
            return self.engines[loaded.engine], Apart(loaded.model.layers)
        raise UnknownArtifact(f"no model, index or projection named '{name}'; loaded: "
                              f"{', '.join(list(self.models) + list(self.indexes) + list(self.projections)) or 'none'}")

    def describe(self) -> dict:
        return {
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "models": {n: {"folder": str(m.folder), "classes": list(m.model.classes), "layers": list(m.model.layers),
                           "options": {k: v for k, v in m.model.options.items() if k != "store"},
                           "extractor": m.model.extractor_config, "engine": m.engine} for n, m in self.models.items()},
            "indexes": {n: {"folder": str(i.folder), "store": i.store, "kind": i.index.info["kind"],
                            "metric": i.index.info["metric"], "layer": i.index.info["layer"],
                            "ntotal": i.index.info["ntotal"], "extractor": i.index.info["extractor"],
                            "store_config_hash": i.index.info["store_config_hash"], "engine": i.engine}
                        for n, i in self.indexes.items()},
            "projections": {n: {"folder": str(p.folder), "store": p.store, "method": p.projection.info.get("method"),
                                "layer": p.projection.layer, "dims": p.projection.info.get("dims"),
                                "points": len(p.projection.coords), "store_fingerprint":
                                    p.projection.info.get("store_fingerprint"), "engine": p.engine}
                            for n, p in self.projections.items()},
            "anomalies": {n: {"folder": str(a.folder), "mode": a.model.mode, "layers": a.model.layers,
                              "threshold": a.model.threshold, "store_fingerprint":
                                  a.model.record.get("store_fingerprint"), "engine": a.engine}
                          for n, a in self.anomalies.items()},
            "stores": {n: store_fingerprint(s) for n, s in self.stores.items()},
            "engines": {k: {"backbone": e.extractor.backbone.name, "layers": list(e.layers),
                            "device": str(e.extractor.device)} for k, e in self.engines.items()},
        }


def _pick(table: dict, name: str | None, what: str, option: str):
    if name is None:
        if len(table) == 1:
            return next(iter(table.values()))
        raise UnknownArtifact(f"name the {what} to use; loaded: {', '.join(table) or 'none'} "
                              f"(start the server with {option})")
    try:
        return table[name]
    except KeyError:
        raise UnknownArtifact(f"no {what} named '{name}'; loaded: {', '.join(table) or 'none'}") from None


def store_fingerprint(store) -> dict:
    meta = store.manifest.get("meta") or {}
    return {"path": str(store.path), "rows": len(store), "complete": store.complete,
            "config_hash": store.config_hash, "meta_sha256": meta.get("sha256"),
            "layers": {k: v["shape"] for k, v in store.manifest["layers"].items()},
            "backbone": store.config.get("backbone")}


def load_registry(options: ServeOptions, previous: Registry | None = None) -> Registry:
    """Load and verify every artifact named in `options`; any failure raises and loads nothing.
    Engines of `previous` with the same config and layers are reused, not rebuilt."""
    from featx.anomaly.model import AnomalyModel
    from featx.learn.model import ShallowModel
    from featx.retrieval.index import Index
    from featx.store import FeatureStore, require_same_config

    stores = {name: FeatureStore.open(folder) for name, folder in options.stores.items()}
    for name, store in stores.items():
        _ = store.meta  # read now (and fail now), not in the first request
        if not store.complete:
            raise StoreError(f"store '{name}' ({store.path}) is not complete; finish it with `featx extract`")
    models = {name: (Path(folder), ShallowModel.load(folder)) for name, folder in options.models.items()}
    indexes = {name: (Path(folder), Index.load(folder)) for name, folder in options.indexes.items()}
    projections = {name: _open_projection(name, folder) for name, folder in options.projections.items()}
    anomalies = {name: (Path(folder), AnomalyModel.load(folder)) for name, folder in options.anomalies.items()}
    wanted = [(model.extractor_config, reads(model)) for _, model in models.values()]
    wanted += [(index.info["extractor"], index.info["layer"]) for _, index in indexes.values()]
    wanted += [(store.config, projection.layer) for _, projection, store in projections.values()]
    wanted += [(model.record["extractor"], layer) for _, model in anomalies.values() for layer in model.layers]
    engines = _engines(wanted, options, previous)

    loaded_models = {}
    for name, (folder, model) in models.items():
        key = engine_key(model.extractor_config)
        source = {"weights_source": model.extractor_config.get("weights_source")}
        model.check_features(engines[key].extractor.config | source, engines[key].extractor.layers)
        loaded_models[name] = LoadedModel(name, folder, model, key)
    shared = _SharedStores(stores)
    loaded_indexes = {}
    for name, (folder, index) in indexes.items():
        key = engine_key(index.info["extractor"])
        require_same_config(index.info["extractor"], engines[key].extractor.config, f"index '{name}'")
        store_name = shared.name_of(index.store, f"index-{name}", name)  # index.store raises when it is gone
        index.store = stores[store_name]
        loaded_indexes[name] = LoadedIndex(name, folder, index, key, store_name)
    loaded_projections = {name: LoadedProjection(name, folder, projection, engine_key(store.config),
                                                 shared.name_of(store, f"projection-{name}", name))
                          for name, (folder, projection, store) in projections.items()}
    loaded_anomalies = {}
    for name, (folder, model) in anomalies.items():
        key = engine_key(model.record["extractor"])
        require_same_config(model.record["extractor"], engines[key].extractor.config, f"anomaly model '{name}'")
        loaded_anomalies[name] = LoadedAnomaly(name, folder, model, key)
    generation = previous.generation + 1 if previous is not None else 1
    return Registry(loaded_models, loaded_indexes, stores, engines, generation, projections=loaded_projections,
                    anomalies=loaded_anomalies)


class Apart(tuple):
    """Layers an artifact reads apart, as {layer: vectors} (an anomaly model's patch maps); a plain
    tuple is layers a classifier reads side by side."""


def reads(model) -> str | tuple[str, ...]:
    """What a model reads from its network: a layer, or several layers side by side."""
    return model.layers[0] if len(model.layers) == 1 else tuple(model.layers)


def _engines(wanted: list[tuple[dict, str]], options: ServeOptions, previous: Registry | None) -> dict[str, "Engine"]:
    """One network per extractor config, with every layer the artifacts on it need; an engine of
    `previous` with the same config and layers is reused."""
    from featx.extract.extractor import extractor_from_config

    grouped: dict[str, dict] = {}
    for config, layer in wanted:  # a layer, or the layers a model reads side by side
        entry = grouped.setdefault(engine_key(config), {"config": dict(config), "layers": set()})
        entry["layers"].update(layer if isinstance(layer, tuple) else (layer,))
    engines: dict[str, Engine] = {}
    for key, entry in grouped.items():
        layers = tuple(sorted(entry["layers"]))
        old = previous.engines.get(key) if previous is not None else None
        if old is not None and old.layers == layers:
            engines[key] = old
            continue
        log.info("loading network %s (layers %s)", entry["config"].get("backbone"), ", ".join(layers))
        extractor = extractor_from_config(dict(entry["config"], layers=list(layers)), device=options.device,
                                          workers=0, batch_size=options.max_batch)
        engines[key] = Engine(key, extractor, layers)
    return engines


class _SharedStores:
    """The loaded stores by folder: artifacts built from one store share one open copy of it."""

    def __init__(self, stores: dict):
        self.stores = stores
        self.by_path = {Path(s.path).resolve(): n for n, s in stores.items()}

    def name_of(self, store, own_name: str, name: str) -> str:
        """The name `store` is served under, adding it (as `name`, or `own_name` if taken) when new."""
        found = self.by_path.get(Path(store.path).resolve())
        if found is None:
            found = name if name not in self.stores else own_name
            self.stores[found] = store
            self.by_path[Path(store.path).resolve()] = found
        return found


def _open_projection(name: str, folder: str):
    """The projection (checksums verified), the store it maps, unchanged since, and a first
    placement done now: UMAP compiles its transform on first use (seconds), not in a request."""
    from featx.maps.placement import load_projection
    from featx.store import FeatureStore

    projection = load_projection(folder)
    if projection.placer is None:
        raise StoreError(f"projection '{name}' ({folder}) holds no fitted reducer (made by an older featx), so it "
                         "cannot place new points; run `featx project` again")
    info = projection.info
    store = FeatureStore.open(info["store"])
    if store.fingerprint != info.get("store_fingerprint"):
        raise StoreError(f"projection '{name}' ({folder}) was made from store '{store.path}' with fingerprint "
                         f"{info.get('store_fingerprint')}, which is now {store.fingerprint}; "
                         "run `featx project` again")
    layer = store.check_layer(info["layer"])
    first = int(projection.coords["row_id"].iat[0])
    projection.stored(first)  # builds the row -> point table now, not on the event loop in a request
    projection.place(store.gather(layer, np.asarray([first], dtype=np.int64)))
    return Path(folder), projection, store
