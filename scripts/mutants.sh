#!/usr/bin/env bash
# Mutation testing (mutmut) of the pure-Python modules against their fast tests: `make mutants` (not in CI).
#
#   scripts/mutants.sh                       # every module below, one at a time
#   scripts/mutants.sh pqgan/packing.py      # some of them
#
# Each module runs in a private copy of the COMMITTED tree (git archive HEAD + the built extension), never in the
# working tree, with only that module mutated and only its fast test files selected. Results: one line per module
# (mutants, killed, survived, survival %) in $MUTANTS_DIR/summary.tsv; `cd $MUTANTS_DIR/<module> && mutmut
# results` lists the survivors and `mutmut show <name>` shows one. Needs `pip install mutmut` (3.x) and a built
# extension (`make install`). MUTANTS_JOBS (default 2) sets mutmut's parallel children.
set -euo pipefail
PY=${PY:-python3}
ROOT=$(git rev-parse --show-toplevel)
WORK=${MUTANTS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pqgan-mutants.XXXXXX")}
mkdir -p "$WORK"
JOBS=${MUTANTS_JOBS:-2}

declare -A TESTS=(
  [pqgan/quantizer.py]="tests/test_quantizer.py"
  [pqgan/packing.py]="tests/test_packing.py"
  [pqgan/kmeans.py]="tests/test_kmeans.py"
  [pqgan/metrics.py]="tests/test_metrics.py"
  [pqgan/checkpoint.py]="tests/test_checkpoint_files.py"
  [pqgan/losses.py]="tests/test_losses.py"
  [pqgan_kernels/reference.py]="tests/test_reference.py tests/test_ops.py"
  [pqgan_kernels/dispatch.py]="tests/test_dispatch.py tests/test_ops.py"
  [pqgan_kernels/ops.py]="tests/test_ops.py tests/test_dispatch.py"
)
ORDER=(pqgan/packing.py pqgan/kmeans.py pqgan_kernels/reference.py pqgan_kernels/dispatch.py pqgan_kernels/ops.py
       pqgan/quantizer.py pqgan/checkpoint.py pqgan/metrics.py pqgan/losses.py)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")

"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install mutmut" >&2; exit 1; }
ext=$(ls "$ROOT"/pqgan_kernels/_C*.so 2>/dev/null | head -1) || true
[ -n "$ext" ] || { echo "the extension is not built (pqgan_kernels/_C*.so): make install" >&2; exit 1; }
summary="$WORK/summary.tsv"
[ -f "$summary" ] || printf "module\tmutants\tkilled\tsurvived\tother\tsurvival_pct\n" > "$summary"

for module in "${modules[@]}"; do
  tests=${TESTS[$module]:-}
  [ -n "$tests" ] || { echo "no test files configured for $module" >&2; exit 1; }
  dir="$WORK/$(echo "${module%.py}" | tr / _)"
  rm -rf "$dir" && mkdir -p "$dir"
  git -C "$ROOT" archive HEAD | tar -x -C "$dir"
  cp "$ext" "$dir/pqgan_kernels/"
  {
    echo "[mutmut]"
    printf "source_paths =\n    pqgan\n    pqgan_kernels\n"
    echo "only_mutate = $module"
    printf "also_copy =\n    pqgan/configs\n    pqgan_kernels/%s\n" "$(basename "$ext")"
    printf "pytest_add_cli_args_test_selection =\n"
    for t in $tests; do printf "    %s\n" "$t"; done
    # torch.compile cannot trace mutmut's trampolines: those tests are left out of mutation runs only
    printf "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -k\n    not torch_compile\n"
  } > "$dir/setup.cfg"
  echo "== $module: tests $tests (log: $dir/mutmut.log)"
  if ! (cd "$dir" && OMP_NUM_THREADS=1 TRITON_INTERPRET=1 "$PY" -m mutmut run --max-children "$JOBS" \
        > mutmut.log 2>&1); then
    tail -c 2000 "$dir/mutmut.log" >&2
    printf "%s\terror\t\t\t\t(see %s)\n" "$module" "$dir/mutmut.log" >> "$summary"
    continue
  fi
  (cd "$dir" && "$PY" -m mutmut export-cicd-stats > /dev/null 2>&1 && "$PY" - "$module" >> "$summary" <<'PYEOF'
import json, sys
s = json.load(open("mutants/mutmut-cicd-stats.json"))
total = s.get("total", 0)
killed, survived = s.get("killed", 0), s.get("survived", 0)
other = total - killed - survived
print(f"{sys.argv[1]}\t{total}\t{killed}\t{survived}\t{other}\t{100.0 * survived / max(total, 1):.1f}")
PYEOF
  )
  tail -1 "$summary"
done
echo "summary: $summary"
column -t "$summary"
