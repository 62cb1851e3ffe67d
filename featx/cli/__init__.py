"""The command line: a thin layer over the API, one module per command group. Each command calls one
API function; a FeatxError becomes its message on stderr and exit code 2. Importing this package
loads no torch, scikit-learn or FAISS: each command imports what it runs."""

from featx.cli import audit, extract, learn, maps, retrieval, run, serve  # noqa: F401 (they register the commands)
from featx.cli.common import app

__all__ = ["app"]
