# Every target does its own set-up on a fresh machine: a .venv with the pinned
# CPU build of torch first (an unpinned torch would pull the CUDA build), then
# this package with its dev extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The sample store, then a dissection of a random-weight ResNet-18 (no download) that
# writes the HTML report; the last line is the report's path.
demo: $(STAMP)
	$(BIN)/broden build --out broden-sample.zarr
	$(BIN)/broden info broden-sample.zarr
	$(BIN)/broden validate broden-sample.zarr
	$(BIN)/broden dissect broden-sample.zarr --model dissect.zoo:resnet18 \
		--layer layer3 --layer layer4 --out demo-out
	@echo "report: $(CURDIR)/demo-out/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# mypy reads the installed layout (adapters/ as broden.adapters, ...) from a tree of links.
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(BIN)/ruff check broden adapters dissect tests bench
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/broden
	for f in broden/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/broden/; done
	for d in adapters dissect data_manifests; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/broden/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p broden

# Each script prints its tables next to a baseline measured in the same run and writes its
# section of bench/RESULTS.md (--quick: a smoke run; --results PATH: another file).
bench: $(STAMP)
	$(BIN)/python bench/build.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/codecs.py
	$(BIN)/python bench/dissect.py
	$(BIN)/python bench/explain.py

clean:
	rm -rf broden-sample.zarr broden-sample.zarr.build demo-out .pytest_cache build
