#!/usr/bin/env bash
# Prove the version ranges pyproject.toml claims for torch, gymnasium and transformers (and the
# lower bounds of numpy, matplotlib, tqdm, threadpoolctl, tokenizers, vaderSentiment): install
# the ends of the ranges in throwaway venvs and run the fast unit tests in each.
#
#   tools/check_ranges.sh                 # all three cases, one after another
#   tools/check_ranges.sh oldest          # one case: oldest | newest-libs | newest-torch | pinned
#   PYTHON=python3.12 tools/check_ranges.sh pinned   # the constraints.txt pins on another Python
#
# Run by hand, not in CI: each case installs a fresh environment from the registry (minutes;
# newest-torch is a multi-GB CUDA build unless PRE_INSTALL names local wheels, see below).
# Cases (each line of output starting with RESULT is the verdict):
#   oldest        every runtime and RLHF dependency at its claimed lower bound (torch 2.13.0)
#   newest-libs   torch 2.13.0 with the newest gymnasium, transformers, numpy, ... that the ranges allow
#   newest-torch  the newest torch the range allows, the rest at the constraints.txt pins
#   pinned        every package at its constraints.txt pin (what the README's install gives)
# Environment: PYTHON (default python3.11), PRE_INSTALL (wheel files installed with --no-deps
# first, e.g. a local torch build and its CUDA wheels, so nothing large is downloaded).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ppo-edu-ranges.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
TESTS="tests/test_gae.py tests/test_losses.py tests/test_networks.py tests/test_normalization.py
       tests/test_rollout.py tests/test_fastmlp.py tests/test_ppo.py tests/test_envs.py tests/test_checks.py
       tests/test_plots.py tests/test_rlhf.py"

# requirement strings from pyproject.toml: "lower" -> name==lower bound; "upper" -> name<upper bound
reqs() {
  "$PYTHON" - "$1" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for raw in project["dependencies"] + project["optional-dependencies"]["rlhf"]:
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", raw).groups()
    low = re.search(r">=\s*([\w.]+)", spec)
    high = re.search(r"<\s*([\w.]+)", spec)
    if sys.argv[1] == "lower":
        print(f"{name}=={low.group(1)}" if low else name)
    else:
        print(f"{name}<{high.group(1)}" if high else name)
EOF
}

run_case() {
  local name=$1; shift
  local venv="$WORK/$name"
  echo "== $name: $*"
  "$PYTHON" -m venv "$venv" || return 1
  local pip="$venv/bin/pip -q --disable-pip-version-check"
  if [ -n "${PRE_INSTALL:-}" ]; then
    $pip install --no-deps $PRE_INSTALL || { echo "RESULT $name: pre-install failed"; return 1; }
  fi
  $pip install "$@" pytest hypothesis packaging || { echo "RESULT $name: install failed"; return 1; }
  $pip install --no-deps -e . || { echo "RESULT $name: install of ppo-edu failed"; return 1; }
  local versions
  versions=$("$venv/bin/python" -c "
import sys, importlib.metadata as m
names = ['torch', 'gymnasium', 'transformers', 'tokenizers', 'numpy', 'matplotlib']
print(f'python {sys.version.split()[0]}, ' + ', '.join(f'{n} {m.version(n)}' for n in names))")
  OMP_NUM_THREADS=1 MPLBACKEND=Agg "$venv/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" -rf \
    -m "not slow" $TESTS > "$WORK/$name.log" 2>&1
  grep -E "^(FAILED|ERROR) " "$WORK/$name.log" | cut -c1-300
  echo "RESULT $name: $versions: $(tail -1 "$WORK/$name.log")"
  rm -rf "$venv"
}

case_oldest()      { run_case oldest $(reqs lower); }
case_newest_libs() { run_case newest-libs "torch==2.13.0" $(reqs upper | grep -v '^torch'); }
case_newest_torch() {
  local torch_req
  torch_req=$(reqs upper | grep '^torch')
  grep -v -i '^torch==' constraints.txt > "$WORK/constraints-no-torch.txt"
  run_case newest-torch "$torch_req" -c "$WORK/constraints-no-torch.txt" \
    $(reqs upper | grep -v '^torch' | sed 's/[<>=].*//')
}

case_pinned() { run_case pinned -c constraints.txt $(reqs upper | sed 's/[<>=].*//'); }

cases=${*:-oldest newest-libs newest-torch}
for c in $cases; do
  "case_${c//-/_}"
done
