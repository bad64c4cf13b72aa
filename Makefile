# The two commands a newcomer runs: `make run` (set up + main job) and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
COLLECTION ?= fashion-mnist

.PHONY: setup run test bench-hkm clean

setup:
	@./scripts/setup.sh

## Main job on the embedded default: ingest the Fashion-MNIST test split (10k images) with the offline
## MobileNetV2 into an embedded Qdrant (qdrant-edge), build the router, answer a query.
run: setup
	$(PY) -m plugin.cli ingest fashion-mnist:test --collection $(COLLECTION)
	$(PY) -m plugin.cli search --collection $(COLLECTION) --sample fashion-mnist:train:0 -k 10

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf .venv .pytest_cache
