"""The command line: a thin layer over the API. Each command calls one API function; a
FeatxError becomes its message on stderr and exit code 2."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from featx.errors import FeatxError
from featx.options import (Amp, AuditClassifier, AuditOptions, Balance, Calibration, Classifier, Decoder,  # pydantic only
                           Device, Dtype, ExtractEngine, ExtractOptions, IndexKind, IndexOptions, MapColor, MapMethod,
                           Metric, Normalizer, Pool, ProjectOptions, Resize, ServeOptions, TrainShallowOptions)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Frozen CNN features for shallow classifiers, retrieval and 2-D maps.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _friendly(fn):
    """Turn featx errors into a one-line message and exit code 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FeatxError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def _opt(model, field: str, *decls: str, **extra):
    """A typer option whose default, bounds and help come from the step's option model in
    featx.options (its choices come from the Literal type the parameter is annotated with): one
    definition feeds the Python API, the CLI, recipes and the HTTP bodies."""
    import annotated_types

    info = model.model_fields[field]
    kwargs = {"help": info.description}
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            kwargs["min"] = bound.ge
        elif isinstance(bound, annotated_types.Le):
            kwargs["max"] = bound.le
    kwargs.update(extra)
    default = info.get_default(call_default_factory=True)
    return typer.Option(None if default in ([], {}) else default, *decls, **kwargs)


def command(name: str):
    def register(fn):
        return app.command(name)(_friendly(fn))

    return register


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# --- backbones and layers ----------------------------------------------------------------------

@command("models")
def models_cmd(pattern: Optional[str] = typer.Argument(None, help="Shell pattern, e.g. 'mobilenet*' or 'timm:resnet*'.")):
    """List backbones and whether their pretrained weights work offline now."""
    from featx.backbones import DEFAULT_BACKBONE, list_backbones

    infos = list_backbones(pattern)
    table = Table("model", "source", "offline weights")
    for info in infos:
        name = info.name + (" (default)" if info.name == DEFAULT_BACKBONE else "")
        table.add_row(name, info.source, "yes" if info.offline else "no (download or --weights FILE)")
    console.print(table)
    if pattern is None:
        console.print("timm models are listed with a pattern: featx models 'timm:*'")
    if not infos:
        err_console.print(f"no backbone matches '{pattern}'; try featx models '*{pattern}*'")
        raise typer.Exit(1)


@command("layers")
def layers_cmd(model: str = typer.Argument("efficientnet_lite0"),
               image_size: Optional[int] = typer.Option(None, help="Input size; default: the weights' own.")):
    """Print every addressable layer of MODEL with its output shape; mark the default."""
    from featx.api import describe_layers

    rows = describe_layers(model, image_size=image_size)
    table = Table("layer", "output shape", "")
    for row in rows:
        table.add_row(row["layer"], "×".join(map(str, row["shape"])), "default" if row["default"] else "")
    console.print(table)


# --- extraction --------------------------------------------------------------------------------

