# `make test` and `make demo` set up .venv themselves on a fresh clone.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test lint typecheck pytest demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

test: lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy cannot follow pyproject's package-dir mapping (exporters/ -> decision_trace.exporters),
# so give it the same mapping through a symlink tree under build/.
typecheck: $(STAMP)
	rm -rf build/mypy && mkdir -p build/mypy/decision_trace
	ln -s ../../../exporters build/mypy/decision_trace/exporters
	MYPYPATH=build/mypy $(VENV)/bin/mypy -p decision_trace -p decision_trace.exporters

pytest: $(STAMP)
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(PY) examples/ecommerce_demo.py

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
