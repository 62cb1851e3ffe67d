"""`featx index` and `featx search`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from featx.cli.common import command, console, emit_frame, err_console, option
from featx.errors import DiskError, FeatxError
from featx.io import atomic
from featx.options import Device, ExtractEngine, IndexKind, IndexOptions, Metric, OutputFormat, SearchOptions

# --- retrieval ---------------------------------------------------------------------------------

@command("index")
def index_cmd(
    store: Optional[Path] = typer.Argument(None, help="Feature store (not with --update)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Index folder to write."),
    update: Optional[Path] = typer.Option(None, help="Add rows appended to the store to this index folder."),
    layer: Optional[str] = option(IndexOptions, "layer"),
    kind: IndexKind = option(IndexOptions, "kind"),
    metric: Metric = option(IndexOptions, "metric"),
    reduce: Optional[str] = option(IndexOptions, "reduce"),
    memory_budget: Optional[str] = option(IndexOptions, "memory_budget"),
    nlist: Optional[int] = option(IndexOptions, "nlist"),
    pq_m: Optional[int] = option(IndexOptions, "pq_m"),
    nprobe: Optional[int] = option(IndexOptions, "nprobe"),
    rerank: Optional[int] = option(IndexOptions, "rerank"),
    stream: Optional[bool] = option(IndexOptions, "stream", "--stream/--no-stream"),
    engine: ExtractEngine = option(IndexOptions, "engine"),
    ray_address: Optional[str] = option(IndexOptions, "ray_address"),
):
    """Build a FAISS retrieval index over stored features (or --update one)."""
    from featx.retrieval.index import Index, build_index

    if update is not None:
        index = Index.load(update, allow_stale=True)
        before = json.dumps(index.info, sort_keys=True, default=str)
        result = index.update()
        if json.dumps(index.info, sort_keys=True, default=str) != before:  # nothing to write when nothing changed
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
    k: int = option(SearchOptions, "k", "-k"),
    rows: Optional[str] = option(SearchOptions, "rows"),
    output_format: OutputFormat = option(SearchOptions, "format", "--format"),
    html: Optional[Path] = option(SearchOptions, "html"),
    evaluate: bool = option(SearchOptions, "evaluate", "--evaluate"),
    evaluate_json: Optional[Path] = option(SearchOptions, "evaluate_json", "--json"),
    device: Device = option(SearchOptions, "device"),
    mmap: bool = option(SearchOptions, "mmap", "--mmap"),
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
        try:
            atomic.write_json(target, metrics)
        except DiskError as exc:  # the metrics are printed above; say where else they can go
            raise DiskError(f"{exc}. The metrics are printed above; pass --json FILE to write them elsewhere") from None
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
