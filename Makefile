# The two front doors: `make run` (a local 3-node cluster) and `make test` (the whole suite).
# Each creates .venv and installs the pinned versions in constraints.txt first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test fault-deps metrics-deps lint typecheck check bench clean-data clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --upgrade pip==23.2.1 setuptools wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dynakv dev --data-dir ./data/dev

# The real-fault tests (tests/faults) need iptables and xfsprogs. As root, install
# them if missing (CI runs as root); without root, do nothing: those tests skip,
# saying why.
FAULT_PACKAGES := iproute2 iptables xfsprogs
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300
fault-deps:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "fault-deps: not root: the real-fault tests will skip"; \
	elif command -v ip >/dev/null && command -v iptables >/dev/null \
		&& command -v xfs_io >/dev/null && command -v mkfs.xfs >/dev/null; then \
		:; \
	else \
		$(APT_GET) install -y $(FAULT_PACKAGES) \
		|| { $(APT_GET) update && $(APT_GET) install -y $(FAULT_PACKAGES); }; \
	fi

# tests/integration/test_prometheus.py runs Debian's Prometheus against a real
# cluster. As root, install it if missing (it is not started as a service
# where no init runs, as in CI containers); without root, the test skips.
METRICS_PACKAGES := prometheus
metrics-deps:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "metrics-deps: not root: the Prometheus test will skip"; \
	elif command -v prometheus >/dev/null; then \
		:; \
	else \
		$(APT_GET) install -y --no-install-recommends $(METRICS_PACKAGES) \
		|| { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends $(METRICS_PACKAGES); }; \
	fi

test: $(STAMP) fault-deps metrics-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# make bench BENCH_ARGS="--suite strong --runs 3" (see bench/README.md)
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean-data:
	rm -rf ./data/dev

clean:
	rm -rf $(VENV) ./data
