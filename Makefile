# The two commands a newcomer runs: `make run` (set up + main job) and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
COLLECTION ?= fashion-mnist

.PHONY: run test setup demo demo-screenshot bench-hkm bench-hier clean

## Main job on the embedded default: ingest the Fashion-MNIST test split (10k images) with the offline
## MobileNetV2 into an embedded Qdrant (qdrant-edge), build the router, answer a query.
run: setup
	$(PY) -m plugin.cli ingest fashion-mnist:test --collection $(COLLECTION)
	$(PY) -m plugin.cli build --collection $(COLLECTION) -k 8 -l 3 --if-missing
	$(PY) -m plugin.cli search --collection $(COLLECTION) --sample fashion-mnist:train:0 -k 10 --mode relaxed

test: setup
	$(PY) -m pytest -q

setup:
	@./scripts/setup.sh

## The web demo on the collection `make run` builds (built first if missing): http://127.0.0.1:$(PORT)
PORT ?= 7860
demo: setup
	$(PY) -m plugin.cli demo --collection $(COLLECTION) --port $(PORT)

## Re-take docs/demo.png (the README's screenshot) from the demo in headless Chromium.
demo-screenshot: setup
	$(PY) -m demo.screenshot --collection $(COLLECTION) --out docs/demo.png

## Full benchmark (60k/10k Fashion-MNIST + ImageNet sample); embeddings are cached after the first run.
## The arguments are the ones that made the committed docs/results/hkm-*.{json,md,png,log}
## (tests/test_bench.py checks them against the records); keep them in step when re-running.
bench-hkm: setup
	set -o pipefail; $(PY) -m plugin.cli bench hkm --dataset fashion-mnist --tree 16x3,8x4,32x3 --max-leaf 150 --queries 1000 --curve 10000,20000,40000,60000,69000 --json docs/results/hkm-fashion-mnist.json --plot docs/results/hkm-fashion-mnist.png --md docs/results/hkm-fashion-mnist.md 2>&1 | tee docs/results/hkm-fashion-mnist.log
	set -o pipefail; $(PY) -m plugin.cli bench hkm --dataset imagenet-sample --tree 8x3,16x2 --queries 500 --json docs/results/hkm-imagenet-sample.json --plot docs/results/hkm-imagenet-sample.png --md docs/results/hkm-imagenet-sample.md 2>&1 | tee docs/results/hkm-imagenet-sample.log

## hierarchical-loss-inference-retrieval evaluation (docs/results/hier-*): photos (~1 min: flat vs hierarchical
## inference vs CRM vs our decision rule, 5-fold out-of-fold) and Fashion-MNIST heads/retrieval (~15 min once the
## 60k training vectors are cached). tests/test_bench_hier.py checks these arguments against the records.
bench-hier: setup
	set -o pipefail; $(PY) -m plugin.cli eval hier --images ../shared/data/imagenet-sample --json docs/results/hier-imagenet-sample.json --md docs/results/hier-imagenet-sample.md --plot docs/results/hier-imagenet-sample.png -q 2>&1 | tee docs/results/hier-imagenet-sample.log
	set -o pipefail; $(PY) -m plugin.cli eval hier --dataset fashion-mnist --json docs/results/hier-fashion-mnist.json --md docs/results/hier-fashion-mnist.md --plot docs/results/hier-fashion-mnist.png -q 2>&1 | tee docs/results/hier-fashion-mnist.log

## semantics-image-retrieval-hierarchical-db evaluation (docs/results/semantics-*): Fashion-MNIST (60k train collection,
## 2000 test queries, hand-made and MobileNetV2 features; ~1 h once the vectors are cached) and the ImageNet photos
## leave-one-out. tests/test_signatures_bench.py checks these arguments against the committed records.
.PHONY: bench-semantics
bench-semantics: setup
	set -o pipefail; nice -n 10 $(PY) -m plugin.cli eval semantics --dataset fashion-mnist --encoders handcrafted,mobilenet_v2 --queries 2000 --cap 512 --sweep-caps 128,256,1024 --seed 0 --json docs/results/semantics-fashion-mnist.json --md docs/results/semantics-fashion-mnist.md --plot docs/results/semantics-fashion-mnist.png -q 2>&1 | tee docs/results/semantics-fashion-mnist.log
	set -o pipefail; nice -n 10 $(PY) -m plugin.cli eval semantics --dataset imagenet --encoders handcrafted,mobilenet_v2 --cap 512 --seed 0 --json docs/results/semantics-imagenet-sample.json --md docs/results/semantics-imagenet-sample.md -q 2>&1 | tee docs/results/semantics-imagenet-sample.log

## The router on a sharded Qdrant, simulated (docs/SCALING.md): the 60k Fashion-MNIST collection's real routes
## (10k test queries) replayed on 4-64 shards per placement, and the latency / throughput model; a few minutes once
## the vectors are cached. tests/test_bench_scaling.py checks these arguments against the committed records.
.PHONY: bench-scaling
bench-scaling: setup
	nice -n 10 $(PY) -m plugin.cli bench scaling --dataset fashion-mnist --tree 16x3,8x4 --recall 0.95,0.99 --shards 4,8,16,32,64 --queries 10000 --seed 0 --json docs/results/scaling-fashion-mnist.json --md docs/results/scaling-fashion-mnist.md --plot docs/results/scaling-fashion-mnist.png

## Where one routed query's time goes (routing, our glue, the engine's own work, the fixed cost of an engine
## call, the engine's cost per point and per leaf) against faiss IVF-Flat and the engine's HNSW at recall@10
## >= 0.95 (bench hkm's fastest tree there, 16x3) and >= 0.99 (32x3, faiss nlist 512); ~5 min each once the
## vectors are cached.
.PHONY: bench-anatomy
bench-anatomy: setup
	set -o pipefail; $(PY) -m plugin.bench.anatomy --recall 0.95 --json docs/results/anatomy-fashion-mnist.json --md docs/results/anatomy-fashion-mnist.md 2>&1 | tee docs/results/anatomy-fashion-mnist.log
	set -o pipefail; $(PY) -m plugin.bench.anatomy --recall 0.99 --tree 32x3 --nprobes 48,56,64,72 --s2s 0.06,0.07 --efs 40,48,56,64,80 --nlist 512 --fprobes 20,22,24,26,28,32 --json docs/results/anatomy-099-fashion-mnist.json --md docs/results/anatomy-099-fashion-mnist.md 2>&1 | tee docs/results/anatomy-099-fashion-mnist.log

## Spilling (SOAR) measured on the router's own trees before it is built: points scored vs recall@10 when
## boundary points are filed under a second leaf too (plugin/bench/spill.py); ~12 min once the vectors are cached.
.PHONY: bench-spill
bench-spill: setup
	set -o pipefail; $(PY) -m plugin.bench.spill --json docs/results/spill-fashion-mnist.json --md docs/results/spill-fashion-mnist.md 2>&1 | tee docs/results/spill-fashion-mnist.log

## The recall-target search mode (plugin/bench/target.py): held-out recall against each target and the points
## it scores against relaxed search of the same recall, calibrated on held-out images and on collection points.
.PHONY: bench-target
bench-target: setup
	$(PY) -m plugin.bench.target --json docs/results/target-fashion-mnist.json

clean:
	rm -rf .venv .pytest_cache
