#!/usr/bin/env bash
# Regenerate a committed result set's tables and curves from its per-case metrics and training
# logs: no training, no torch. Usage: results/reference/regenerate.sh NAME [OUT]
# (OUT defaults to the set itself; tests/test_reference_results.py regenerates into a temporary
# folder and compares the bytes.)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
set_dir="$here/${1:?usage: regenerate.sh NAME [OUT]}"
out="${2:-$set_dir}"
order="$(cat "$set_dir/order.txt")"
# the paired tests' reference row (the config's `reference`), cmfnet unless the set names another
reference="$(cat "$set_dir/reference.txt" 2>/dev/null || echo cmfnet)"
cmfnet tables --results "$set_dir" --out "$out/tables" --order "$order" --reference "$reference"
cmfnet curves --models "$set_dir/logs" --out-table "$out/tables/convergence" \
  --out-figure "$out/figures/curves.png" --order "$order"
