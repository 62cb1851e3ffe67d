"""`featx export MODEL -o model.onnx`: one ONNX graph from a preprocessed image to a label.

The graph: `image` (float32, N × 3 × crop × crop, RGB, values 0–255, any batch size) → the
weights' mean/std → the backbone's layer(s) and pooling (torch.onnx) → the model's scaling and
reduction steps → the classifier (skl2onnx) → `scores` (N × classes: probabilities, or decision
values where featx's predict shows them) and `label` (the class with the highest score, as featx
predicts it; `label_index` its position in the class list). The preprocessing that makes `image`
from a photo (resize mode and sizes, interpolation) is in the model's metadata (key `featx`).

Every export is checked before it is written: the classifier part run by onnxruntime must give
featx's scores on probe inputs, else the export is refused. Steps without a converter (product
quantisation, TTA views, trees) are refused with the reason."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from featx.errors import InputError
from featx.io import atomic
from featx.learn.model import ShallowModel
from featx.preprocess.views import PIXEL_SIDE, PIXELS
from featx.store import require_same_config

log = logging.getLogger(__name__)

OPSET = 17
ML_OPSET = 3
INPUT = "image"
FEATURES = "features"
SCORE_TOLERANCE = 1e-4  # the export-time check of the classifier part, and the parity promised
SUPPORTED_STEPS = ("Representation", "StandardScaler", "Normalizer", "MinMaxScaler", "PCA", "IncrementalPCA")
# the raw-pixel pseudo-layer a store may hold beside the network's layers (featx.preprocess.views):
SUPPORTED_CLASSIFIERS = ("LinearSVC", "SVC", "LogisticRegression", "KNeighborsClassifier")


def export_onnx(model: ShallowModel | str | Path, out: str | Path) -> Path:
    """Write `model` (a folder made by `featx train-shallow`, or a loaded model) as one ONNX file."""
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the export is checked with it)
        import skl2onnx  # noqa: F401
    except ImportError as exc:
        raise InputError(f"exporting to ONNX needs onnx, onnxruntime and skl2onnx ({exc.name} is missing); "
                         "install them with `pip install 'featx[onnx]'`") from None

    model = model if isinstance(model, ShallowModel) else ShallowModel.load(model)
    steps, classifier = _exportable_steps(model)
    layers = list(model.layers)
    network, extractor = _network_graph(model, layers)
    dim = sum(int(extractor.pooled_dims[layer]) for layer in layers)
    head = _head_graph(model, steps, classifier, dim)
    network.ir_version = head.ir_version = max(network.ir_version, head.ir_version)
    merged = onnx.compose.merge_models(network, head, io_map=[(FEATURES, FEATURES)],
                                       outputs=["label", "label_index", "scores"], name="featx")
    _set_metadata(merged, model, layers, extractor)
    onnx.checker.check_model(merged, full_check=True)
    out = Path(out)
    atomic.write_bytes(out, merged.SerializeToString())
    log.info("wrote %s (%d classes, layers %s)", out, len(model.classes), ", ".join(layers))
    return out


def read_onnx_metadata(path: str | Path) -> dict:
    """The `featx` metadata of an exported model: classes, layers, preprocessing, extractor."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props["featx"])


