# Two set-up commands: `make demo` and `make test`. Both build .venv once (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
DEMO_DATA := data/digits-demo/.complete
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: demo test test-slow test-all lint bench bench-fuzz bench-projection clean browser fashion-mnist

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the Ray engine's tests need the optional extra; `make demo` does not
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(RAY_STAMP)

# The 1,000 demo images are built from the handwritten digits that ship inside scikit-learn (no root,
# no network, any OS); they are not committed.
$(DEMO_DATA): data/make_demo_set.py | $(STAMP)
	$(BIN)/python data/make_demo_set.py

# Only benchmarks that need all 70,000 Fashion-MNIST images install Debian's package (as root, or
# through `sudo -n`).
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

# The slow domain-shift test uses 48 Fashion-MNIST images when the package can be had; else it skips.
fashion-mnist:
	@test -f $(FASHION_MNIST) || { command -v apt-get >/dev/null && $(SUDO) apt-get update -qq && \
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist; } || \
	echo "dataset-fashion-mnist not installed: the domain-shift test will skip"

demo: $(STAMP) $(DEMO_DATA)
	$(BIN)/featx run pipelines/demo.yaml

test: $(RAY_STAMP) $(DEMO_DATA) browser
	$(BIN)/python -m pytest -q

# ruff (lint rules in pyproject.toml) and import-linter (the layers and cycles contracts)
lint: $(STAMP)
	$(BIN)/ruff check featx tests benchmarks data
	$(BIN)/lint-imports

test-slow: $(RAY_STAMP) $(DEMO_DATA) fashion-mnist
	$(BIN)/python -m pytest -q -m slow

test-all: $(RAY_STAMP) $(DEMO_DATA) browser fashion-mnist
	$(BIN)/python -m pytest -q -m ''

# The serve page test drives Debian's headless chromium; without apt-get it skips with a reason.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ command -v apt-get >/dev/null && $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; } || \
	echo "chromium/chromium-driver not installed: the browser test will skip"

bench: $(STAMP)
	$(BIN)/python benchmarks/extract_throughput.py

bench-fuzz: $(STAMP)
	$(BIN)/python benchmarks/fuzz_decode.py

bench-projection: $(STAMP) $(FASHION_MNIST)
	$(BIN)/python benchmarks/projection.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info data/digits-demo
