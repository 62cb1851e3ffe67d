from typer.testing import CliRunner

from featx.cli import app
from tests.conftest import make_class_folder

runner = CliRunner()
TINY_ARGS = ["--model", "resnet18", "--weights", "random", "--image-size", "64", "--workers", "0"]


def test_models_lists_offline_default():
    result = runner.invoke(app, ["models", "efficientnet*"])
    assert result.exit_code == 0 and "efficientnet_lite0" in result.output and "bundled" in result.output


def test_layers_marks_default():
    result = runner.invoke(app, ["layers", "resnet18"])
    assert result.exit_code == 0
    assert any("flatten" in line and "default" in line for line in result.output.splitlines())


def test_extract_info_verify(tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=3)
    (images / "cats" / "broken.jpg").write_text("nope")
    result = runner.invoke(app, ["extract", str(images), "-o", str(tmp_path / "s"), *TINY_ARGS])
    assert result.exit_code == 0, result.output
    assert "6 ok" in result.output and "1 failed" in result.output and "not_image" in result.output
    info = runner.invoke(app, ["info", str(tmp_path / "s")])
    assert info.exit_code == 0 and "cats 4" in info.output and "dogs 3" in info.output
    assert runner.invoke(app, ["verify", str(tmp_path / "s")]).exit_code == 0
    next((tmp_path / "s" / "features").rglob("*.npy")).write_bytes(b"corrupt")
    failed = runner.invoke(app, ["verify", str(tmp_path / "s")])
    assert failed.exit_code == 1 and "sha256 mismatch" in failed.output


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=1)
    result = runner.invoke(app, ["extract", str(images), "-o", str(tmp_path / "s"), *TINY_ARGS, "--layer", "layer9"])
    assert result.exit_code == 2 and "unknown layer 'layer9'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["extract", str(tmp_path / "nothing"), "-o", str(tmp_path / "s"), *TINY_ARGS])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_train_shallow_and_predict_commands(tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=6)
    assert runner.invoke(app, ["extract", str(images), "-o", str(tmp_path / "s"), *TINY_ARGS]).exit_code == 0
    result = runner.invoke(app, ["train-shallow", str(tmp_path / "s"), "-o", str(tmp_path / "m"), "--cv", "3",
                                 "--classifier", "logreg"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and (tmp_path / "m" / "report" / "report.json").is_file()
    predicted = runner.invoke(app, ["predict", str(tmp_path / "m"), str(images / "cats"), "--format", "csv"])
    assert predicted.exit_code == 0, predicted.output
    lines = predicted.output.strip().splitlines()
    assert lines[0].startswith("path,status,error,predicted,score") and len(lines) == 7
    bad = runner.invoke(app, ["train-shallow", str(tmp_path / "s"), "-o", str(tmp_path / "m2"), "--reduce", "pca:x"])
    assert bad.exit_code == 2 and "is not a number" in bad.output and not (tmp_path / "m2").exists()


def test_extract_resize_mode_from_the_command_line(tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=1)
    bad = runner.invoke(app, ["extract", str(images), "-o", str(tmp_path / "s"), *TINY_ARGS, "--resize", "stretch"],
                        env={"COLUMNS": "200"})
    # the choices come from featx.options.Resize (the CLI refuses before any work)
    assert bad.exit_code == 2 and "'stretch' is not one of 'crop', 'full', 'pad'" in bad.output, bad.output
    good = runner.invoke(app, ["extract", str(images), "-o", str(tmp_path / "s"), *TINY_ARGS, "--resize", "pad"])
    assert good.exit_code == 0, good.output
    import json

    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["config"]["preprocess"]["resize"] == "pad"
def test_cli_start_up_imports_no_torch_sklearn_or_faiss(tmp_path):
    """`featx --help` and `featx info` must start fast: the package __init__ is lazy and only the
    modules that use torch, scikit-learn or FAISS import them."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    import pytest

    from tests.conftest import make_feature_store

    store = make_feature_store(tmp_path / "s", np.zeros((3, 4)), ["a", "b", "a"])
    code = ("import sys, runpy\n"
            "sys.argv = sys.argv[1:]\n"
            "try:\n    runpy.run_module('featx.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'sklearn', 'faiss', 'torchvision', 'timm') if m in sys.modules)\n"
            "sys.stderr.write('HEAVY:' + ','.join(heavy))\n")
    for argv in (["featx", "--help"], ["featx", "info", str(store.path)]):
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1], timeout=120)
        assert "HEAVY:" in result.stderr and result.stderr.rsplit("HEAVY:", 1)[1] == "", (argv, result.stderr[-500:])
    import featx

    assert featx.FeatureStore.__name__ == "FeatureStore" and "FeatureStore" in dir(featx)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = featx.nope
def test_train_shallow_tunes_by_default_and_no_tune_keeps_c(tmp_path):
    import json

    from tests.conftest import blobs, make_feature_store

    X, y = blobs(n_per_class=12)
    make_feature_store(tmp_path / "s", X, y)
    tuned = runner.invoke(app, ["train-shallow", str(tmp_path / "s"), "-o", str(tmp_path / "t"), "--cv", "3"])
    assert tuned.exit_code == 0, tuned.output
    assert "chosen C" in tuned.output and " ± " in tuned.output
    assert (tmp_path / "t" / "report" / "validation_curve.png").is_file()
    fixed = runner.invoke(app, ["train-shallow", str(tmp_path / "s"), "-o", str(tmp_path / "f"), "--cv", "3",
                                "--no-tune"])
    assert fixed.exit_code == 0, fixed.output
    assert "(fixed: --no-tune)" in fixed.output and not (tmp_path / "f" / "report" / "validation_curve.png").exists()
    assert json.loads((tmp_path / "f" / "model.json").read_text())["options"]["tune"] is False
    both = runner.invoke(app, ["train-shallow", str(tmp_path / "s"), "-o", str(tmp_path / "x"), "--no-tune",
                               "--search"])
    assert both.exit_code == 2 and "--no-tune" in both.output
