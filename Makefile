# Every target bootstraps its own virtualenv in .venv and installs cxlsim into it (which compiles
# the C core with cffi), so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-test
TRACE  ?= traces/synth_medium.jsonl

.PHONY: demo test bench clean

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/*.py)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,plot]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/cxlsim mlc --idle --topology kv-tiered
	@echo
	$(VENV)/bin/cxlsim cachesim $(TRACE) --policy lru --capacity-blocks 500,2000,8000 --tiers dram:8000,cxl:32000
	@echo
	@echo "Serving replay: Llama-3-70B on 4 x H100 (HBM holds ~1000 KV blocks), 64 GiB of DRAM for KV,"
	@echo "a 1 TiB CXL pool; the trace's arrivals slowed 4x so that one host keeps up:"
	$(VENV)/bin/cxlsim compare $(TRACE) --model llama-3-70b --accel h100-sxm --tp 4 --dram-gib 64 \
		--time-scale 4 --no-progress --policies hbm-only \
		--run "demote-on-evict cxl_gib=0 label=hbm+dram" --run "demote-on-evict label=hbm+dram+cxl"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	-command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server) \
		|| echo "redis-server not installable here: the Redis comparison will skip"
	$(PY) -m pip install -q -e ".[bench]"
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest benches -q -s -o python_files="bench_*.py" -p no:cacheprovider \
		--benchmark-only --benchmark-columns=min,mean,rounds --benchmark-json=.benchmarks/latest.json

clean:
	rm -rf $(VENV) build *.egg-info cxlsim/_cxlsim_core*.so
