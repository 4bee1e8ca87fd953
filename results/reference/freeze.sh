#!/usr/bin/env bash
# Commit-ready copy of a finished run: its per-case metrics, training logs, tables and figures
# (never models, predictions or data). Usage: results/reference/freeze.sh RESULTS DATASET NAME ORDER [REFERENCE]
# e.g. results/reference/freeze.sh results synth-npc default fullysup,pce,...
# REFERENCE: the card the paired tests compare with (the config's `reference`; default cmfnet)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
results="${1:?usage: freeze.sh RESULTS DATASET NAME ORDER}"; dataset="${2:?}"; name="${3:?}"; order="${4:?}"
target="$here/$name"
if [ -e "$target" ]; then echo "freeze.sh: $target exists; remove it first" >&2; exit 2; fi
staging="$(mktemp -d "$here/.$name.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/metrics" "$staging/logs"
cp -r "$results/metrics/$dataset" "$staging/metrics/"
(cd "$results/models/$dataset" && find . -name train_log.csv -exec cp --parents {} "$staging/logs/" \;)
echo "$order" > "$staging/order.txt"
if [ -n "${5:-}" ]; then echo "$5" > "$staging/reference.txt"; fi
"$here/regenerate.sh" "$(basename "$staging")"
mv "$staging" "$target"
trap - EXIT
echo "froze $target"