def _exportable_steps(model: ShallowModel) -> tuple[list, object]:
    """The fitted transformers and the classifier, or InputError naming what has no converter."""
    tta = int(model.extractor_config.get("tta", 1))
    if tta != 1:
        raise InputError(f"this model was trained on features averaged over {tta} views (--tta {tta}); the ONNX "
                         "graph takes one view per image. Train on a store extracted with --tta 1 to export it")
    if not hasattr(model.pipeline, "steps"):
        raise InputError(f"this model's {type(model.pipeline).__name__} is not a pipeline of steps featx can export; "
                         "re-train it with `featx train-shallow`")
    steps = [(name, step) for name, step in model.pipeline.steps if not isinstance(step, str) and name != "smote"]
    *transformers, (_, classifier) = steps
    for name, step in transformers:
        kind = type(step).__name__
        if kind not in SUPPORTED_STEPS:
            why = (" (product quantisation's codebook lookup has no ONNX converter)"
                   if kind == "ProductQuantizer" else "")
            raise InputError(f"step '{name}' ({kind}) cannot be exported to ONNX{why}; supported steps: "
                             f"{', '.join(SUPPORTED_STEPS)}. Train with another --reduce / --normalize to export")
    kind = type(classifier).__name__
    if kind not in SUPPORTED_CLASSIFIERS:
        raise InputError(f"classifier {kind} cannot be exported to ONNX: featx exports and checks "
                         "linear-svm, rbf-svm, logreg and knn (their converters give featx's scores); "
                         "train with one of them to export")
    if kind == "SVC" and getattr(classifier, "kernel", "rbf") not in ("rbf", "linear"):
        raise InputError(f"an SVC with kernel '{classifier.kernel}' cannot be exported; use rbf-svm or linear-svm")
    return [step for _, step in transformers], classifier


# --- the network: image -> features ------------------------------------------------------------

