"""`featx export MODEL -o model.onnx`: one graph from the preprocessed image to scores and label,
giving featx predict's labels and scores (within 1e-4) under onnxruntime; unsupported steps refused."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("skl2onnx", reason="skl2onnx is not installed")

import onnxruntime as ort  # noqa: E402

from featx.errors import InputError  # noqa: E402
from featx.extract.job import extract  # noqa: E402
from featx.io.decode import read_bytes  # noqa: E402
from featx.learn.classify import train_shallow  # noqa: E402
from featx.learn.onnx_export import export_onnx, read_onnx_metadata  # noqa: E402
from featx.learn.predict import predict  # noqa: E402
from featx.learn.representation import Representation  # noqa: E402
from featx.preprocess.config import Preprocess  # noqa: E402
from featx.preprocess.contract import network_input  # noqa: E402
from tests.conftest import HYMENOPTERA, TINY, make_class_folder, needs_hymenoptera  # noqa: E402


def onnx_predictions(onnx_file, paths) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of onnxruntime on featx's own preprocessed views of `paths`."""
    meta = read_onnx_metadata(onnx_file)
    pre = Preprocess.from_dict(meta["preprocess"])
    images = np.stack([network_input(read_bytes(p)[0], pre, 1)[0].numpy() for p in paths]).astype(np.float32)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    labels, scores = session.run(["label", "scores"], {"image": images})
    return labels, scores


def assert_parity(model_dir, onnx_file, images) -> None:
    expected = predict(model_dir, images)
    ok = expected[expected["status"] == "ok"]
    labels, scores = onnx_predictions(onnx_file, ok["path"].tolist())
    assert list(labels) == ok["predicted"].tolist()
    columns = [c for c in ok.columns if c.startswith("score:")]
    assert np.abs(scores - ok[columns].to_numpy()).max() <= 1e-4


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    images = make_class_folder(root / "images", classes=("ants", "bees", "wasps"), per_class=8)
    return extract(images, root / "store", layers=["flatten"], **TINY), images


@pytest.mark.parametrize("classifier,normalize,reduce", [
    ("linear-svm", "zscore", "none"), ("rbf-svm", "l2", "none"), ("logreg", "minmax", "pca:8"),
    ("knn", "none", "pca:6:whiten")])
def test_onnx_labels_and_scores_equal_featx_predict(tiny_store, tmp_path, classifier, normalize, reduce):
    store, images = tiny_store
    model_dir = tmp_path / "model"
    train_shallow(store, classifier=classifier, normalize=normalize, reduce=reduce, cv=2, tune=False,
                  learning_curve=False, out=model_dir)
    onnx_file = export_onnx(model_dir, tmp_path / "model.onnx")
    assert_parity(model_dir, onnx_file, images)
    meta = read_onnx_metadata(onnx_file)
    assert meta["classes"] == ["ants", "bees", "wasps"] and meta["layers"] == ["flatten"]
    assert meta["preprocess"]["crop_size"] == 64 and meta["input"]["layout"] == "NCHW"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [3, 64, 64]  # dynamic batch
    one = session.run(["scores"], {"image": np.zeros((1, 3, 64, 64), np.float32)})[0]
    assert one.shape == (1, 3)


def test_binary_margins_are_laid_out_as_featx_shows_them(tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=8)
    store = extract(images, tmp_path / "store", layers=["flatten"], **TINY)
    for classifier in ("linear-svm", "rbf-svm"):
        model_dir = tmp_path / classifier
        train_shallow(store, classifier=classifier, cv=2, tune=False, learning_curve=False, out=model_dir)
        assert_parity(model_dir, export_onnx(model_dir, tmp_path / f"{classifier}.onnx"), images)


def test_unsupported_models_are_refused_with_the_reason(tiny_store, tmp_path):
    store, _ = tiny_store
    train_shallow(store, classifier="tree", cv=2, tune=False, learning_curve=False, out=tmp_path / "tree")
    with pytest.raises(InputError, match="classifier DecisionTreeClassifier cannot be exported"):
        export_onnx(tmp_path / "tree", tmp_path / "tree.onnx")
    from featx.learn.reduce import ProductQuantizer

    model = train_shallow(store, classifier="logreg", cv=2, tune=False, learning_curve=False)
    model.pipeline.steps[1] = ("reduce", ProductQuantizer(m=8))  # pq:8 needs 256 rows to fit; refused before use
    with pytest.raises(InputError, match="product quantisation"):
        export_onnx(model, tmp_path / "pq.onnx")
    assert not (tmp_path / "tree.onnx").exists() and not (tmp_path / "pq.onnx").exists()


def test_cli_exports_a_model(tiny_store, tmp_path):
    store, _ = tiny_store
    from typer.testing import CliRunner

    from featx.cli import app

    train_shallow(store, classifier="logreg", cv=2, tune=False, learning_curve=False, out=tmp_path / "m")
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(tmp_path / "m"), "-o", str(tmp_path / "m.onnx")])
    assert done.exit_code == 0, done.output
    assert "3 classes" in done.output and (tmp_path / "m.onnx").is_file()
    done = runner.invoke(app, ["export", str(tmp_path / "m"), "-o", str(tmp_path / "m.parquet")])
    assert done.exit_code == 2 and "ending in .onnx" in done.output


@needs_hymenoptera()
@pytest.mark.slow  # real weights on 153 real photos: about a minute on 2 cores
def test_hymenoptera_val_onnx_equals_featx_predict(tmp_path):
    store = extract(HYMENOPTERA / "train", tmp_path / "store", workers=0, progress=False)
    for classifier in ("linear-svm", "logreg", "rbf-svm", "knn"):
        model_dir = tmp_path / classifier
        train_shallow(store, classifier=classifier, cv=3, learning_curve=False, out=model_dir)
        assert_parity(model_dir, export_onnx(model_dir, tmp_path / f"{classifier}.onnx"), HYMENOPTERA / "val")


def test_a_model_on_several_layers_side_by_side(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from featx.learn.model import ShallowModel

    images = make_class_folder(tmp_path / "images", classes=("ants", "bees", "wasps"), per_class=6)
    store = extract(images, tmp_path / "store", layers=["layer3", "flatten"], **TINY)
    layers = ["layer3", "flatten"]
    X = np.hstack([store.features(layer) for layer in layers])
    pipeline = Pipeline([("represent", Representation(tuple(layers), (256, 512))), ("normalize", StandardScaler()),
                         ("reduce", "passthrough"), ("classify", LogisticRegression(max_iter=2000))])
    pipeline.fit(X, store.labels)
    several = "layers" in ShallowModel.__dataclass_fields__
    model = ShallowModel(pipeline, list(pipeline.classes_), layers if several else "flatten", store.config,
                         {"classifier": "logreg"})
    model.layers = layers
    onnx_file = export_onnx(model, tmp_path / "m.onnx")
    assert read_onnx_metadata(onnx_file)["layers"] == layers
    labels, scores = onnx_predictions(onnx_file, list(store.paths))
    assert np.abs(scores - model.scores(X)).max() <= 1e-4
    assert list(labels) == [model.classes[i] for i in model.scores(X).argmax(1)]


def test_representation_of_pixels_and_layers_in_onnx():
    from featx.learn.onnx_export import _check_part, _representation_graph

    for step, width in ((Representation(("pixels", "flatten"), (3 * 32 * 32, 8), True), 3 * 32 * 32 + 8),
                        (Representation(("flatten",), (8,)), 8)):
        assert _check_part(_representation_graph(step, width), step, width) == (32 * 32 + 8 if step.grey else 8)
