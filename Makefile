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

# pip -qq: errors only. With -q, setuptools' "Editable installation" banner and warnings about the
# machine's own pip configuration (find-links folders that do not exist) filled ~250 lines that a
# user can do nothing about.
$(STAMP): pyproject.toml
	@echo "Installing labkit and its pinned dependencies into $(VENV) (a few minutes the first time) ..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[book,test]'
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

# During the tests two pytest workers share the 2 cores, so each runs torch (and each notebook kernel
# it starts) with one intra-op thread, the thread count the reference bands were made with; with two
# threads each they oversubscribe the cores (the clean-clone CI took 31:28 that way). OpenMP threads
# also sleep instead of spinning when idle: spinning threads steal the shared cores (measured: a VAE
# epoch 3-4x slower). A single lab run (`make labs`, `labkit run`) is ~1.5x faster with the default
# policy and both threads, so only the tests set these.
test: export OMP_WAIT_POLICY ?= PASSIVE
test: export OMP_NUM_THREADS ?= 1
test: setup
	bash .ci/ensure-chromium.sh
	bash .ci/ensure-bubblewrap.sh
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --durations=25

clean:
	rm -rf _build .pytest_cache
