"""The Python API's front door for the steps that show their results as web pages: each function runs
the computation (which never imports `featx.pages`), writes its data files, then its page.

`featx.audit`, `featx.probe`, `featx.write_projection` and `featx.fit_anomaly` are these functions; the CLI, recipes and
the service call them too. The other public names live where they are computed (`featx/__init__.py`
lists them all)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from featx.io import atomic
from featx.options import ANOMALY_FIT, AUDIT, PROBE, PROJECT


def audit(store, *, out: str | Path | None = None, write_manifest: bool = AUDIT.write_manifest,
          layer: str | None = AUDIT.layer, classifier: str = AUDIT.classifier, cv: int = AUDIT.cv, k: int = AUDIT.k,
          threshold: float | None = AUDIT.threshold, calibrate: str = AUDIT.calibrate,
          outlier_z: float = AUDIT.outlier_z, outlier_k: int | None = AUDIT.outlier_k, model: str | Path | None = None,
          learning_curve: bool = True, seed: int = AUDIT.seed, progress: bool = False):
    """Audit a store; returns the suspects (path, kind, score, given_label, suggested_label, …),
    with the summary in `.attrs['summary']` and, when `out` is given, the files in `.attrs['files']`
    (audit.json, suspects.csv, scores.parquet, audit.html and, on request, manifest.csv).

    - classifier/cv: the probabilistic model behind the label check (logreg, or linear-svm through
      CalibratedClassifierCV), out-of-fold on the training rows.
    - k: neighbours for the near-duplicate search and the label check.
    - threshold: cosine similarity for near-duplicates; None: calibrated, `calibrate` = 'copies'
      (re-encoded copies of the store's own images), 'distribution' (nearest-neighbour
      similarities) or 'auto' (copies when the images and weights are at hand).
    - outlier_k, outlier_z: the outlier score is the cosine distance to the outlier_k-th nearest
      image (default 5% of the images, 10…50); above a robust z-score of outlier_z it is flagged.
    - model: a train-shallow model folder whose learning curve answers "enough data?"."""
    from featx.audit.audit import run_audit, write_audit
    from featx.errors import InputError

    if write_manifest and out is None:
        raise InputError("--write-manifest needs an output folder (-o AUDIT_DIR) to write manifest.csv into")
    if out is not None:  # before the work: featx only writes into its own audit folders
        from featx.store.artifacts import check_output

        check_output(out, "audit", inputs=[getattr(store, "path", store)])
    result = run_audit(store, layer=layer, classifier=classifier, cv=cv, k=k, threshold=threshold,
                       calibrate=calibrate, outlier_z=outlier_z, outlier_k=outlier_k, model=model,
                       learning_curve=learning_curve, seed=seed, progress=progress)
    frame = result.suspects.copy()
    frame.attrs["summary"] = result.summary
    if out is not None:
        from featx.pages.audit import render_audit_page

        files = write_audit(result, out, write_manifest=write_manifest)
        files["html"] = Path(out) / "audit.html"
        atomic.write_bytes(files["html"], render_audit_page(result).encode())
        frame.attrs["files"] = {name: str(path) for name, path in files.items()}
    return frame


def probe(inputs, out: str | Path, *, models: Sequence[str] | None = PROBE.models,
          layers: str | Sequence[str] = PROBE.layers, pools: str | Sequence[str] = PROBE.pools,
          budget: str | int | None = PROBE.budget, weights: str = PROBE.weights,
          image_size: int | None = PROBE.image_size, batch_size: int = PROBE.batch_size,
          workers: int | None = PROBE.workers, device: str = PROBE.device, cv: int = PROBE.cv, seed: int = PROBE.seed,
          classifiers: str | Sequence[str] = PROBE.classifiers, shift_images: int = PROBE.shift_images,
          exhaustive: bool = PROBE.exhaustive, baselines: bool = PROBE.baselines, progress: bool = True):
    """Score backbone × layer × pooling candidates on labelled `inputs` (`featx.probe.probe.probe`)
    and write PROBE_DIR `out`, probe.html included."""
    from featx.pages.probe import render_probe_page
    from featx.probe.probe import probe as run_probe

    frame = run_probe(inputs, out, models=models, layers=layers, pools=pools, budget=budget, weights=weights,
                      image_size=image_size, batch_size=batch_size, workers=workers, device=device, cv=cv, seed=seed,
                      classifiers=classifiers, shift_images=shift_images, exhaustive=exhaustive,
                      baselines=baselines, progress=progress)
    html = Path(out) / "probe.html"
    atomic.write_bytes(html, render_probe_page(out).encode())
    frame.attrs["html"] = str(html)
    return frame


def write_projection(coords, out: str | Path, *, color: str = PROJECT.color, placer=None) -> dict[str, Path]:
    """coords.parquet, projection.png, projection.json, placer.joblib (given the fitted `placer`)
    and the interactive page projection.html in `out` (`featx.maps.project.write_projection`)."""
    from featx.maps.project import color_column
    from featx.maps.project import write_projection as write_files
    from featx.pages.projection import render_projection_page

    files = write_files(coords, out, color=color, placer=placer)
    files["html"] = Path(out) / "projection.html"
    atomic.write_bytes(files["html"], render_projection_page(coords, color=color_column(color)).encode())
    return files


def fit_anomaly(store, out: str | Path | None = None, *, normal: Sequence[str] | None = ANOMALY_FIT.normal,
                layer: str | None = ANOMALY_FIT.layer, patch: bool = ANOMALY_FIT.patch, k: int = ANOMALY_FIT.k,
                metric: str = ANOMALY_FIT.metric, coreset: float = ANOMALY_FIT.coreset, fpr: float = ANOMALY_FIT.fpr,
                cv: int = ANOMALY_FIT.cv, masks: str | Path | None = ANOMALY_FIT.masks, seed: int = ANOMALY_FIT.seed,
                progress: bool = False):
    """Learn what normal images look like from a store and return the `AnomalyModel`; with `out`,
    write ANOMALY_DIR (anomaly.json, the memory, the held-out scores and anomaly.html).

    - normal: labels of the normal images (default: every row); a store with a train split learns
      from its train rows, and its val/test rows are held out.
    - layer, k, metric: the image-level model scores the mean distance to the k nearest normal
      vectors of a stored pooled layer.
    - patch, coreset: PatchCore on a store of maps (`featx extract --pool flatten` on one or two
      mid-depth layers), keeping a `coreset` fraction of the normal patches; gives heatmaps.
    - fpr, cv: the threshold lets through a fraction `fpr` of held-out normal images (the held-out
      split's, else out-of-fold over `cv` folds of the normal rows).
    - masks: a manifest with `path` and `mask` columns for the pixel AUROC of the heatmaps.
    Held-out rows with other labels than `normal` are the anomalies of the evaluation (AUROC and
    AUPRC with their spread, the confusion at the threshold)."""
    from featx.anomaly.fitting import fit_anomaly as fit

    if out is not None:  # before the work: featx only writes into its own anomaly folders
        from featx.store.artifacts import check_output

        check_output(out, "anomaly", inputs=[getattr(store, "path", store)])
    model = fit(store, normal=normal, layer=layer, patch=patch, k=k, metric=metric, coreset=coreset, fpr=fpr, cv=cv,
                masks=masks, seed=seed, progress=progress)
    if out is not None:
        from featx.pages.anomaly import render_anomaly_page

        model.save(out)
        html = Path(out) / "anomaly.html"
        atomic.write_bytes(html, render_anomaly_page(model).encode())
        model.html = str(html)
    return model