@command("extract")
def extract_cmd(
    inputs: List[str] = typer.Argument(..., help="Folders, CSV/Parquet manifests, image files or globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store folder."),
    model: str = _opt(ExtractOptions, "model", "--model", "-m"),
    weights: str = _opt(ExtractOptions, "weights"),
    layer: Optional[List[str]] = _opt(ExtractOptions, "layers", "--layer", "-l"),
    pool: Pool = _opt(ExtractOptions, "pool"),
    image_size: Optional[int] = _opt(ExtractOptions, "image_size"),
    tta: int = _opt(ExtractOptions, "tta"),
    batch_size: int = _opt(ExtractOptions, "batch_size"),
    workers: Optional[int] = _opt(ExtractOptions, "workers"),
    device: Device = _opt(ExtractOptions, "device"),
    amp: Amp = _opt(ExtractOptions, "amp"),
    dtype: Dtype = _opt(ExtractOptions, "dtype"),
    shard_size: int = _opt(ExtractOptions, "shard_size"),
    overwrite: bool = typer.Option(False, help="Replace an existing featx store (never anything else)."),
    append: bool = typer.Option(False, help="Add the inputs; keep store rows absent from them while their files exist."),
    frozen: bool = _opt(ExtractOptions, "frozen"),
    decode: Decoder = _opt(ExtractOptions, "decode"),
    resize: Resize = _opt(ExtractOptions, "resize"),
    engine: ExtractEngine = _opt(ExtractOptions, "engine"),
    ray_address: Optional[str] = _opt(ExtractOptions, "ray_address"),
    num_gpus_per_worker: Optional[float] = _opt(ExtractOptions, "num_gpus_per_worker"),
    cpus_per_worker: Optional[float] = _opt(ExtractOptions, "cpus_per_worker"),
    compile: bool = _opt(ExtractOptions, "compile", "--compile"),
):
    """Extract features of images into a resumable feature store."""
    from featx.extract.head_start import head_start

    # decode the first images on the other cores while torch loads (before importing featx.extract)
    early = head_start(inputs, model=model, image_size=image_size, resize=resize, tta=tta, decode=decode,
                       device=device, workers=workers, engine=engine)
    try:
        from featx.extract.job import extract

        store = extract(inputs, out, model=model, weights=weights, layers=layer or None, pool=pool,
                        image_size=image_size, tta=tta, batch_size=batch_size, workers=workers, device=device, amp=amp,
                        dtype=dtype, shard_size=shard_size, overwrite=overwrite, append=append, frozen=frozen,
                        decode=decode, resize=resize, engine=engine, ray_address=ray_address,
                        num_gpus_per_worker=num_gpus_per_worker, cpus_per_worker=cpus_per_worker, compile=compile,
                        head_start=early)
    finally:
        if early is not None:
            early.close()
    console.print(f"inputs vs store: {store.manifest['last_run']['line']}", highlight=False)
    _print_summary(store.summary(), brief=True)


def _print_summary(summary: dict, brief: bool = False) -> None:
    console.print(f"[bold]{summary['path']}[/]: {summary['rows']} images, [green]{summary['ok']} ok[/], "
                  f"[red]{summary['failed']} failed[/]; backbone {summary['backbone']}, layers "
                  + ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in summary["layers"].items()), highlight=False)
    if not brief:
        console.print(f"weights: {summary['weights']}; pool: {summary['pool']}; complete: {summary['complete']}")
        console.print("per class: " + ", ".join(f"{k} {v}" for k, v in summary["per_class"].items()))
        console.print("per split: " + ", ".join(f"{k} {v}" for k, v in summary["per_split"].items()))
    for error in summary["errors"][: 20 if brief else None]:
        console.print(f"  [red]{error['status']}[/] {error['path']}: {error['error']}", highlight=False)
    if brief and len(summary["errors"]) > 20:
        console.print(f"  … {len(summary['errors']) - 20} more; see `featx info {summary['path']}`")


@command("info")
def info_cmd(artifact: Path = typer.Argument(..., help="A feature store, model or index folder."),
             as_json: bool = typer.Option(False, "--json")):
    """Summarise a store (config, counts, errors, fingerprint) or a model / index (its source store,
    the fingerprint it was built on, and whether the store still matches)."""
    from featx.api import describe_artifact

    summary = describe_artifact(artifact)
    if as_json:
        console.print_json(json.dumps(summary, default=str))
    elif summary["kind"] == "store":
        _print_summary(summary)
        console.print(f"fingerprint: {summary['fingerprint']}; last re-run: {summary['last_changes']}", highlight=False)
    else:
        for key, value in summary.items():
            console.print(f"{key}: {value}", highlight=False)


@command("verify")
def verify_cmd(store: Path):
    """Check every file's sha256 and shape; exit 1 on any mismatch."""
    from featx.store import FeatureStore

    problems = FeatureStore.open(store).verify()
    for problem in problems:
        err_console.print(f"[red]✗[/] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {store}: every file matches its recorded sha256 and shape")


# --- classifiers -------------------------------------------------------------------------------

