#!/usr/bin/env bash
# Mutation testing with mutmut (pinned in the `test` extra), configured in pyproject.toml.
#
#   benchmarks/mutation.sh                                   # the stated subset (below), ~40 min on 2 cores
#   benchmarks/mutation.sh cmfnet/evaluation/metrics.py cmfnet/training/engine.py  # any of the configured core modules
#   ALL=1 benchmarks/mutation.sh                             # every configured core module (several hours)
#
# Runs on a copy of the working tree (tracked and untracked, not ignored, files) in a temporary
# folder, so mutmut's mutants/ never lands in the repository; at low CPU priority; with the
# default test selection minus the Snakemake tests, which run the installed package in
# subprocesses and never see a mutant. Prints the survivors (names for `mutmut show`) and
# the score per module (killed + timeout over all mutants that have a test). Not part of the
# default test run. Environment: JOBS (parallel mutants, default 2), KEEP=1 keeps the copy,
# TESTS="tests/test_a.py tests/test_b.py" runs only those test files against the mutants (a
# lower bound of the score, in minutes where the whole suite would take hours: name them with it).
# SAMPLE=N [SEED=S] runs a random sample of N of the modules' mutants (seeded, so the same N
# names come back) and reports the sample's score with a 95 % Wilson interval: an estimate of the
# whole module's score where running every mutant would take hours (the engine: about 10 a minute).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -n "${SAMPLE:-}" && ! "${SAMPLE}${SEED:-0}" =~ ^[0-9]+$ ]]; then
    echo "mutation.sh: SAMPLE and SEED must be whole numbers (got SAMPLE=${SAMPLE} SEED=${SEED:-})" >&2
    exit 2
fi
# Stated subset: modules nobody else edits often and whose tests are fast (docs/testing.md).
SUBSET=(cmfnet/data/normalize.py cmfnet/data/splits.py cmfnet/evaluation/tables.py)
if [[ $# -gt 0 ]]; then
    MODULES=("$@")
elif [[ "${ALL:-0}" == 1 ]]; then
    MODULES=()  # the full only_mutate list of pyproject.toml
else
    MODULES=("${SUBSET[@]}")
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cmfnet-mutation.XXXXXX")"
cleanup() { if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi; }
trap cleanup EXIT
(cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$WORK"

cd "$WORK"
if [[ ${#MODULES[@]} -gt 0 ]]; then
    python - "${MODULES[@]}" <<'PY'
"""Restrict only_mutate in the copy's pyproject.toml to the modules asked for."""
import re
import sys
import tomllib
from pathlib import Path

path = Path("pyproject.toml")
text = path.read_text()
configured = tomllib.loads(text)["tool"]["mutmut"]["only_mutate"]
asked = sys.argv[1:]
unknown = [m for m in asked if not any(Path(m).match(p) or m == p for p in configured)]
if unknown:
    sys.exit(f"not a configured core module: {unknown} (pyproject.toml [tool.mutmut] only_mutate)")
listed = ", ".join(f'"{m}"' for m in asked)
text = re.sub(r"only_mutate = \[.*?\]", f"only_mutate = [{listed}]", text, count=1, flags=re.S)
path.write_text(text)
PY
fi

if [[ -n "${TESTS:-}" ]]; then
    python - ${TESTS} <<'PY'
"""Restrict the copy's mutmut test selection to the test files asked for."""
import re
import sys
from pathlib import Path

path = Path("pyproject.toml")
missing = [t for t in sys.argv[1:] if not Path(t).is_file()]
if missing:
    sys.exit(f"TESTS: no such test file {missing}")
listed = ", ".join(f'"{t}"' for t in sys.argv[1:])
text = re.sub(r"pytest_add_cli_args_test_selection = \[.*?\]",
              f'pytest_add_cli_args_test_selection = [{listed}, "-m", "not slow"]', path.read_text(), count=1, flags=re.S)
path.write_text(text)
PY
fi

echo "mutating: ${MODULES[*]:-all core modules} against ${TESTS:-the default test selection} (copy in $WORK)" >&2
start=$(date +%s)
: > mutmut-run.log
chosen=()  # mutant names to run; none: every mutant
if [[ -n "${SAMPLE:-}" ]]; then
    # generate every mutant and collect the test mapping, but run none (no mutant has this name)
    nice -n 19 mutmut run --max-children "${JOBS:-2}" "generate.only" >> mutmut-run.log 2>&1 \
        || grep -q "nothing matches" mutmut-run.log || { tail -40 mutmut-run.log; exit 1; }
    mutmut results --all true > generated.txt
    python - "$SAMPLE" "${SEED:-0}" > sample.txt <<'PY'
"""A seeded random sample of the mutant names in generated.txt."""
import random
import sys
from pathlib import Path

lines = Path("generated.txt").read_text().splitlines()
names = sorted(line.rsplit(": ", 1)[0].strip() for line in lines if ": " in line)
size, seed = int(sys.argv[1]), int(sys.argv[2])
if not 0 < size <= len(names):
    sys.exit(f"SAMPLE={size}: choose 1 to {len(names)} (the modules' mutant count)")
print("\n".join(sorted(random.Random(seed).sample(names, size))))
PY
    echo "sampled ${SAMPLE} mutants (SEED=${SEED:-0}), listed in $WORK/sample.txt" >&2
    mapfile -t chosen < sample.txt
fi
nice -n 19 mutmut run --max-children "${JOBS:-2}" "${chosen[@]}" >> mutmut-run.log 2>&1 || { tail -40 mutmut-run.log; exit 1; }
elapsed=$(( $(date +%s) - start ))

mutmut results --all true > results.txt
if [[ -n "${SAMPLE:-}" ]]; then  # score the sample only
    grep -F -f <(sed 's/$/: /' sample.txt) results.txt > sampled.txt || true
    mv sampled.txt results.txt
fi
echo "== survivors (see one with: cd $WORK && mutmut show NAME; KEEP=1 keeps the copy)"
grep -E ": (survived|no tests)$" results.txt || true
echo "== score per module (${elapsed} s)"
python - <<'PY'
"""killed + timeout over mutants with a test, per module, from `mutmut results --all true`."""
import math
import os
from collections import Counter, defaultdict
from pathlib import Path

sampled = bool(os.environ.get("SAMPLE"))

counts: dict[str, Counter] = defaultdict(Counter)
for line in Path("results.txt").read_text().splitlines():
    if ": " not in line:
        continue
    name, status = (part.strip() for part in line.rsplit(": ", 1))
    module = name.split(".x_")[0].split(".xǁ")[0]
    counts[module][status] += 1
for module, c in sorted(counts.items()):
    caught = c["killed"] + c["timeout"]
    scored = sum(c.values()) - c["skipped"]
    detail = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
    # 95 % Wilson interval: what the score of all the module's mutants may be, when these are a sample
    z, n, p = 1.96, max(scored, 1), caught / max(scored, 1)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    interval = f", 95 % interval {100 * (centre - half):.1f}-{100 * (centre + half):.1f} %" if sampled else ""
    print(f"{module}: {caught}/{scored} = {100 * p:.1f} % ({detail}{interval})")
PY
