#!/usr/bin/env bash
# Issue 15's GPU checks (targets 3 and 4) as one prepared command for a lent GPU machine (see the tool
# library's device/README.md). That machine has torch and transformers (Python 3.12) but not gymnasium,
# vaderSentiment, trl or datasets, and reaches no registry: their wheels travel in .wheels/ (ignored
# by git), fetched here first.
#
#   tools/gpu_checks.sh fetch          # here, once: the wheels for the device's Python (PYVER, default 3.12;
#                                      # WITH_PYARROW=1 adds pyarrow 26, 50 MB, should the device's be older than 24)
#   run(command="bash tools/gpu_checks.sh speed quality summary", carry=[".wheels"], timeout_s=590)
#
# Stages, in the order given; each logs to $OUT/<stage>.txt and prints one "RESULT <stage> ..." line; a
# failed stage does not stop the next:
#   speed    python bench/rlhf.py --device $DEVICE --skip-quality: PPO-RLHF (shared and separate critic)
#            and GRPO against TRL's, iterations taken in turn (target 4: 4x TRL's PPO)
#   quality  python bench/rlhf.py --device $DEVICE --skip-speed --quality-seeds $SEEDS: gold, KL and the
#            largest late per-batch KL of PPO and GRPO on the preset (target 3 on gpu-small); TRL's
#            quality frontier only with TRL_KL_COEFS=0.4,0.8,... (several TRL runs per seed: long)
#   summary  python -m ppo_edu.cli rlhf --preset $SIZE: the run folder's summary.json (memory per model,
#            target 4), copied to $OUT
# ppo_edu runs from this checkout (PYTHONPATH), not installed: the device's torch (2.11 when last seen) is
# older than pyproject.toml's range, which pip would otherwise try to satisfy from a registry it cannot reach.
# Overrides: DEVICE (cuda), SIZE (gpu-small), PY (python3), ROUNDS (2), ITERS (5), SEEDS (3), OUT, and
# QITERS (quality's and summary's PPO iterations and GRPO steps; default the preset's).
# Rehearse here on the CPU, in a scratch clone (setup remakes bench/.venv-trl-*):
#   PYVER=3.11 tools/gpu_checks.sh fetch && PY=$VENV/bin/python DEVICE=cpu SIZE=micro tools/gpu_checks.sh speed
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.wheels
PY=${PY:-python3}

if [ "${1:-}" = "fetch" ]; then
  set -e
  rm -rf "$WHEELS" && mkdir -p "$WHEELS/trl-ppo" "$WHEELS/trl-grpo"
  v=${PYVER:-3.12}
  dl=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp
      --abi "cp${v/./}" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux_2_28_x86_64)
  # ppo_edu's own needs (the versions constraints.txt pins), then TRL's that the device may lack or hold
  # too old (pip takes one from here only where the device's does not satisfy trl and datasets)
  "${dl[@]}" -d "$WHEELS" gymnasium==1.4.0 Farama-Notifications==0.0.6 vaderSentiment==3.3.2
  "${dl[@]}" -d "$WHEELS/trl-deps" datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
  # datasets 5.2 wants pyarrow >= 24; the device has a pyarrow of its own. Its wheel is 50 MB of the 64 MiB
  # that may travel, so only on demand (if setup says datasets cannot import pyarrow)
  [ "${WITH_PYARROW:-0}" = 1 ] && "${dl[@]}" -d "$WHEELS/trl-deps" pyarrow==26.0.1
  "${dl[@]}" -d "$WHEELS/trl-ppo" trl==1.12.0
  "${dl[@]}" -d "$WHEELS/trl-grpo" trl==1.16.0
  du -sh "$WHEELS"
  exit 0
fi

STAGES="speed quality summary"
[ $# -gt 0 ] || { echo "gpu_checks: name a stage: fetch, or one or more of $STAGES"; exit 2; }
for s in "$@"; do
  [[ " $STAGES " == *" $s "* ]] || { echo "gpu_checks: unknown stage '$s': choose from fetch, or one or more of $STAGES"; exit 2; }
done
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-gpu-small}
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$WHEELS" ] || { echo "gpu_checks: $WHEELS/ is missing: run 'tools/gpu_checks.sh fetch' here and carry it"; exit 2; }

log() { echo "[$(date +%H:%M:%S)] $*"; }

setup() {   # ppo_edu's missing dependencies into $PY's environment; TRL into bench-only folders beside it
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" gymnasium==1.4.0 vaderSentiment==3.3.2 || return 1
  # bench/rlhf.py runs TRL with bench/.venv-trl-<kind>/bin/python. The device's python3 is itself a venv,
  # so a --system-site-packages venv would not see its torch: each "venv" is a folder of TRL and the
  # datasets versions it needs (shadowing the device's own), and a bin/python that puts it first on the path.
  local py; py=$("$PY" -c 'import sys; print(sys.executable)')
  for kind in ppo grpo; do
    local venv=bench/.venv-trl-$kind
    rm -rf "$venv" && mkdir -p "$venv/bin" || return 1
    "$PY" -m pip install -q --no-index --no-deps --target "$venv/site" "$WHEELS"/trl-$kind/*.whl \
      "$WHEELS"/trl-deps/*.whl || return 1
    printf '#!/bin/sh\nPYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/site${PYTHONPATH:+:$PYTHONPATH}" exec %s "$@"\n' \
      "$py" > "$venv/bin/python" && chmod +x "$venv/bin/python" || return 1
    "$venv/bin/python" -c "import trl, datasets; print('TRL', trl.__version__, 'datasets', datasets.__version__)" || return 1
  done
  "$PY" - <<'EOF'
import torch, transformers, gymnasium
print(f"torch {torch.__version__}, transformers {transformers.__version__}, gymnasium {gymnasium.__version__}, "
      f"cuda {torch.cuda.is_available()}" + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
EOF
}

stage() {   # stage NAME COMMAND...: run it, log to $OUT/NAME.txt, one RESULT line
  local name=$1; shift
  log "stage $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "RESULT $name rc=$rc $(grep -E 'x, paired|target met|^(PPO|GRPO) ' "$OUT/$name.txt" | tr '\n' ';')"
}

log "setup (PY=$PY, DEVICE=$DEVICE, SIZE=$SIZE)"
setup 2>&1 | tee "$OUT/setup.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "RESULT setup failed: see $OUT/setup.txt"; exit 1; }
for s in "$@"; do
  case "$s" in
    speed)   stage speed "$PY" bench/rlhf.py --device "$DEVICE" --size "$SIZE" --skip-quality \
               --rounds "${ROUNDS:-2}" --iters "${ITERS:-5}" ;;
    quality) stage quality "$PY" bench/rlhf.py --device "$DEVICE" --size "$SIZE" --skip-speed \
               --quality-seeds "${SEEDS:-3}" ${QITERS:+--quality-iterations "$QITERS"} \
               --trl-kl-coefs "${TRL_KL_COEFS:-}" ;;
    summary) rm -rf "$OUT/run"
             stage summary "$PY" -m ppo_edu.cli rlhf --preset "$SIZE" --device "$DEVICE" --out "$OUT/run" \
               --no-progress ${QITERS:+--ppo-iterations "$QITERS" --grpo-steps "$QITERS"}
             cp "$OUT/run/summary.json" "$OUT/summary.json" 2>/dev/null
             rm -rf "$OUT/run" ;;   # only summary.json comes back (the device returns at most 8 files)
  esac
done
log "done"
