# The two commands that do everything on a fresh clone: `make demo` and `make test`.
# Each sets up its own virtual environment first (CPU torch pinned for this machine).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: install demo demo-quick test bench lint clean docs-images

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[train,dev,ray,live]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xbarlab demo --out demo-out

demo-quick: $(STAMP)
	$(BIN)/xbarlab demo --quick --out demo-out

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# docs/img: the live view mid-run (headless chromium) and `xbarlab plot` figures
docs-images: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python tests/xbarlab/live_support.py docs/img
	$(BIN)/xbarlab demo --quick --out build/docs-demo
	MPLBACKEND=Agg $(BIN)/python tests/xbarlab/live_support.py docs/img --report build/docs-demo

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo-out build/docs-demo .pytest_cache .ruff_cache
