"""One definition of each step's options (pydantic models).

The HTTP bodies of `featx serve` are these models, so its OpenAPI page documents exactly what the
API accepts. The choices (`Pool`, `Device`, …) are the ones the library checks; tests prove they
equal the library's own tuples. This module imports no torch/sklearn/faiss: the CLI can read it
at start-up for free.

The typer options of `featx extract` and `featx serve` take their choices (the Literal types),
defaults, bounds and help from these models (`featx.cli._opt`); recipes validate the extract step
with `ExtractOptions`. Still separate: recipe.SCHEMA's key/type table of the other steps."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Pool = Literal["avg", "max", "avgmax", "gem", "flatten"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Amp = Literal["none", "bf16", "fp16"]
Dtype = Literal["float32", "float16"]
Decoder = Literal["auto", "pil", "torch"]
Resize = Literal["crop", "full", "pad"]
ExtractEngine = Literal["local", "ray"]

MAX_ROWS_PER_REQUEST = 256
MAX_K = 1000


class _Strict(BaseModel):
    # extra=forbid: a misspelt option is an error, not silently ignored; defer_build: the validators are
    # built on first use, not when the CLI imports this module (keeps `featx --help` fast)
    model_config = ConfigDict(extra="forbid", defer_build=True)


class ExtractOptions(_Strict):
    """`featx extract` (Python: `featx.extract`), minus the inputs and the output folder."""

    model: str = Field("efficientnet_lite0", description="Backbone name; `featx models` lists them.")
    weights: str = Field("default", description="'default', 'random' or a local state dict file.")
    layers: Optional[list[str]] = Field(None, description="Layer names (repeat --layer); default: pooled penultimate.")
    pool: Pool = Field("avg", description="Pooling of convolutional layers.")
    image_size: Optional[int] = Field(None, ge=8, le=4096, description="Override the weights' crop size.")
    tta: int = Field(1, ge=1, le=10, description="Average N deterministic views.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per forward pass.")
    workers: Optional[int] = Field(None, ge=0, le=64, description=(
        "Decoding worker processes; default: CPU: decode and forward take turns on every core; GPU: cores - 1 "
        "processes. 0 = in this process."))
    device: Device = Field("auto", description="auto picks CUDA, then MPS, then the CPU.")
    amp: Amp = Field("none", description="Mixed precision on CUDA; bf16 also on CPUs with native bfloat16 "
                                         "(AVX512-BF16/AMX).")
    dtype: Dtype = Field("float32", description="Stored feature type.")
    shard_size: int = Field(4096, ge=1, description="Rows per shard.")
    decode: Decoder = Field("auto", description="torch decodes JPEGs on the device (GPU); auto = torch on CUDA.")
    resize: Resize = Field("crop", description="crop = shorter side resized, centre-cropped (the weights' recipe); "
                                               "full = whole image squashed; pad = letterboxed (keeps the borders).")
    frozen: bool = Field(False, description="Refuse (exit 2) if the inputs differ from the store in any way.")
    engine: ExtractEngine = Field("local", description="ray runs the shards on a Ray cluster "
                                                       "(pip install 'featx[ray]').")
    ray_address: Optional[str] = Field(None, description="Ray cluster: auto, ray://HOST:PORT; default: a local one.")
    num_gpus_per_worker: Optional[float] = Field(None, ge=0, description="GPUs per Ray actor (default: CPU actors).")
    cpus_per_worker: Optional[float] = Field(None, gt=0, description="CPUs per Ray actor (default: min(4, cluster "
                                                                     "CPUs)).")


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


class PlaceRequest(_Strict):
    """POST /v1/place as JSON: where store rows (or files under --data-root) land on a loaded map."""

    projection: Optional[str] = Field(None, description="loaded projection name; default: the only one loaded")
    rows: Optional[list[int]] = Field(None, max_length=MAX_ROWS_PER_REQUEST,
                                      description="rows of the projection's store (on the map: their own point)")
    paths: Optional[list[str]] = Field(None, max_length=MAX_ROWS_PER_REQUEST)


class EmbedRequest(_Strict):
    """POST /v1/embed as JSON: feature vectors of files under --data-root, or of store rows."""

    artifact: Optional[str] = Field(None, description="model, index or store name whose extractor to use")
    layer: Optional[str] = None
    rows: Optional[list[int]] = Field(None, max_length=MAX_ROWS_PER_REQUEST)
    paths: Optional[list[str]] = Field(None, max_length=MAX_ROWS_PER_REQUEST)
    format: Literal["json", "npy"] = "json"


class ServeOptions(_Strict):
    """`featx serve`: what it loads, where it listens, and its limits."""

    models: dict[str, str] = Field(default_factory=dict, description="NAME=MODEL_DIR (repeatable).")
    indexes: dict[str, str] = Field(default_factory=dict, description="NAME=INDEX_DIR (repeatable).")
    stores: dict[str, str] = Field(default_factory=dict, description="NAME=STORE_DIR (repeatable).")
    projections: dict[str, str] = Field(default_factory=dict, description=(
        "NAME=PROJECTION_DIR from `featx project` (repeatable): the page draws the map and places each query on it."))
    data_root: Optional[str] = Field(None, description="The only folder request paths and extract jobs may read.")
    state_dir: Optional[str] = Field(None, description="Where extract jobs keep their records and stores.")
    host: str = Field("127.0.0.1", description="Any other address needs --token-file.")
    port: int = Field(8000, ge=0, le=65535)
    token_file: Optional[str] = Field(None, description="File holding the bearer token clients must send.")
    device: Device = Field("auto", description="auto picks CUDA, then MPS, then the CPU.")
    max_batch: int = Field(32, ge=1, le=1024, description="Images per forward pass.")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description=(
        "How long a batch waits for requests still being decoded (a lone request never waits)."))
    max_queue: int = Field(256, ge=1, description="Images waiting for the network; beyond: 503.")
    decode_workers: int = Field(2, ge=1, le=64, description="Threads decoding uploads.")
    max_body_mb: float = Field(20.0, gt=0, description="Larger request bodies get 413.")
    max_files: int = Field(64, ge=1, le=MAX_ROWS_PER_REQUEST, description="Images per request.")
    max_pixels: int = Field(89_478_485, ge=1, description="Larger images are refused as decompression bombs (422).")
    timeout_s: float = Field(30.0, gt=0, description="Per-request time limit in seconds (504 beyond it).")
    cors_origins: list[str] = Field(default_factory=list, description=(
        "Allow this CORS origin (repeatable); default: CORS off."))