@command("train-shallow")
def train_shallow_cmd(
    store: Path = typer.Argument(..., help="Feature store."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    layer: Optional[str] = _opt(TrainShallowOptions, "layer"),
    classifier: Classifier = _opt(TrainShallowOptions, "classifier"),
    normalize: Normalizer = _opt(TrainShallowOptions, "normalize"),
    reduce: str = _opt(TrainShallowOptions, "reduce"),
    cv: int = _opt(TrainShallowOptions, "cv"),
    val: Optional[Path] = _opt(TrainShallowOptions, "val"),
    tune: bool = _opt(TrainShallowOptions, "tune", "--tune/--no-tune"),
    search: bool = _opt(TrainShallowOptions, "search"),
    balance: Balance = _opt(TrainShallowOptions, "balance"),
    seed: int = _opt(TrainShallowOptions, "seed"),
    report: Optional[Path] = typer.Option(None, help="Report folder; default MODEL_DIR/report."),
):
    """Train a shallow classifier on stored features and report honest held-out metrics.

    The strength is tuned inside each outer fold, so the score is never seen by the tuning; a 'group'
    column in the store's metadata keeps each group's images in one fold."""
    import warnings

    from featx.learn.classify import train_shallow

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        chosen = {"classifier": classifier} if classifier else {}  # None: the API's default
        model = train_shallow(store, layer=layer, **chosen, normalize=normalize, reduce=reduce, cv=cv,
                              val=val, tune=tune, search=search, balance=balance, seed=seed, report_dir=report,
                              out=out)
    for warning in caught:
        if "--cv" in str(warning.message) or "near-duplicate" in str(warning.message):
            err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    print_classification_report(model.report, out, report or out / "report")


def print_classification_report(report: dict, out: Path, report_dir: Path) -> None:
    spread = report.get("spread")
    table = Table("metric", "value", title=report["evaluation"], caption=f"± {spread}" if spread else None)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        std = report.get(f"{key}_std")
        table.add_row(key, f"{report[key]:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
    table.add_row("n_train / n_eval", f"{report['n_train']} / {report['n_eval']}")
    tuning = report.get("tuning") or {}
    if tuning.get("enabled"):
        table.add_row(f"chosen {tuning['label']}", f"{tuning['chosen']:g} (inner CV {tuning['inner_cv_score']:.4f}; "
                                                   f"grid {tuning['grid'][0]:g}…{tuning['grid'][-1]:g})")
    elif tuning:
        table.add_row(tuning["label"], f"{tuning['fixed']} (fixed: --no-tune)")
    if report.get("best_params") and len(report["best_params"]) > 1:
        table.add_row("best params", ", ".join(f"{k.split('__')[-1]}={v}" for k, v in report["best_params"].items()))
    reduction = report.get("reduction") or {}
    if "compression_ratio" in reduction:
        table.add_row("PQ compression", f"{reduction['compression_ratio']:.0f}x, accuracy change "
                                        f"{reduction['accuracy_change']:+.4f}")
    if report.get("warnings"):
        table.add_row("warnings", f"{sum(w['count'] for w in report['warnings'])} (listed in report.md)")
    console.print(table)
    console.print(f"model: {out}   report: {report_dir}/report.md")


@command("predict")
def predict_cmd(
    model: Path = typer.Argument(..., help="Model folder from train-shallow."),
    images: List[str] = typer.Argument(..., help="Image files, folders or globs."),
    tta: Optional[int] = typer.Option(None, help="Classify N views and combine them."),
    output_format: str = typer.Option("table", "--format", help="table|csv|json"),
    top_k: Optional[int] = typer.Option(None, help="Show the K best classes per image."),
    device: Device = _opt(ExtractOptions, "device"),
):
    """Predict labels of new images with a trained model (its own extractor first)."""
    from featx.learn.predict import predict

    result = predict(model, images, tta=tta, top_k=top_k, device=device)
    emit_frame(result, output_format)


def emit_frame(frame, output_format: str) -> None:
    if output_format not in ("table", "csv", "json"):
        raise FeatxError(f"unknown --format '{output_format}'; allowed: table, csv, json")
    if output_format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif output_format == "json":
        sys.stdout.write(frame.to_json(orient="records", indent=2) + "\n")
    else:
        table = Table()
        for column in frame.columns:
            table.add_column(str(column), overflow="fold", min_width=12 if column in ("path", "query") else None)
        for row in frame.itertuples(index=False):
            table.add_row(*[_cell(v) for v in row])
        console.print(table)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(f"{k} {v:.3f}" for k, v in value)
    return "" if value is None else str(value)


# --- data audit --------------------------------------------------------------------------------

@command("audit")
def audit_cmd(
    store: Path = typer.Argument(..., help="Feature store."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for audit.json, suspects.csv, audit.html."),
    write_manifest: bool = _opt(AuditOptions, "write_manifest", "--write-manifest"),
    layer: Optional[str] = _opt(AuditOptions, "layer"),
    classifier: AuditClassifier = _opt(AuditOptions, "classifier"),
    cv: int = _opt(AuditOptions, "cv"),
    k: int = _opt(AuditOptions, "k", "-k"),
    threshold: Optional[float] = _opt(AuditOptions, "threshold"),
    calibrate: Calibration = _opt(AuditOptions, "calibrate"),
    outlier_z: float = _opt(AuditOptions, "outlier_z"),
    outlier_k: Optional[int] = _opt(AuditOptions, "outlier_k"),
    model: Optional[Path] = typer.Option(None, help="A train-shallow model whose learning curve to use."),
    seed: int = _opt(AuditOptions, "seed"),
):
    """Find label errors, duplicates and train/test leakage, outliers, and whether more data would help."""
    from featx.audit.audit import audit

    suspects = audit(store, out=out, write_manifest=write_manifest, layer=layer, classifier=classifier, cv=cv, k=k,
                     threshold=threshold, calibrate=calibrate, outlier_z=outlier_z, outlier_k=outlier_k, model=model, seed=seed,
                     progress=True)
    print_audit_summary(suspects)


def print_audit_summary(suspects) -> None:
    from featx.audit.audit import KIND_TITLES, KINDS

    summary = suspects.attrs["summary"]
    console.print(f"[bold]audit of {summary['store']}[/]: {summary['ok_rows']} images, {summary['flagged_rows']} "
                  f"flagged ({100 * summary['flagged_fraction']:.1f}%)", highlight=False)
    table = Table("issue", "images", "most suspicious")
    for kind in KINDS:
        rows = suspects[suspects["kind"] == kind].head(3)
        examples = [f"{Path(r.path).name} ({r.given_label or ''}"
                    + (f" → {r.suggested_label}" if r.suggested_label and kind != "outlier" else "") + f", {r.score:.3f})"
                    for r in rows.itertuples()]
        table.add_row(KIND_TITLES[kind], str(summary["counts"][kind]), "; ".join(examples))
    console.print(table)
    near = summary["near_duplicates"]
    console.print(f"near-duplicate threshold: cosine ≥ {near['threshold']:.4f} ({near['method']}: {near['rule']})",
                  highlight=False)
    console.print(f"enough data? {summary['enough_data']['sentence']}", highlight=False)
    for name, path in suspects.attrs.get("files", {}).items():
        console.print(f"  {name}: {path}", highlight=False)


# --- retrieval ---------------------------------------------------------------------------------

@command("index")
def index_cmd(
    store: Optional[Path] = typer.Argument(None, help="Feature store (not with --update)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Index folder to write."),
    update: Optional[Path] = typer.Option(None, help="Add rows appended to the store to this index folder."),
    layer: Optional[str] = _opt(IndexOptions, "layer"),
    kind: IndexKind = _opt(IndexOptions, "kind"),
    metric: Metric = _opt(IndexOptions, "metric"),
    reduce: Optional[str] = _opt(IndexOptions, "reduce"),
    memory_budget: Optional[str] = _opt(IndexOptions, "memory_budget"),
    nlist: Optional[int] = _opt(IndexOptions, "nlist"),
    pq_m: Optional[int] = _opt(IndexOptions, "pq_m"),
    nprobe: Optional[int] = _opt(IndexOptions, "nprobe"),
    rerank: Optional[int] = _opt(IndexOptions, "rerank"),
    stream: Optional[bool] = _opt(IndexOptions, "stream", "--stream/--no-stream"),
    engine: ExtractEngine = _opt(IndexOptions, "engine"),
    ray_address: Optional[str] = _opt(IndexOptions, "ray_address"),
):
    """Build a FAISS retrieval index over stored features (or --update one)."""
    from featx.retrieval.index import Index, build_index

    if update is not None:
        index = Index.load(update, allow_stale=True)
        result = index.update()
        index.save(update)
        what = {"unchanged": "the store is unchanged", "added": f"added {result['rows']} rows",
                "rebuilt": "rebuilt (rows of the store were removed, moved or re-extracted)"}[result["mode"]]
        console.print(f"{what}; {update} now holds {index.info['ntotal']} vectors")
        return
    if store is None or out is None:
        raise FeatxError("featx index needs STORE and --out INDEX_DIR (or --update INDEX_DIR)")
    from featx.store.artifacts import check_output

    check_output(out, "index", inputs=[store])  # before the work, not after
    index = build_index(store, layer=layer, kind=kind, metric=metric, reduce=reduce, memory_budget=memory_budget,
                        nlist=nlist, pq_m=pq_m, nprobe=nprobe, rerank=rerank, stream=stream, engine=engine,
                        ray_address=ray_address)
    index.save(out)
    console.print(f"{out}: {index.info['kind']} index ({index.info['factory']}), {index.info['metric']}, "
                  f"{index.info['ntotal']} vectors, params {index.info['params']}", highlight=False)


@command("search")
def search_cmd(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    queries: Optional[List[str]] = typer.Argument(None, help="Image files, folders or globs."),
    k: int = typer.Option(10, "-k"),
    rows: Optional[str] = typer.Option(None, help="Store row ids as queries, e.g. 0,5,9"),
    output_format: str = typer.Option("table", "--format", help="table|json|csv"),
    html: Optional[Path] = typer.Option(None, help="Write a self-contained results page."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Leave-one-out retrieval metrics over the store."),
    evaluate_json: Optional[Path] = typer.Option(None, "--json", help="Where --evaluate writes its JSON."),
    device: Device = _opt(ExtractOptions, "device"),
    mmap: bool = typer.Option(False, "--mmap", help="Memory-map the index file (indexes bigger than RAM)."),
):
    """Find the stored images most similar to query images (or evaluate the index)."""
    from featx.retrieval.index import Index

    index = Index.load(index_dir, mmap=mmap)
    if evaluate:
        metrics = index.evaluate(k)
        table = Table("metric", "value", title=f"leave-one-out retrieval, {index.info['kind']} index")
        for key, value in metrics.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
        target = evaluate_json or index_dir / "evaluation.json"
        target.write_text(json.dumps(metrics, indent=2) + "\n")
        console.print(f"written: {target}")
        return
    row_ids = [int(r) for r in rows.split(",")] if rows else None
    if not queries and row_ids is None:
        raise FeatxError("give query images (files, folders, globs) or --rows of the store, or --evaluate")
    results = index.search(queries or [], k, rows=row_ids, exclude_self=row_ids is not None, device=device)
    if html is not None:
        from featx.pages.search import render_search_page

        labels = dict(zip(index.store.paths, index.store.labels)) if row_ids is not None else None
        html.write_text(render_search_page(results, f"featx search: {index_dir}", labels))
        err_console.print(f"written: {html}")
    emit_frame(results.drop(columns=["status", "error"]) if (results["status"] == "ok").all() else results,
               output_format)


# --- maps --------------------------------------------------------------------------------------

@command("project")
def project_cmd(
    store: Path = typer.Argument(..., help="Feature store."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    layer: Optional[str] = _opt(ProjectOptions, "layer"),
    method: MapMethod = _opt(ProjectOptions, "method"),
    dims: int = _opt(ProjectOptions, "dims"),
    pre_pca: int = _opt(ProjectOptions, "pre_pca"),
    color: MapColor = _opt(ProjectOptions, "color"),
    sample: Optional[int] = _opt(ProjectOptions, "sample"),
    seed: int = _opt(ProjectOptions, "seed"),
    perplexity: float = _opt(ProjectOptions, "perplexity"),
    n_neighbors: int = _opt(ProjectOptions, "n_neighbors"),
    min_dist: float = _opt(ProjectOptions, "min_dist"),
):
    """Project features to 2-D/3-D with UMAP, t-SNE or PCA: a PNG, an interactive page, coordinates."""
    import warnings

    from featx.store.artifacts import check_output
    from featx.maps.project import fit_projection, write_projection

    check_output(out, "projection", inputs=[store])  # before the work, not after
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        coords, placer = fit_projection(store, method=method, layer=layer, dims=dims, pre_pca=pre_pca, sample=sample, seed=seed,
                         perplexity=perplexity, n_neighbors=n_neighbors, min_dist=min_dist)
    for warning in caught:
        if "--perplexity" in str(warning.message) or "--n-neighbors" in str(warning.message):
            err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    files = write_projection(coords, out, color=color, placer=placer)
    info, quality = coords.attrs["info"], coords.attrs["quality"]
    console.print(f"{info['method']} of {info['rows']} images ({info['skipped_failed_rows']} failed rows skipped): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in quality.items() if isinstance(v, float)), highlight=False)
    for name, path in files.items():
        console.print(f"  {name}: {path}", highlight=False)


# --- recipes -----------------------------------------------------------------------------------

@command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="A recipe, e.g. pipelines/demo.yaml"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override an option: STEP.KEY=VALUE"),
    force: bool = typer.Option(False, help="Run every step, even unchanged ones."),
):
    """Run a recipe: extract → train-shallow → index → project → report, skipping unchanged steps."""
    from featx.recipes.run import run_recipe

    produced = run_recipe(recipe, set_ or [], force=force,
                          say=lambda m: console.print(m, highlight=False, markup=False))
    _print_run_summary(produced)
    console.print("[bold]results[/]")
    for name in ("report", "audit", "search", "projection", "model", "index", "store"):
        if name in produced:
            console.print(f"  {name}: {produced[name]}", highlight=False)



# --- service -----------------------------------------------------------------------------------

@command("serve")
def serve_cmd(
    model: Optional[List[str]] = _opt(ServeOptions, "models", "--model", "-m"),
    index: Optional[List[str]] = _opt(ServeOptions, "indexes", "--index", "-i"),
    store: Optional[List[str]] = _opt(ServeOptions, "stores", "--store", "-s"),
    projection: Optional[List[str]] = _opt(ServeOptions, "projections", "--projection", "-p"),
    data_root: Optional[Path] = _opt(ServeOptions, "data_root"),
    state_dir: Optional[Path] = _opt(ServeOptions, "state_dir"),
    host: str = _opt(ServeOptions, "host"),
    port: int = _opt(ServeOptions, "port"),
    token_file: Optional[Path] = _opt(ServeOptions, "token_file"),
    device: Device = _opt(ServeOptions, "device"),
    max_batch: int = _opt(ServeOptions, "max_batch"),
    max_wait_ms: float = _opt(ServeOptions, "max_wait_ms"),
    max_queue: int = _opt(ServeOptions, "max_queue"),
    decode_workers: int = _opt(ServeOptions, "decode_workers"),
    max_body_mb: float = _opt(ServeOptions, "max_body_mb"),
    max_files: int = _opt(ServeOptions, "max_files"),
    max_pixels: int = _opt(ServeOptions, "max_pixels"),
    timeout: float = _opt(ServeOptions, "timeout_s", "--timeout"),
    cors_origin: Optional[List[str]] = _opt(ServeOptions, "cors_origins", "--cors-origin"),
):
    """Serve models, indexes and stores over HTTP, with a web page at / (SIGHUP reloads them)."""
    from pydantic import ValidationError

    from featx.options import ServeOptions
    from featx.serve.server import named_folders, serve

    try:
        options = ServeOptions(
            models=named_folders(model, "--model"), indexes=named_folders(index, "--index"),
            stores=named_folders(store, "--store"), projections=named_folders(projection, "--projection"),
            data_root=str(data_root) if data_root else None,
            state_dir=str(state_dir) if state_dir else None, host=host, port=port,
            token_file=str(token_file) if token_file else None, device=device, max_batch=max_batch,
            max_wait_ms=max_wait_ms, max_queue=max_queue, decode_workers=decode_workers, max_body_mb=max_body_mb,
            max_files=max_files, max_pixels=max_pixels, timeout_s=timeout, cors_origins=cors_origin or [])
    except ValidationError as exc:
        raise FeatxError("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                                   for e in exc.errors()))
    serve(options, restart_for_speed=True)


def _print_run_summary(produced: dict) -> None:
    if "audit" in produced and (produced["audit"].parent / "audit.json").is_file():
        summary = json.loads((produced["audit"].parent / "audit.json").read_text())["summary"]
        console.print("audit: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in summary["counts"].items())
                      + f"; {summary['enough_data']['sentence']}", highlight=False)
    if "model" in produced and (produced["model"] / "report" / "report.json").is_file():
        report = json.loads((produced["model"] / "report" / "report.json").read_text())
        console.print(f"classifier: accuracy {report['accuracy']:.4f}, balanced accuracy "
                      f"{report['balanced_accuracy']:.4f}, macro F1 {report['macro_f1']:.4f} ({report['evaluation']})",
                      highlight=False)
    if "index" in produced and (produced["index"] / "evaluation.json").is_file():
        metrics = json.loads((produced["index"] / "evaluation.json").read_text())
        if "precision@1" in metrics:
            console.print(f"retrieval: precision@1 {metrics['precision@1']:.4f}, map@{metrics['k']} "
                          f"{metrics['map@k']:.4f} (leave-one-out)", highlight=False)


# --- probe -------------------------------------------------------------------------------------

@command("probe")
def probe_cmd(
    inputs: List[str] = typer.Argument(..., help="Labelled images: class folders (a train/ val/ level gives the split), manifests, globs."),
    out: Path = typer.Option(..., "--out", "-o", help="PROBE_DIR: stores, scores, probe.json, probe.html, winner.yaml."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Backbone to try (repeat); default: the bundled efficientnet_lite0. Models without offline weights are skipped."),
    layers: str = typer.Option("auto", help="'auto' (~6 stage outputs spread over depth) or comma-separated layer names."),
    pool: str = typer.Option("avg,gem,avgmax", "--pool", help="Comma-separated poolings to try: avg, max, avgmax, gem."),
    budget: Optional[str] = typer.Option(None, help="A time (90s, 10m, 1h) or a number of candidates."),
    classifiers: str = typer.Option("pca-logreg,linear-svm,rbf-svm", help="Comma-separated: pca-logreg, linear-svm, rbf-svm (up to 20,000 training rows), logreg (slower on wide features)."),
    weights: str = typer.Option("default", help="'default' or 'random' (for every --model)."),
    image_size: Optional[int] = typer.Option(None, help="Override the weights' crop size."),
    batch_size: int = typer.Option(32),
    workers: Optional[int] = typer.Option(None, help="Decoding worker processes; default: cores - 1."),
    device: Device = _opt(ExtractOptions, "device"),
    cv: int = typer.Option(5, help="Folds when the inputs have no train/val split."),
    seed: int = typer.Option(0),
):
    """Measure which backbone × layer × pooling × classifier suits your labelled images."""
    from featx.probe.probe import probe

    frame = probe(inputs, out, models=model or None, layers=layers, pools=pool, budget=budget,
                  classifiers=classifiers, weights=weights,
                  image_size=image_size, batch_size=batch_size, workers=workers, device=device, cv=cv, seed=seed)
    table = Table("#", "backbone", "layer", "pool", "dim", "classifier", "balanced acc.", "accuracy", "macro-F1",
                  "mAP@10", "img/s (fwd)", "shift", title=frame.attrs["protocol"]["description"])
    for row in frame.to_dict("records"):
        table.add_row(str(row["rank"]), row["backbone"], row["layer"], row["pool"], str(row["dim"]), row["classifier"],
                      *(f"{row[m]:.3f}±{row[m + '_std']:.3f}" for m in ("balanced_accuracy", "accuracy", "macro_f1")),
                      f"{row['map@10']:.4f}", _maybe(row["forward_img_per_s"], "{:.0f}"), _maybe(row["shift"], "{:.2f}"))
    console.print(table)
    for name, shift in frame.attrs["domain_shift"].items():
        console.print(f"[bold]domain shift[/] {name}: {shift['advice']}", highlight=False)
    for item in frame.attrs["skipped"]:
        err_console.print(f"[yellow]not scored:[/] {item['what']}: {item['reason']}", highlight=False)
    best = frame.iloc[0]
    console.print(f"[bold]winner[/]: {best['backbone']} / layer {best['layer']} / pool {best['pool']} / "
                  f"{best['classifier']}: balanced accuracy {best['balanced_accuracy']:.4f} ± "
                  f"{best['balanced_accuracy_std']:.4f}", highlight=False)
    console.print(f"probe: {frame.attrs['html']}   json: {frame.attrs['json']}   "
                  f"winner recipe: featx run {frame.attrs['recipe']}", highlight=False)


def _maybe(value, fmt: str) -> str:
    return "–" if value is None or value != value else fmt.format(value)


if __name__ == "__main__":
    app()
