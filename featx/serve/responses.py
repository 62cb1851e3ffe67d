"""What the inference resources answer: one model per response body. The routes name them in the
OpenAPI page (`responses=`), and the service's tests validate real answers against them (extra
keys forbidden), so the documented shape and the sent one cannot drift apart."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassScore(_Answer):
    label: str
    score: float


class Prediction(_Answer):
    input: str  # the uploaded file's name, the path, or "row N"
    label: str
    score: float
    scores: dict[str, float]
    top: list[ClassScore]


class PredictAnswer(_Answer):
    model: str
    generation: int
    score_kind: Literal["probability", "decision"]
    results: list[Prediction]


class Neighbour(_Answer):
    rank: int
    row_id: int
    path: str
    label: Optional[str]
    score: float
    thumbnail: str  # a URL of this service


class QueryNeighbours(_Answer):
    input: str
    neighbours: list[Neighbour]


class SearchAnswer(_Answer):
    index: str
    store: str
    metric: str
    generation: int
    results: list[QueryNeighbours]


class Placement(_Answer):
    input: str
    coords: list[float]
    how: Literal["stored", "transform"]


class PlaceAnswer(_Answer):
    projection: str
    store: str
    method: Optional[str]
    generation: int
    results: list[Placement]


class MapPoints(_Answer):
    projection: str
    store: str
    method: Optional[str]
    labels: list[str]
    columns: list[str]
    total: int
    sampled: bool
    points: list[list[float]]  # x, y, label index (-1: none), row id


class EmbedAnswer(_Answer):
    layer: str
    dim: int
    vectors: list[list[float]]
    generation: int


class AnomalyResult(_Answer):
    input: str
    score: float
    anomalous: bool  # score above the model's calibrated threshold
    heatmap: Optional[str]  # PNG data URI of the heatmap overlay, when asked for (patch-level models)


class AnomalyAnswer(_Answer):
    anomaly: str
    mode: Literal["image", "patch"]
    threshold: float
    generation: int
    results: list[AnomalyResult]
