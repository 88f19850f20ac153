# Every target installs what it needs into .venv (a fresh machine needs only python3 >= 3.11).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# a prebuilt llama-cpp-python wheel, used as a cache when the folder is there
WHEELS := $(wildcard ../shared/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)
EXTRAS ?= dev,local,smollm,pdf,server,otel,celery,db,optimizers,similarity,plots
STAMP := $(VENV)/.installed-$(shell echo "$(EXTRAS)" | tr ',' '-')

.PHONY: install test lint demo bench clean

# the [similarity] extra needs torch: take the CPU build first (an unpinned torch is a multi-GB CUDA build); only
# then, and a make-level comment so that no other install (e.g. `make demo`'s EXTRAS=local) echoes it
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(findstring similarity,$(EXTRAS)),$(BIN)/python -m pip install -q $(PIP_FLAGS) "torch==2.13.0",)
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)
	@# the review-page test renders in a real headless browser; as root, install Debian's chromium when missing
	@# (never fails the install: without apt or network the test skips and says why)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		  >/dev/null 2>&1)) || echo "note: chromium not installed; the review-page browser test will skip"; } || true

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

demo:
	$(MAKE) install EXTRAS=local
	$(BIN)/dspydantic demo

bench: install
	$(BIN)/python bench/bench_runtime.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
