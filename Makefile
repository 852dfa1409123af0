# make test   install what is missing, build, run the test suite (CPU: Triton kernels run in its interpreter)
# make bench  install what is missing (benchmark peers included), build, run the benchmark (JSON + PNG in build/)
# make mutants  mutation testing (mutmut) of the pure-Python modules with their fast tests; slow, not in CI
PY ?= python3
SOURCES := setup.py requirements.txt $(wildcard requirements-nodeps.txt benchmarks/requirements-bench*.txt csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/*)

.PHONY: install test bench clean mutants
install: build/.installed

build/.installed: $(SOURCES)
	PYTHON=$(PY) bash scripts/install.sh
	mkdir -p build && touch $@

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m benchmarks.bench_pq --json build/bench.json --plot build/bench.png

mutants: install
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install "mutmut>=3.8,<4"
	PY=$(PY) bash scripts/mutants.sh $(MODULES)

clean:
	rm -rf build *.egg-info pqgan_kernels/*.so
