# Two set-up commands: `make demo` and `make test`. Both build .venv once (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := data/fashion-mnist-demo/.complete
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-slow test-all bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

# The demo images are built from Debian's dataset-fashion-mnist (MIT), not committed.
$(DEMO_DATA): data/make_demo_set.py | $(STAMP)
	test -f $(FASHION_MNIST) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }
	$(BIN)/python data/make_demo_set.py

demo: $(STAMP) $(DEMO_DATA)
	$(BIN)/featx run pipelines/demo.yaml

test: $(STAMP) $(DEMO_DATA)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) $(DEMO_DATA)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP) $(DEMO_DATA)
	$(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/extract_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info data/fashion-mnist-demo
