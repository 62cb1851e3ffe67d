"""The inference resources: predict, search, place, embed, anomaly, a map's points and thumbnails."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from featx.errors import InputError
from featx.options import AnomalyRequest, EmbedRequest, PlaceRequest, PredictRequest, SearchRequest
from featx.serve.errors import NotFound
from featx.serve.registry import reads
from featx.serve.requests import (
    features_of,
    images_of,
    json_or_multipart,
    limited,
    parse_request,
    store_rows,
)
from featx.serve.responses import AnomalyAnswer, EmbedAnswer, MapPoints, PlaceAnswer, PredictAnswer, SearchAnswer
from featx.serve.state import ServerState

log = logging.getLogger(__name__)

MAP_POINTS, MAP_POINTS_MAX = 20_000, 200_000  # points of a map sent to the page by default / at most


def inference_router(state: ServerState) -> APIRouter:
    """Predict, search, place, embed, anomaly, map points and thumbnails."""
    router = APIRouter()

    # the image resources: JSON or multipart in, their answer model out, under the time limit
    for path, summary, request_model, answer, responses in (
            ("/v1/predict", "Classify images (multipart files) or store rows / paths (JSON)", PredictRequest,
             predict_answer, {200: {"model": PredictAnswer}}),
            ("/v1/search", "Nearest stored images of images (multipart) or store rows / paths (JSON)", SearchRequest,
             search_answer, {200: {"model": SearchAnswer}}),
            ("/v1/place", "Where images (multipart) or store rows / paths (JSON) land on a loaded map", PlaceRequest,
             place_answer, {200: {"model": PlaceAnswer}}),
            ("/v1/embed", "Feature vectors, as JSON or .npy", EmbedRequest, embed_answer,
             {200: {"model": EmbedAnswer, "content": {"application/x-npy": {}}}}),
            ("/v1/anomaly", "Anomaly scores and decisions of images (multipart) or paths (JSON), optionally with "
             "heatmaps", AnomalyRequest, anomaly_answer, {200: {"model": AnomalyAnswer}})):
        router.add_api_route(path, _limited_route(state, answer), methods=["POST"], summary=summary,
                             responses=responses, openapi_extra=json_or_multipart(request_model),
                             name=path.rsplit("/", 1)[1])

    @router.get("/v1/projections/{name}", summary="A loaded map's points: coordinates, label and row id each",
                responses={200: {"model": MapPoints}})
    async def projection_points(name: str, limit: int = MAP_POINTS):
        loaded = state.registry.projection(name)
        return await run_in_threadpool(map_points, loaded, max(1, min(int(limit), MAP_POINTS_MAX)))

    @router.get("/v1/thumbnails/{store}/{row_id}", summary="A JPEG thumbnail of one store row",
                response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(store: str, row_id: int, size: int = 128):
        from featx.serve.thumbs import thumbnail_jpeg

        feature_store = state.registry.store(store)
        if not 0 <= row_id < len(feature_store):
            raise NotFound(f"store '{store}' has rows 0..{len(feature_store) - 1}, not {row_id}")
        size = max(16, min(int(size), 512))
        path = str(feature_store.meta["path"].iat[row_id])
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.run_in_executor(
            state.decode_pool, thumbnail_jpeg, path, size, state.options.max_pixels), state.options.timeout_s)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    return router



def _limited_route(state: ServerState, answer):
    """The endpoint that computes `answer(request, state)` under the server's time limit."""

    async def endpoint(request: Request):
        return await limited(state, answer(request, state))

    return endpoint


async def predict_answer(request: Request, state: ServerState) -> dict:
    started = time.perf_counter()
    body, uploads = await parse_request(request, state, PredictRequest)
    state.metrics.observe_stage("parse", time.perf_counter() - started)
    with state.registry.use() as registry:
        loaded = registry.model(body.model)
        model = loaded.model
        store = None
        if body.rows is not None:
            from featx.store import require_same_config

            store = registry.store(body.store)
            require_same_config(model.extractor_config, store.config, f"model '{loaded.name}'")
        def classify(X):
            started = time.perf_counter()
            scores = model.scores(X)
            state.metrics.observe_stage("classify", time.perf_counter() - started)
            return scores

        X, names, scores = await query_vectors(state, registry, loaded.name, body, uploads, store, reads(model),
                                                "classify", then=classify)
        classes = list(model.classes)
        results = []
        for name, row in zip(names, scores):
            order = np.argsort(-row)
            results.append({"input": name, "label": classes[order[0]], "score": float(row[order[0]]),
                            "scores": {c: float(s) for c, s in zip(classes, row)},
                            "top": [{"label": classes[i], "score": float(row[i])} for i in order[:body.top_k]]})
        return {"model": loaded.name, "generation": registry.generation,
                "score_kind": "probability" if model.has_proba else "decision", "results": results}


