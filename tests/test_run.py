import json

import pytest

from featx.errors import InputError
from featx.recipes.recipe import load_recipe
from featx.recipes.run import run_recipe
from tests.conftest import DEMO, REPO, make_class_folder

TINY_EXTRACT = "  model: resnet18\n  weights: random\n  image_size: 64\n  workers: 0\n"


def write_recipe(folder, body: str):
    path = folder / "recipe.yaml"
    path.write_text(body)
    return path


@pytest.fixture
def recipe(tmp_path):
    make_class_folder(tmp_path / "images", per_class=8)
    return write_recipe(tmp_path, "name: t\noutput: out\nextract:\n  inputs: [images]\n" + TINY_EXTRACT +
                        "train_shallow:\n  cv: 3\nindex:\n  k: 3\nproject:\n  method: pca\nreport: {}\n")


def test_run_produces_everything_then_skips_unchanged_steps(recipe, tmp_path):
    messages = []
    produced = run_recipe(recipe, say=messages.append)
    for name in ("report", "search", "projection", "model", "index", "store"):
        assert produced[name].exists(), name
    page = produced["report"].read_text()
    for section in ("Dataset", "Extractor", "Classifier", "Retrieval", "Map of the features"):
        assert section in page
    # the run's report carries train-shallow's choice and its raw-pixel baseline sentence
    assert "Representation chosen by inner cross-validation" in page and "raw-pixel baseline" in page
    assert "data:image/png;base64" in page and "data:image/jpeg;base64" in page
    messages.clear()
    run_recipe(recipe, say=messages.append)
    assert all("skipped" in m for m in messages if m.startswith("[")) and len(messages) == 5
    messages.clear()
    run_recipe(recipe, ["train_shallow.classifier=logreg"], say=messages.append)
    ran = [m.split("]")[0][1:] for m in messages if m.endswith("running")]
    assert ran == ["train_shallow", "report"]
    model = json.loads((produced["model"] / "model.json").read_text())
    assert model["options"]["classifier"] == "logreg"


@pytest.mark.parametrize("body,match", [
    ("extract:\n  inputs: [images]\n  modle: resnet18\n", r"unknown key 'extract.modle'; allowed: inputs, model"),
    ("extract:\n  inputs: [images]\n  batch_size: big\n",
     r"key 'extract.batch_size': Input should be a valid integer \(got 'big'\)"),
    ("extract:\n  inputs: [nowhere]\n", r"path 'nowhere' does not exist"),
    ("extract:\n  inputs: [images]\ntrain:\n  cv: 3\n", r"unknown key 'train'; allowed: name, output, extract"),
    ("train_shallow: {}\n", r"needs an 'extract' step"),
    ("extract:\n  inputs: [images]\nproject:\n  dims: true\n",
     r"key 'project.dims': Input should be a valid integer \(got True\)"),
])
def test_bad_recipes_fail_before_any_work(tmp_path, body, match):
    (tmp_path / "images").mkdir()
    path = write_recipe(tmp_path, body)
    with pytest.raises(InputError, match=match) as info:
        run_recipe(path, say=lambda m: None)
    assert str(path) in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_set_override_types_and_errors(recipe):
    loaded = load_recipe(recipe, ["train_shallow.cv=4", "project.method=umap"])
    assert loaded.steps["train_shallow"]["cv"] == 4 and loaded.steps["project"]["method"] == "umap"
    with pytest.raises(InputError, match="is not KEY=VALUE"):
        load_recipe(recipe, ["train_shallow.cv"])


@pytest.mark.parametrize("name", ["demo.yaml", "ants-vs-bees.yaml", "small-cnn-svm.yaml"])
def test_shipped_recipes_validate(name):
    path = REPO / "pipelines" / name
    if name == "ants-vs-bees.yaml" and not (REPO.parent / "shared" / "datasets" / "hymenoptera").is_dir():
        pytest.skip("../shared/datasets/hymenoptera is absent")
    if name != "ants-vs-bees.yaml" and not DEMO.is_dir():
        pytest.skip("data/digits-demo is not built; `make test` builds it (data/make_demo_set.py)")
    recipe = load_recipe(path)
    assert recipe.steps["extract"]["inputs"] and "report" in recipe.steps


@pytest.mark.parametrize("body,match", [
    ("train_shallow:\n  classifier: svm\n",
     r"key 'train_shallow.classifier': Input should be 'linear-svm', .* \(got 'svm'\)"),
    ("index:\n  kind: hnws\n", r"key 'index.kind': Input should be 'auto', 'flat', 'hnsw', .* \(got 'hnws'\)"),
    ("index:\n  metric: bosine\n", r"key 'index.metric': Input should be 'cosine', .* \(got 'bosine'\)"),
    ("project:\n  method: umapp\n", r"key 'project.method': Input should be 'umap', .* \(got 'umapp'\)"),
    ("train_shallow:\n  reduce: pca64\n", r"key 'train_shallow.reduce': 'pca64' is not one of the forms none, pca:K"),
    ("train_shallow:\n  cv: 1\n", r"key 'train_shallow.cv': Input should be greater than or equal to 2 \(got 1\)"),
])
def test_recipe_values_are_checked_when_loading(tmp_path, body, match):
    (tmp_path / "images").mkdir()
    path = write_recipe(tmp_path, "extract:\n  inputs: [images]\n  pool: avg\n" + body)
    with pytest.raises(InputError, match=match):
        load_recipe(path)


@pytest.mark.parametrize("extract,match", [
    ("  pool: mean\n", r"key 'extract.pool': Input should be 'avg', 'max', .* \(got 'mean'\)"),
    ("  pool: flatten\n  tta: 2\n", r"--pool flatten cannot be combined with --tta 2"),
    ("  tta: 0\n", r"key 'extract.tta': Input should be greater than or equal to 1 \(got 0\)"),
    ("  model: resnet-18\n", r"unknown model 'resnet-18'"),
])
def test_recipe_extract_values_fail_before_extraction(tmp_path, extract, match, monkeypatch):
    import importlib

    extract_module = importlib.import_module("featx.extract.job")

    make_class_folder(tmp_path / "images", per_class=2)
    path = write_recipe(tmp_path, "output: out\nextract:\n  inputs: [images]\n" + extract)
    monkeypatch.setattr(extract_module, "extract", lambda *a, **k: pytest.fail("extraction started"))
    with pytest.raises(InputError, match=match):
        run_recipe(path, say=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_an_anomaly_step_writes_its_model_and_its_report_section(tmp_path):
    make_class_folder(tmp_path / "images", classes=("good", "bad"), per_class=8)
    path = write_recipe(tmp_path, "name: t\noutput: out\nextract:\n  inputs: [images]\n" + TINY_EXTRACT +
                        "anomaly:\n  normal: [good]\n  cv: 4\n  fpr: 0.25\nreport: {}\n")
    messages = []
    produced = run_recipe(path, say=messages.append)
    record = json.loads((produced["anomaly"].parent / "anomaly.json").read_text())
    assert record["normal"]["rows"] == 8 and record["evaluation"]["anomalous"] == 8
    assert any(m.startswith("[anomaly] threshold") for m in messages)
    page = produced["report"].read_text()
    assert "Anomaly detection" in page and "anomaly/anomaly.html" in page and "image AUROC" in page
    messages.clear()
    run_recipe(path, ["anomaly.fpr=0.1"], say=messages.append)
    assert [m.split("]")[0][1:] for m in messages if m.endswith("running")] == ["anomaly", "report"]
