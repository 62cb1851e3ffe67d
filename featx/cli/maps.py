"""`featx project`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from featx.cli.common import command, console, err_console, option
from featx.options import MapColor, MapMethod, ProjectOptions

# --- maps --------------------------------------------------------------------------------------

@command("project")
def project_cmd(
    store: Path = typer.Argument(..., help="Feature store."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    layer: Optional[str] = option(ProjectOptions, "layer"),
    method: MapMethod = option(ProjectOptions, "method"),
    dims: int = option(ProjectOptions, "dims"),
    pre_pca: int = option(ProjectOptions, "pre_pca"),
    color: MapColor = option(ProjectOptions, "color"),
    sample: Optional[int] = option(ProjectOptions, "sample"),
    seed: int = option(ProjectOptions, "seed"),
    perplexity: float = option(ProjectOptions, "perplexity"),
    n_neighbors: int = option(ProjectOptions, "n_neighbors"),
    min_dist: float = option(ProjectOptions, "min_dist"),
):
    """Project features to 2-D/3-D with UMAP, t-SNE or PCA: a PNG, an interactive page, coordinates."""
    import warnings

    from featx.api import write_projection
    from featx.maps.project import fit_projection
    from featx.store.artifacts import check_output

    check_output(out, "projection", inputs=[store])  # before the work, not after
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        coords, placer = fit_projection(store, method=method, layer=layer, dims=dims, pre_pca=pre_pca, sample=sample,
                                        seed=seed,
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
