# The README's two commands: `make book` (set up, execute the labs, build the site)
# and `make test` (the whole test suite). Everything runs inside .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= standard
JOBS ?= 2

.PHONY: help setup labs site book test test-fast clean

help:
	@echo "make book   - set up, execute every lab (standard profile) and build the site into _build/html"
	@echo "make test   - run the whole test suite"
	@echo "make labs   - re-execute every lab in place (PROFILE=$(PROFILE))"
	@echo "make site   - build the site from the committed notebooks only"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP) book/_static/mathjax/tex-chtml.js

# MathJax from npm, so that the site renders math without a CDN (not committed).
book/_static/mathjax/tex-chtml.js:
	bash .ci/get-mathjax.sh book/_static/mathjax

labs: setup
	$(BIN)/labkit run --all --profile $(PROFILE) --in-place

site: setup
	$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going --quiet

book: labs site
	@echo "Site built: $(CURDIR)/_build/html/index.html"

# During the tests OpenMP threads sleep instead of spinning when idle: two pytest workers, each
# kernel with 2 threads, share the 2 cores, and spinning threads steal them (measured: a VAE epoch
# 3-4x slower). Results are identical. A single lab run (`make labs`, `labkit run`) is ~1.5x faster
# with the default policy, so only the tests set it.
test: export OMP_WAIT_POLICY ?= PASSIVE
# one intra-op thread per pytest-xdist worker: JOBS workers share the cores (two threads each on two cores
# oversubscribe them), and the reference bands were made with one thread
test: export OMP_NUM_THREADS ?= 1
test: setup
	bash .ci/ensure-chromium.sh
	bash .ci/ensure-bubblewrap.sh
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --durations=25

clean:
	rm -rf _build .pytest_cache
