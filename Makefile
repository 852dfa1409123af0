# make test   install what is missing, build, run the test suite (CPU: Triton kernels run in its interpreter)
# make bench  install what is missing (benchmark peers included), build, run the benchmark (JSON + PNG in build/)
PY ?= python3
SOURCES := setup.py requirements.txt $(wildcard requirements-nodeps.txt benchmarks/requirements-bench*.txt csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/*)

.PHONY: install test bench clean
install: build/.installed

build/.installed: $(SOURCES)
	PYTHON=$(PY) bash scripts/install.sh
	mkdir -p build && touch $@

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/bench_pq.py --json build/bench.json --plot build/bench.png

clean:
	rm -rf build *.egg-info pqgan_kernels/*.so
