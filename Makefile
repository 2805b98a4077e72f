# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test test-fast venv clean bench-demo bench-loop bench-overhead bench-memory bench-parity bench-gpu-smoke \
	bench-curves bench-replay bench-replay-speed bench-scale bench-lone-trial bench-pipeline

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch/torchvision first, unpinned: the machine's pip constraint decides the release.
	$(PY) -m pip install torch torchvision
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m search.run --space spaces/demo.yaml

# Two xdist workers, one file per worker at a time, the longest files first (tests/conftest.py).
# Every search starts a Ray of its own (search/driver.py), so the simulated clusters of
# tests/search/test_multinode.py run beside the other tests; then, by itself, the one test marked
# `alone` (Ray's autoscaling cluster stops every Ray on the machine).
XDIST := -n 2 --dist loadscope  # the scopes and their order: tests/conftest.py pytest_xdist_make_scheduler
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) -m "not alone" tests
	$(PY) -m pytest -q -p no:cacheprovider -m alone tests

# Everything but the end-to-end searches (tests marked slow).
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) -m "not slow and not alone" tests

# Benchmarks (bench/RESULTS.md): one command each from a fresh clone; JSON on stdout.
bench-demo: $(STAMP)
	$(PY) bench/demo.py
bench-loop: $(STAMP)
	$(PY) bench/loop_vs_raw.py --workers 0
bench-overhead: $(STAMP)
	$(PY) bench/search_overhead.py
bench-memory: $(STAMP)
	$(PY) bench/memory.py
# Replay (issue 16): record full curves once (about an hour on 2 cores), replay them (seconds).
bench-curves: $(STAMP)
	$(PY) bench/record_curves.py
bench-replay: $(STAMP)
	$(PY) -m search.replay bench/curves --out bench/out/replay --repeats 50 --jobs 2
bench-replay-speed: $(STAMP)
	$(PY) bench/replay_speed.py
bench-scale: $(STAMP)
	$(PY) bench/scale.py
bench-lone-trial: $(STAMP)
	$(PY) bench/lone_trial.py
# Stages in one queue (issue 17): a demo-sized search with confirmation, wall / ideal.
bench-pipeline: $(STAMP)
	$(PY) bench/pipeline.py
# The benchmarks' own extra (pycocotools), once.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -e '.[test,bench]'
	touch $(BENCH_STAMP)
bench-parity: $(BENCH_STAMP)
	$(PY) bench/parity.py
# bench/gpu.sh runs on the GPU machine (see its header); here, its CPU smoke test.
bench-gpu-smoke: $(STAMP)
	SMOKE=1 PYTHON=$(PY) OUT=bench/out/gpu-smoke bash bench/gpu.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
