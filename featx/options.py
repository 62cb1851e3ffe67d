"""One definition of each step's options (pydantic models).

The HTTP bodies of `featx serve` are these models, so its OpenAPI page documents exactly what the
API accepts. The choices (`Pool`, `Device`, …) are the ones the library checks; tests prove they
equal the library's own tuples. This module imports no torch/sklearn/faiss: the CLI can read it
at start-up for free.

The typer options of extract, train-shallow, audit, index, project and serve take their choices
(the Literal types), defaults, bounds and help from these models (`featx.cli._opt`); tests prove the
models' defaults equal the Python functions' and the choices the library's own tuples. Recipes
validate the extract step with `ExtractOptions` and every step's choices with these models
(`featx.recipes.recipe._choices`)."""

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
Classifier = Literal["linear-svm", "rbf-svm", "logreg", "knn", "tree", "forest", "hgb"]
Normalizer = Literal["none", "l2", "zscore", "minmax"]
Balance = Literal["none", "class-weight", "smote"]
AuditClassifier = Literal["logreg", "linear-svm"]
Calibration = Literal["auto", "copies", "distribution"]
IndexKind = Literal["auto", "flat", "hnsw", "ivf", "ivfpq", "opq-ivfpq", "ivf-sq8"]
Metric = Literal["cosine", "l2", "ip"]
MapMethod = Literal["umap", "tsne", "pca"]
MapColor = Literal["label", "split", "error"]

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
    compile: bool = Field(False, description="torch.compile the network (needs a C++ compiler on a CPU): ~1.3x faster "
                                             "after tens of seconds of compiling; pays on thousands of images.")


class TrainShallowOptions(_Strict):
    """`featx train-shallow` (Python: `featx.train_shallow`), minus the store and the output folders."""

    layer: Optional[str] = Field(None, description="Stored layer; default: the store's first.")
    classifier: Classifier = Field("linear-svm", description="The classifier (linear-svm: best on average once tuned).")
    normalize: Normalizer = Field("zscore", description="Feature scaling before the classifier.")
    reduce: str = Field("none", description="none|pca:K|pca:0.95|pca:K:whiten|pq:M")
    cv: int = Field(5, ge=2, description="Folds when the store has no train/val split (and of the inner tuning CV).")
    val: Optional[str] = Field(None, description="A second store to score on.")
    tune: bool = Field(True, description=(
        "Choose the classifier's strength (C, k, leaf size, iterations) by inner CV on the training rows only; "
        "--no-tune keeps fixed values (C=1, k=5, …)."))
    search: bool = Field(False, description="Also search PCA's K (half, given, double) with the strength.")
    balance: Balance = Field("none", description="Class imbalance: class weights, or SMOTE oversampling.")
    seed: int = 0


class AuditOptions(_Strict):
    """`featx audit` (Python: `featx.audit`), minus the store and the output folder."""

    write_manifest: bool = Field(False, description="Also write manifest.csv: every row, suspects flagged (never removed).")
    layer: Optional[str] = Field(None, description="Stored layer; default: the store's first.")
    classifier: AuditClassifier = Field("logreg", description="Calibrated classifier of the out-of-fold probabilities.")
    cv: int = Field(5, ge=2, description="Folds of the out-of-fold probabilities.")
    k: int = Field(10, ge=1, description="Neighbours for outlier scores and near-duplicates.")
    threshold: Optional[float] = Field(None, description="Near-duplicate cosine similarity; default: calibrated.")
    calibrate: Calibration = Field("auto", description="How the near-duplicate threshold is calibrated.")
    outlier_z: float = Field(3.5, description="Robust z-score of the kNN distance above which an image is an outlier.")
    outlier_k: Optional[int] = Field(None, ge=1, description=(
        "Outlier score: distance to the K-th nearest image; default 5% of the images (10..50)."))
    seed: int = 0


class IndexOptions(_Strict):
    """`featx index` (Python: `featx.build_index`), minus the store and the output folder."""

    layer: Optional[str] = Field(None, description="Stored layer; default: the store's first.")
    kind: IndexKind = Field("auto", description="FAISS layout; auto picks by size and --memory-budget.")
    metric: Metric = Field("cosine", description="Similarity of the neighbours.")
    reduce: Optional[str] = Field(None, description="pca:K before indexing.")
    memory_budget: Optional[str] = Field(None, description="e.g. 2GB")
    nlist: Optional[int] = Field(None, ge=1, description="IVF lists; default: by size.")
    pq_m: Optional[int] = Field(None, ge=1, description="PQ sub-quantizers; default: by size.")
    nprobe: Optional[int] = Field(None, ge=1, description="Fix nprobe/efSearch instead of tuning it.")
    rerank: Optional[int] = Field(None, ge=0, description="Re-score k×N candidates with exact vectors (0: off).")
    seed: int = 0
    stream: Optional[bool] = Field(None, description=(
        "Train on a sample, add shard by shard (default: above 1 GiB of features)."))
    engine: ExtractEngine = Field("local", description="ray adds shard ranges in parallel and merges (IVF, flat).")
    ray_address: Optional[str] = Field(None, description="Ray cluster for --engine ray: auto, ray://HOST:PORT.")


class ProjectOptions(_Strict):
    """`featx project` (Python: `featx.project`), minus the store and the output folder."""

    layer: Optional[str] = Field(None, description="Stored layer; default: the store's first.")
    method: MapMethod = Field("umap", description="Each method's fitted map can place new points later (serve --projection).")
    dims: int = Field(2, ge=2, le=3, description="2 or 3.")
    pre_pca: int = Field(50, ge=1, description="PCA components before t-SNE/UMAP.")
    color: MapColor = Field("label", description="What colours the points.")
    sample: Optional[int] = Field(None, ge=1, description="Project a seeded sample of N rows.")
    seed: int = 0
    perplexity: float = Field(30.0, gt=0, description="t-SNE's perplexity.")
    n_neighbors: int = Field(15, ge=2, description="UMAP's neighbours.")
    min_dist: float = Field(0.1, ge=0, description="UMAP's minimum distance.")


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