def _network_graph(model: ShallowModel, layers: list[str]):
    import onnx
    import torch

    from featx.backbones.pooling import pool
    from featx.extract.extractor import extractor_from_config
    from featx.preprocess.views import normalise, pixel_vectors

    extractor = extractor_from_config(dict(model.extractor_config, layers=layers), device="cpu", workers=0)
    require_same_config(model.extractor_config, extractor.config, "this model")
    network_layers = [layer for layer in layers if layer != PIXELS]

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tap = extractor.tap

        def forward(self, image):
            outputs = self.tap(normalise(image, extractor.backbone.preprocess)) if network_layers else {}
            vectors = []
            for layer in layers:
                if layer == PIXELS:
                    vectors.append(pixel_vectors(image))
                else:
                    vectors.append(pool(outputs[layer], extractor.pool_name, extractor.layer_formats[layer]).float())
            return torch.cat(vectors, dim=1)

    size = extractor.backbone.preprocess.crop_size
    example = torch.zeros(2, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Network().eval(), (example,), buffer, input_names=[INPUT], output_names=[FEATURES],
                          dynamic_axes={INPUT: {0: "batch"}, FEATURES: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    return onnx.load_from_string(buffer.getvalue()), extractor


# --- the head: features -> scores and label ----------------------------------------------------

def _head_graph(model: ShallowModel, transformers: list, classifier, dim: int):
    """Scaling / reduction steps and the classifier as one graph, with scores laid out as featx's
    predict gives them, checked against scikit-learn on probe inputs."""
    import onnx
    from onnx import TensorProto, helper

    parts, width = [], dim
    for step in transformers:
        part = _representation_graph(step, width) if type(step).__name__ == "Representation" else _convert(step, width)
        width = _check_part(part, step, width)
        parts.append(part)
    clf = onnx.compose.add_prefix(_convert(classifier, width), "featx_clf_", rename_inputs=False)
    raw_name = _scores_output(clf)
    layout = _score_layout(model, classifier, clf, raw_name, width)
    graph = clf
    for number, part in reversed(list(enumerate(parts))):  # each step's output feeds the next step's input
        prefix = f"featx_step{number}_"
        part = onnx.compose.add_prefix(part, prefix, rename_inputs=False)
        part.ir_version = graph.ir_version = max(part.ir_version, graph.ir_version)
        graph = onnx.compose.merge_models(part, graph, io_map=[(part.graph.output[0].name, FEATURES)],
                                          outputs=[o.name for o in graph.graph.output])
    n = len(model.classes)
    nodes, extra = list(graph.graph.node), []
    if layout == "margin":  # one decision value per row: featx shows it as (-v, v)
        nodes += [helper.make_node("Neg", [raw_name], ["featx_negative"]),
                  helper.make_node("Concat", ["featx_negative", raw_name], ["scores"], axis=1)]
    elif layout == "swapped":
        nodes += [helper.make_node("Gather", [raw_name, "featx_swap"], ["scores"], axis=1)]
        extra.append(helper.make_tensor("featx_swap", TensorProto.INT64, [2], [1, 0]))
    else:
        nodes += [helper.make_node("Identity", [raw_name], ["scores"])]
    nodes += [helper.make_node("ArgMax", ["scores"], ["featx_best"], axis=1, keepdims=0),
              helper.make_node("Identity", ["featx_best"], ["label_index"]),
              helper.make_node("Gather", ["featx_classes", "featx_best"], ["label"], axis=0)]
    initializers = list(graph.graph.initializer) + [
        helper.make_tensor("featx_classes", TensorProto.STRING, [n], [c.encode() for c in model.classes]), *extra]
    outputs = [helper.make_tensor_value_info("label", TensorProto.STRING, [None]),
               helper.make_tensor_value_info("label_index", TensorProto.INT64, [None]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, n])]
    head = helper.make_graph(nodes, "featx_head", list(graph.graph.input), outputs, initializers)
    result = helper.make_model(head, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    result.ir_version = graph.ir_version
    return result


def _check_part(part, step, width: int) -> int:
    """The part's output width, once onnxruntime gave the step's own transform on probe rows."""
    import onnxruntime as ort

    probe = np.random.default_rng(0).normal(size=(16, width)).astype(np.float32)
    session = ort.InferenceSession(part.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {FEATURES: probe})[0]
    expected = np.asarray(step.transform(probe), dtype=np.float32)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=SCORE_TOLERANCE, atol=SCORE_TOLERANCE):
        raise InputError(f"the ONNX form of step {type(step).__name__} does not reproduce its output on probe "
                         "inputs; this model cannot be exported faithfully")
    return int(expected.shape[1])


def _representation_graph(step, width: int):
    """featx's Representation step (the stored layers side by side → the classifier's input): one
    block as it is, or each block L2-normalised and concatenated; a grey pixel block keeps one
    channel. Built from ONNX operators (no converter knows the step)."""
    from onnx import TensorProto, helper

    dims, layers = [int(d) for d in step.dims], list(step.layers)
    nodes, blocks = [], []
    # the floor of a block's norm, needed only where blocks are normalised (an unused initializer is warned about)
    initializers = [helper.make_tensor("rep_eps", TensorProto.FLOAT, [], [1e-12])] if len(dims) > 1 else []
    starts = np.concatenate([[0], np.cumsum(dims)[:-1]]).astype(int)
    for i, (layer, start, size) in enumerate(zip(layers, starts, dims)):
        keep = PIXEL_SIDE * PIXEL_SIDE if layer == PIXELS and getattr(step, "grey", False) else size
        initializers += [helper.make_tensor(f"rep_start{i}", TensorProto.INT64, [1], [int(start)]),
                         helper.make_tensor(f"rep_stop{i}", TensorProto.INT64, [1], [int(start + keep)]),
                         helper.make_tensor(f"rep_axis{i}", TensorProto.INT64, [1], [1])]
        nodes.append(helper.make_node("Slice", [FEATURES, f"rep_start{i}", f"rep_stop{i}", f"rep_axis{i}"],
                                      [f"rep_block{i}"]))
        if len(dims) > 1:
            nodes += [helper.make_node("ReduceL2", [f"rep_block{i}"], [f"rep_norm{i}"], axes=[1], keepdims=1),
                      helper.make_node("Max", [f"rep_norm{i}", "rep_eps"], [f"rep_safe{i}"]),
                      helper.make_node("Div", [f"rep_block{i}", f"rep_safe{i}"], [f"rep_unit{i}"])]
            blocks.append(f"rep_unit{i}")
        else:
            blocks.append(f"rep_block{i}")
    nodes.append(helper.make_node("Concat", blocks, ["variable"], axis=1))
    graph = helper.make_graph(nodes, "representation",
                              [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, None])],
                              initializers)
    part = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    part.ir_version = 8
    return part


