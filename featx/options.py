"""One definition of each step's options (pydantic models).

The HTTP bodies of `featx serve` are these models, so its OpenAPI page documents exactly what the
API accepts. The choices (`Pool`, `Device`, …) are the ones the library checks; tests prove they
equal the library's own tuples. This module imports no torch/sklearn/faiss: the CLI can read it
at start-up for free.

Still defined twice (to fold in here later): the typer options in cli.py and recipe.SCHEMA."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Pool = Literal["avg", "max", "avgmax", "gem", "flatten"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Amp = Literal["none", "bf16", "fp16"]
Dtype = Literal["float32", "float16"]
Decoder = Literal["auto", "pil", "torch"]
Resize = Literal["crop", "full", "pad"]

MAX_ROWS_PER_REQUEST = 256
MAX_K = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored


class ExtractOptions(_Strict):
    """`featx extract` (Python: `featx.extract`), minus the inputs and the output folder."""

    model: str = Field("efficientnet_lite0", description="backbone name; `featx models` lists them")
    weights: str = Field("default", description="'default', 'random' or a local state dict file")
    layers: Optional[list[str]] = Field(None, description="layer names; default: the pooled penultimate layer")
    pool: Pool = "avg"
    image_size: Optional[int] = Field(None, ge=8, le=4096, description="override the weights' crop size")
    tta: int = Field(1, ge=1, le=10, description="average N deterministic views")
    batch_size: int = Field(32, ge=1, le=4096)
    workers: Optional[int] = Field(None, ge=0, le=64)
    device: Device = "auto"
    amp: Amp = "none"
    dtype: Dtype = "float32"
    shard_size: int = Field(4096, ge=1)
    decode: Decoder = "auto"
    resize: Resize = Field("crop", description="crop (the weights' recipe), full (squash) or pad (letterbox)")
    frozen: bool = Field(False, description="refuse any difference between the inputs and an existing store")
    engine: Literal["local", "ray"] = Field("local", description="local, or ray: the shards run on a Ray cluster")
    ray_address: Optional[str] = Field(None, description="Ray cluster: auto or ray://HOST:PORT (engine ray)")
    num_gpus_per_worker: Optional[float] = Field(None, ge=0, description="GPUs per Ray actor (engine ray)")
    cpus_per_worker: Optional[float] = Field(None, gt=0, description="CPUs per Ray actor (engine ray)")
    compile: bool = Field(False, description="torch.compile the network: faster on long runs, tens of seconds to start")


class ExtractJobRequest(_Strict):
    """POST /v1/jobs/extract: inputs (under the server's --data-root) into a named store."""

    inputs: list[str] = Field(..., min_length=1, description="folders, manifests, files or globs under --data-root")
    store: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                       description="name of the store to write (in the server's --state-dir)")
    options: ExtractOptions = Field(default_factory=ExtractOptions)


class PredictRequest(_Strict):
    """POST /v1/predict as JSON: store rows (or files under --data-root) through a loaded model."""

    model: Optional[str] = Field(None, description="loaded model name; default: the only one loaded")
    store: Optional[str] = Field(None, description="loaded store the rows belong to")
    rows: Optional[list[int]] = Field(None, max_length=MAX_ROWS_PER_REQUEST)
    paths: Optional[list[str]] = Field(None, max_length=MAX_ROWS_PER_REQUEST, description="image files under --data-root")
    top_k: int = Field(3, ge=1, le=MAX_K)


class SearchRequest(_Strict):
    """POST /v1/search as JSON: nearest neighbours of store rows (or files under --data-root)."""

    index: Optional[str] = Field(None, description="loaded index name; default: the only one loaded")
    rows: Optional[list[int]] = Field(None, max_length=MAX_ROWS_PER_REQUEST,
                                      description="rows of the index's store (the row itself is left out)")
    paths: Optional[list[str]] = Field(None, max_length=MAX_ROWS_PER_REQUEST)
    k: int = Field(10, ge=1, le=MAX_K)


class EmbedRequest(_Strict):
    """POST /v1/embed as JSON: feature vectors of files under --data-root, or of store rows."""

    artifact: Optional[str] = Field(None, description="model, index or store name whose extractor to use")
    layer: Optional[str] = None
    rows: Optional[list[int]] = Field(None, max_length=MAX_ROWS_PER_REQUEST)
    paths: Optional[list[str]] = Field(None, max_length=MAX_ROWS_PER_REQUEST)
    format: Literal["json", "npy"] = "json"


class ServeOptions(_Strict):
    """`featx serve`: what it loads, where it listens, and its limits."""

    models: dict[str, str] = Field(default_factory=dict, description="name -> model folder")
    indexes: dict[str, str] = Field(default_factory=dict, description="name -> index folder")
    stores: dict[str, str] = Field(default_factory=dict, description="name -> store folder")
    data_root: Optional[str] = Field(None, description="the only folder request paths may name")
    state_dir: Optional[str] = Field(None, description="where extract jobs keep their records and stores")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token_file: Optional[str] = None
    device: Device = "auto"
    max_batch: int = Field(32, ge=1, le=1024, description="images per forward pass")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a batch waits for more requests")
    max_queue: int = Field(256, ge=1, description="images waiting for the network; beyond it: 503")
    decode_workers: int = Field(2, ge=1, le=64, description="threads decoding uploaded images")
    max_body_mb: float = Field(20.0, gt=0, description="request bodies above this get 413")
    max_files: int = Field(64, ge=1, le=MAX_ROWS_PER_REQUEST, description="images per request")
    max_pixels: int = Field(89_478_485, ge=1, description="larger images are refused as decompression bombs")
    timeout_s: float = Field(30.0, gt=0, description="per-request time limit (504 beyond it)")
    cors_origins: list[str] = Field(default_factory=list, description="allowed CORS origins; none: CORS off")
