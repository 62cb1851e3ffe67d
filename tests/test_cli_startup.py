"""`featx --help` and `featx info` start fast because they import no heavy library: checked by
what lands in sys.modules (not by timing, which depends on the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, make_class_folder

HEAVY = ("torch", "torchvision", "timm", "sklearn", "faiss", "pandas", "umap", "openTSNE", "fastapi")
REPO = Path(__file__).resolve().parents[1]


def heavy_modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; the heavy top-level packages it imported."""
    probe = (f"import sys\n{code}\n"
             f"print('HEAVY=' + ','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    line = [line for line in done.stdout.splitlines() if line.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY="):].split(",") if m]


def test_importing_the_cli_pulls_in_no_heavy_library():
    assert heavy_modules_after("import featx.cli") == []


def test_help_pulls_in_no_heavy_library():
    code = ("import featx.cli\n"
            "try:\n    featx.cli.app(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass")
    assert heavy_modules_after(code) == []


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from featx.extract.job import extract
    from featx.learn.classify import train_shallow
    from featx.retrieval.index import build_index

    root = tmp_path_factory.mktemp("startup")
    images = make_class_folder(root / "images", per_class=4)
    (images / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a failed row in the summary
    store = extract(images, root / "store", **TINY)
    train_shallow(store, classifier="logreg", cv=2, learning_curve=False, out=root / "model")
    build_index(store, kind="flat").save(root / "index")
    return root


@pytest.mark.parametrize("kind", ["store", "model", "index"])
def test_info_pulls_in_no_heavy_library(artifacts, kind):
    code = ("import featx.cli\n"
            f"featx.cli.app(['info', {str(artifacts / kind)!r}, '--json'], standalone_mode=False)")
    assert heavy_modules_after(code) == []


def test_lean_store_summary_equals_the_feature_store_summary(artifacts):
    from featx.info import store_summary
    from featx.store import SCHEMA_VERSION as STORE_SCHEMA_VERSION
    from featx.store import FeatureStore
    from featx.store.artifacts import SCHEMA_VERSION

    assert SCHEMA_VERSION == STORE_SCHEMA_VERSION
    full = FeatureStore.open(artifacts / "store").summary()
    lean = store_summary(artifacts / "store")
    assert full["failed"] == 1 and full["errors"][0]["path"].endswith("broken.png")
    assert json.loads(json.dumps(lean)) == json.loads(json.dumps(full))


def test_info_refuses_a_changed_metadata_file(artifacts, tmp_path):
    import shutil

    from featx.errors import IntegrityError
    from featx.info import describe_artifact

    copy = tmp_path / "store"
    shutil.copytree(artifacts / "store", copy)
    meta = copy / "meta.parquet"
    meta.write_bytes(meta.read_bytes() + b"x")
    with pytest.raises(IntegrityError, match="meta.parquet.*sha256"):
        describe_artifact(copy)


def test_info_of_a_finished_store_reads_its_sealed_counts_without_pyarrow_or_numpy(artifacts):
    code = ("import featx.cli\n"
            f"featx.cli.app(['info', {str(artifacts / 'store')!r}, '--json'], standalone_mode=False)\n"
            "assert 'pyarrow' not in sys.modules and 'numpy' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('pyarrow', 'numpy'))[:3]")
    assert heavy_modules_after(code) == []


def _rewrite_manifest(store: Path, change) -> None:
    from featx.io.atomic import seal

    manifest = json.loads((store / "manifest.json").read_text())
    change(manifest)
    (store / "manifest.json").write_text(json.dumps(seal(manifest)))


def test_a_store_finalized_without_sealed_counts_is_counted_from_its_table(artifacts, tmp_path):
    import shutil

    from featx.info import store_summary
    from featx.store import FeatureStore

    copy = tmp_path / "store"
    shutil.copytree(artifacts / "store", copy)
    _rewrite_manifest(copy, lambda m: m["meta"].pop("summary"))  # as written by an older featx
    full = FeatureStore.open(copy).summary()
    assert json.loads(json.dumps(store_summary(copy))) == json.loads(json.dumps(full)) and full["failed"] == 1


def test_info_refuses_edited_counts(artifacts, tmp_path):
    import shutil

    from featx.errors import IntegrityError
    from featx.info import describe_artifact

    copy = tmp_path / "store"
    shutil.copytree(artifacts / "store", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["meta"]["summary"]["failed"] = 0  # hide the failed row without resealing
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="manifest.json"):
        describe_artifact(copy)


def test_extracting_again_seals_the_counts_into_an_older_store(artifacts, tmp_path):
    import shutil

    from featx.extract.job import extract
    from featx.store import FeatureStore

    copy = tmp_path / "store"
    shutil.copytree(artifacts / "store", copy)
    _rewrite_manifest(copy, lambda m: m["meta"].pop("summary"))
    extract(artifacts / "images", copy, **TINY)  # nothing changed: only the counts are added
    manifest = json.loads((copy / "manifest.json").read_text())
    full = FeatureStore.open(copy).summary()
    assert manifest["meta"]["summary"]["failed"] == 1 == full["failed"]
    assert manifest["meta"]["summary"]["per_class"] == full["per_class"]