def _convert(estimator, width: int):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = None
    if hasattr(estimator, "classes_") and type(estimator).__name__ != "LinearSVC":
        options = {id(estimator): {"zipmap": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_sklearn(estimator, initial_types=[(FEATURES, FloatTensorType([None, width]))],
                                    target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET}, options=options)
    return _with_opsets(converted)


def _with_opsets(part):
    """One opset per domain in every part (the converters pick the lowest that suffices; graphs
    merge only with equal ones): the default domain converted up to OPSET, ai.onnx.ml at ML_OPSET."""
    import onnx.version_converter
    from onnx import helper

    default = max((o.version for o in part.opset_import if o.domain in ("", "ai.onnx")), default=OPSET)
    if default < OPSET:
        part = onnx.version_converter.convert_version(part, OPSET)
    del part.opset_import[:]
    part.opset_import.extend([helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    return part


def _scores_output(clf) -> str:
    names = [o.name for o in clf.graph.output]
    return next(name for name in names if not name.endswith("label"))


def _score_layout(model: ShallowModel, classifier, clf, raw_name: str, width: int) -> str:
    """How the converted classifier's scores map onto featx's: 'same', 'margin' (one column, the
    positive class's), or 'swapped' (two columns in the other order). Probe inputs: the support
    vectors of an SVC, else rows around the fitted statistics; InputError when none fits."""
    import onnxruntime as ort

    probe = _probe_rows(classifier, width)
    session = ort.InferenceSession(clf.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = session.run([raw_name], {FEATURES: probe})[0]
    expected = _featx_scores(model, classifier, probe)
    candidates = {"same": raw}
    if expected.shape[1] == 2 and raw.shape[1] == 1:
        candidates = {"margin": np.concatenate([-raw, raw], axis=1)}
    elif expected.shape[1] == 2 and raw.shape[1] == 2:
        candidates["swapped"] = raw[:, ::-1]
    for layout, values in candidates.items():
        if values.shape == expected.shape and np.allclose(values, expected, rtol=SCORE_TOLERANCE,
                                                          atol=SCORE_TOLERANCE):
            return layout
    raise InputError(f"the ONNX converter of {type(classifier).__name__} does not reproduce featx's scores on probe "
                     "inputs; this model cannot be exported faithfully")


def _probe_rows(classifier, width: int) -> np.ndarray:
    if hasattr(classifier, "support_vectors_") and len(classifier.support_vectors_):
        return np.asarray(classifier.support_vectors_[:64], dtype=np.float32)
    if hasattr(classifier, "_fit_X"):
        return np.asarray(classifier._fit_X[:64], dtype=np.float32)
    return np.random.default_rng(0).normal(size=(64, width)).astype(np.float32)


def _featx_scores(model: ShallowModel, classifier, X: np.ndarray) -> np.ndarray:
    """featx's scores of the classifier alone (ShallowModel.scores, without the earlier steps)."""
    if hasattr(classifier, "predict_proba") and model.has_proba:
        return classifier.predict_proba(X)
    values = classifier.decision_function(X)
    return np.stack([-values, values], axis=1) if values.ndim == 1 else values


def _set_metadata(merged, model: ShallowModel, layers: list[str], extractor) -> None:
    pre = extractor.backbone.preprocess.to_dict()
    description = {"classes": list(model.classes), "layers": layers, "input": {
        "name": INPUT, "dtype": "float32", "layout": "NCHW", "channels": "RGB", "range": "0-255 (uint8 values)",
        "size": [pre["crop_size"], pre["crop_size"]]},
        "preprocess": {k: pre[k] for k in ("resize", "resize_size", "crop_size", "interpolation", "mean", "std")},
        "normalisation": "in the graph: (image - 255 * mean) / (255 * std)",
        "outputs": {"scores": "probabilities" if model.has_proba else "decision values", "label": "class name",
                    "label_index": "position in classes"},
        "classifier": model.options.get("classifier"), "extractor": model.extractor_config,
        "source_store_fingerprint": model.options.get("store_fingerprint")}
    merged.doc_string = "featx: image -> " + " + ".join(layers) + " -> " + str(model.options.get("classifier"))
    for key, value in (("featx", json.dumps(description, default=str)),
                       ("preprocess", json.dumps(description["preprocess"])),
                       ("classes", json.dumps(list(model.classes)))):
        entry = merged.metadata_props.add()
        entry.key, entry.value = key, value
