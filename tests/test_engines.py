"""Engines stay optional: importing featx never imports Ray, and a missing Ray is a clear error."""

import subprocess
import sys

import pytest

from featx.errors import InputError
from tests.conftest import REPO, TINY


def test_importing_featx_does_not_import_ray():
    code = ("import sys, featx, featx.api, featx.cli, featx.extract, featx.retrieval.index, featx.extract.worker, "
            "featx.extract.engines\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_ray_names_the_extra(image_folder, tmp_path, monkeypatch):
    from featx.extract.job import extract

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees where it is not installed
    with pytest.raises(InputError, match=r"pip install 'featx\[ray\]'"):
        extract(image_folder, tmp_path / "s", engine="ray", **TINY)
    assert not (tmp_path / "s").exists()  # refused before the store was touched