async def query_vectors(state: ServerState, registry, artifact: str, body, uploads, store, layer: str | tuple,
                         what: str, then=None) -> tuple[np.ndarray, list[str], Any]:
    """The query vectors of a request, with a name each, and `then(vectors)` (None without `then`):
    stored rows of `store`, or uploaded / `paths` images through `artifact`'s network."""
    if body.rows is not None:
        if uploads or body.paths:
            raise InputError("send either rows, paths or files, not several")
        X = await run_in_threadpool(store_rows, store, body.rows, layer)
        return X, [f"row {r}" for r in body.rows], (await run_in_threadpool(then, X) if then is not None else None)
    uploads = await images_of(state, uploads, body.paths)
    if not uploads:
        raise InputError(f"nothing to {what}: send image files, 'paths' or 'rows'")
    X, done = await features_of(state, registry, artifact, uploads, then)
    return X, [u.name for u in uploads], done


async def search_answer(request: Request, state: ServerState) -> dict:
    body, uploads = await parse_request(request, state, SearchRequest)
    with state.registry.use() as registry:
        loaded = registry.index(body.index)
        index, store = loaded.index, registry.stores[loaded.store]
        exclude = body.rows
        X, names, _ = await query_vectors(state, registry, loaded.name, body, uploads, store, index.info["layer"],
                                        "search with")
        k = min(body.k, int(index.faiss_index.ntotal) - (1 if exclude else 0))
        if k < 1:
            raise InputError(f"index '{loaded.name}' holds too few vectors for a search")
        scores, ids = await run_in_threadpool(index.search_vectors, X, k + (1 if exclude else 0))
        meta = store.meta
        results = []
        for q, name in enumerate(names):
            neighbours = []
            for score, row in zip(scores[q], ids[q]):
                row = int(row)
                if row < 0 or (exclude is not None and row == exclude[q]) or len(neighbours) == k:
                    continue
                label = meta["label"].iat[row]
                neighbours.append({"rank": len(neighbours) + 1, "row_id": row, "path": str(meta["path"].iat[row]),
                                   "label": None if label is None or label != label else str(label),
                                   "score": float(score),
                                   "thumbnail": f"/v1/thumbnails/{loaded.store}/{row}"})
            results.append({"input": name, "neighbours": neighbours})
        return {"index": loaded.name, "store": loaded.store, "metric": index.info["metric"],
                "generation": registry.generation, "results": results}


async def place_answer(request: Request, state: ServerState) -> dict:
    """Stored rows that are on the map answer with their own point; anything else is placed by the
    map's fitted reducer (UMAP / openTSNE transform, PCA) in a worker thread."""
    body, uploads = await parse_request(request, state, PlaceRequest)
    with state.registry.use() as registry:
        loaded = registry.projection(body.projection)
        projection = loaded.projection
        store = registry.stores[loaded.store]
        X, names, _ = await query_vectors(state, registry, loaded.name, body, uploads, store, projection.layer,
                                        "place")
        stored = [projection.stored(r) for r in body.rows] if body.rows is not None else [None] * len(names)
        missing = [i for i, point in enumerate(stored) if point is None]
        placed = await run_in_threadpool(projection.place, X[missing]) if missing else []
        for i, point in zip(missing, placed):
            stored[i] = point
        return {"projection": loaded.name, "store": loaded.store, "method": projection.info.get("method"),
                "generation": registry.generation,
                "results": [{"input": name, "coords": [float(v) for v in point],
                             "how": "transform" if i in missing else "stored"}
                            for i, (name, point) in enumerate(zip(names, stored))]}


