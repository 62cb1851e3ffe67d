"""The command line: a thin layer over the API, one module per command group. Each command calls one
API function; a FeatxError becomes its message on stderr and exit code 2. Importing this package
loads no torch, scikit-learn or FAISS: each command imports what it runs."""

# isort: off
# the groups register their commands in the order `featx --help` lists them: the data flow
from featx.cli import extract, learn, audit, anomaly, retrieval, maps, data, run, serve  # noqa: F401
from featx.cli.common import app
# isort: on

__all__ = ["app"]
