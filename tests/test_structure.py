"""The structure the code promises its readers: imports point down the data flow (import-linter's
contracts in pyproject.toml), no module takes another module's private names, importing featx changes
nothing in the process, option defaults are written once (featx/options.py), and functions and
modules stay small enough to hold in mind."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "featx"
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_import_contracts_hold():
    """Computation never imports pages, cli or serve; io and preprocess never import backbones,
    learn or retrieval; the packages form layers along the data flow; no cycles."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([lint, str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_no_module_imports_another_modules_private_names():
    """featx's modules and the benchmarks (tests may reach into privates to test them)."""
    offenders = []
    for path in MODULES + sorted((REPO / "benchmarks").glob("*.py")):
        here = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("featx"):
                if node.module == here:
                    continue
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} takes {private} from {node.module}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if any(part.startswith("_") and not part.startswith("__") for part in alias.name.split(".")):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports {alias.name}")
    assert offenders == []


def test_importing_any_featx_module_changes_no_environment_variable():
    # the libraries featx uses are imported first: some set variables of their own when they load
    # (torch's TORCHINDUCTOR_CACHE_DIR, KMP_* by an OpenMP user); featx's own modules must set none
    libraries = ["torch", "torchvision", "timm", "sklearn", "faiss", "cleanlab", "umap", "openTSNE", "pandas",
                 "pyarrow", "PIL", "matplotlib", "fastapi", "skops", "imblearn", "torch._inductor.config"]
    code = ("import importlib, json, os, pkgutil, featx\n"
            f"for library in {libraries!r}:\n"
            "    importlib.import_module(library)\n"
            "before = dict(os.environ)\n"
            "names = [m.name for m in pkgutil.walk_packages(featx.__path__, 'featx.')\n"
            "         if not m.name.endswith('__main__')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "after = dict(os.environ)\n"
            "changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))\n"
            "print(json.dumps({'modules': len(names), 'changed': changed}))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "MALLOC_ARENA_MAX")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["modules"] > 60 and result["changed"] == []


def _literal_defaults() -> list[str]:
    """Parameters named like an option whose literal default equals that option's default."""
    from pydantic import BaseModel

    import featx.options as options

    defaults: dict[str, set] = {}
    for value in vars(options).values():
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == options.__name__:
            for name, field in value.model_fields.items():
                default = field.get_default(call_default_factory=True)
                if default is not None and not isinstance(default, (list, dict)):
                    defaults.setdefault(name, set()).add(repr(default))
    found = []
    for path in MODULES:
        if path.name == "options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for arg, default in pairs:
                if (isinstance(default, ast.Constant) and default.value is not None
                        and repr(default.value) in defaults.get(arg.arg, ())):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}({arg.arg}={default.value!r})")
    return found


def test_option_defaults_are_written_only_in_options_py():
    """`def extract(..., batch_size: int = 32)` would be a second definition of the default: the
    functions say `batch_size: int = EXTRACT.batch_size` (featx.options)."""
    assert _literal_defaults() == []


def _function_lengths() -> list[tuple[int, str]]:
    lengths = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append((node.end_lineno - node.lineno + 1,
                                f"{path.relative_to(REPO)}:{node.lineno} {node.name}"))
    return sorted(lengths, reverse=True)


def test_functions_and_modules_stay_small():
    lengths = _function_lengths()
    assert [name for n, name in lengths if n > 80] == []
    assert len([name for n, name in lengths if n > 60]) <= 3, [(n, name) for n, name in lengths if n > 60]
    long_modules = [(len(p.read_text().splitlines()), str(p.relative_to(REPO))) for p in MODULES]
    assert [m for m in long_modules if m[0] > 500] == []


def test_the_version_is_written_once_per_file_and_agrees():
    import tomllib

    from featx import __version__

    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == __version__
