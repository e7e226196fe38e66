# `make test` and `make demo` set up .venv themselves on a fresh clone.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test quick lint typecheck pytest pytest-quick demo screenshots bench clean

# The distribution was called decision-trace before; a venv holding both would list our
# console script and OTel entry point twice, so the old name is removed first.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip uninstall --quiet --yes decision-trace 2>/dev/null || true
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Everything: lint, types, and every test including the slow ones.
test: lint typecheck pytest

# The inner loop: lint, types, and the tests not marked slow (tests/conftest.py marks
# tests/reliability/, the benchmark smoke tests and the browser tests; the wheel build
# test marks itself).
quick: lint typecheck pytest-quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

# mypy cannot follow pyproject's package-dir mapping (exporters/ -> decision_trace.exporters),
# so give it the same mapping through a symlink tree under build/.
typecheck: $(STAMP)
	rm -rf build/mypy && mkdir -p build/mypy/decision_trace
	ln -s ../../../exporters build/mypy/decision_trace/exporters
	MYPYPATH=build/mypy $(VENV)/bin/mypy -p decision_trace -p decision_trace.exporters

# pytest-xdist workers: 2 cut the suite's wall time by a third on a loaded 2-core machine
# (see the commit that set it); PYTEST_WORKERS=0 runs everything in one process. With
# --dist loadgroup, tests marked xdist_group (the browser tests) share one worker.
PYTEST_WORKERS ?= 2

pytest: $(STAMP)
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup

pytest-quick: $(STAMP)
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow"

# The demo records into the default ledger ($$DECISION_TRACE_DB, else the XDG data folder);
# the last line is the command that opens that ledger in the web view.
demo: $(STAMP)
	$(PY) examples/ecommerce_demo.py
	@echo
	@echo "Open it in the web view:"
	@echo "  $(abspath $(VENV))/bin/decision-trace ui --db $$($(PY) -c 'import shlex; from decision_trace.storage import default_target; print(shlex.quote(default_target()))')"

# The pictures of docs/web.md, taken by the browser tests (tests/test_web_browser.py) from
# the demo's ledger with the system's Chromium (docs/contributing.md, "The browser tests").
screenshots: $(STAMP)
	DECISION_TRACE_DOCS_IMG=$(CURDIR)/docs/img $(VENV)/bin/pytest -n 0 -q \
		tests/test_web_browser.py -k docs_screenshots

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