def map_points(loaded, limit: int) -> dict:
    """At most `limit` points (a seeded sample of a bigger map, the same on every call)."""
    coords = loaded.projection.coords
    total = len(coords)
    if total > limit:
        coords = coords.iloc[np.sort(np.random.default_rng(0).choice(total, size=limit, replace=False))]
    labels = coords["label"].astype(object).where(coords["label"].notna(), None).tolist()
    names = sorted({str(v) for v in labels if v is not None})
    index_of = {name: i for i, name in enumerate(names)}
    axes = [c for c in "xyz" if c in coords]
    xy = np.round(coords[axes[:2]].to_numpy(np.float64), 5).tolist()
    return {"projection": loaded.name, "store": loaded.store, "method": loaded.projection.info.get("method"),
            "labels": names, "columns": ["x", "y", "label", "row_id"], "total": total, "sampled": total > limit,
            "points": [[x, y, -1 if label is None else index_of[str(label)], int(row)]
                       for (x, y), label, row in zip(xy, labels, coords["row_id"].tolist())]}


async def embed_answer(request: Request, state: ServerState):
    body, uploads = await parse_request(request, state, EmbedRequest)
    with state.registry.use() as registry:
        if body.rows is not None:
            if uploads or body.paths:
                raise InputError("send either rows, paths or files, not several")
            if body.artifact in registry.indexes:
                loaded = registry.indexes[body.artifact]
                store, layer = registry.stores[loaded.store], loaded.index.info["layer"]
            else:
                store = registry.store(body.artifact)
                layer = store.check_layer(body.layer)
            X = await run_in_threadpool(store_rows, store, body.rows, layer)
        else:
            uploads = await images_of(state, uploads, body.paths)
            if not uploads:
                raise InputError("nothing to embed: send image files, 'paths' or 'rows'")
            engine, layer = registry.engine_of(body.artifact)
            if body.layer is not None and body.layer != layer:
                raise InputError(f"layer '{body.layer}' is not served for this artifact; it uses '{layer}'")
            X, _ = await features_of(state, registry, body.artifact, uploads)
        X = np.asarray(X, dtype=np.float32)
        if body.format == "npy":
            buffer = io.BytesIO()
            np.save(buffer, X, allow_pickle=False)
            return Response(buffer.getvalue(), media_type="application/x-npy",
                            headers={"X-Featx-Layer": layer,
                                     "Content-Disposition": 'attachment; filename="embeddings.npy"'})
        return {"layer": layer, "dim": int(X.shape[1]), "vectors": X.tolist(), "generation": registry.generation}


async def anomaly_answer(request: Request, state: ServerState) -> dict:
    """Each image's score through the model's own network and memory, the decision at its
    calibrated threshold and, on request, the heatmap overlay (patch-level models)."""
    body, uploads = await parse_request(request, state, AnomalyRequest)
    with state.registry.use() as registry:
        loaded = registry.anomaly(body.anomaly)
        model = loaded.model
        if body.heatmap and model.mode != "patch":
            raise InputError(f"anomaly model '{loaded.name}' is image-level: it has no heatmaps; send heatmap=false, "
                             "or load a model fit with --patch")
        uploads = await images_of(state, uploads, body.paths)
        if not uploads:
            raise InputError("nothing to score: send image files or 'paths'")
        _, (scores, grids) = await features_of(state, registry, loaded.name, uploads, then=model.score_features)
        heatmaps = [None] * len(uploads)
        if body.heatmap:
            engine = registry.engines[loaded.engine]
            heatmaps = await run_in_threadpool(heatmap_uris, model, engine, uploads, grids)
        return {"anomaly": loaded.name, "mode": model.mode, "threshold": model.threshold,
                "generation": registry.generation,
                "results": [{"input": u.name, "score": float(s), "anomalous": bool(s > model.threshold), "heatmap": h}
                            for u, s, h in zip(uploads, scores, heatmaps)]}


def heatmap_uris(model, engine, uploads, grids) -> list[str]:
    from featx.anomaly.heatmap import overlay_png
    from featx.io.thumbnails import png_uri

    return [png_uri(overlay_png(upload.data, heat, model.record, engine.preprocess, engine.extractor.decode))
            for upload, heat in zip(uploads, model.heatmaps_of(grids))]
