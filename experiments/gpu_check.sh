#!/usr/bin/env bash
# The prepared GPU check (<= 8 minutes in all) for the machine we may be lent: ONE GPU (an H200,
# 16 CPU cores); with 2 or more GPUs it also checks NCCL.  Every step runs under its own
# `timeout`, capped so that the whole script ends within GPU_CHECK_BUDGET_S (default 480 s).
#
#   1. the CUDA path of every registered strategy at one rank (`run -w tiny -s S -n 1 --device
#      cuda`), and `verify -w tiny -n 1 --device cuda` (every strategy = the sequential reference);
#   2. profiles of the paper's four workloads at full size on the GPU, per-replica batches
#      ceil(256/g) for g = 1..8 (`profile --replica-groups 8`; out-of-memory rows are recorded
#      as infeasible by the profiler), every block in every compute mode (fp32/bf16 autocast ×
#      contiguous/channels-last: the bf16 profile, and `auto`'s choice made on the device);
#      step 1 also verifies bf16 + channels-last against its bf16 reference, and runs a decoder
#      (`llm-smol`, sequence 2048, the uneven candidate library, bf16) for its tokens/s and model
#      FLOPs utilisation (runs-llm/runs.csv: throughput_tps, model_tflops, mfu);
#   3. from each profile, the simulator's 4- and 8-device predictions beside the paper's Fig. 6
#      speedups (read from experiments/speedup.yaml's paper_reference); NCCL costs in them come
#      from a model, since one GPU cannot measure them;
#   4. with >= 2 GPUs: `verify -n 2 --device cuda` and a short `bench -n 2 --device cuda` over NCCL.
#
# Everything lands under results/reference/gpu/: device.txt (GPU, driver, torch, date),
# steps.csv (every step: rc, seconds, status), logs/, runs/, verify/, profile-W.csv,
# simulate-W.csv, paper-vs-simulated.csv and gpu_check.log (the whole output).
#
# Usage:  bash experiments/gpu_check.sh            (on the GPU machine)
#         bash experiments/gpu_check.sh --dry-run  (or GPU_CHECK_DRY_RUN=1: the same steps on the CPU
#                                                   at tiny sizes, for tests; see below)
# Environment:
#   GPU_CHECK_OUT         output directory (default results/reference/gpu)
#   GPU_CHECK_BUDGET_S    seconds for the whole script (default 480)
#   GPU_CHECK_PYTHON      the Python to try first; setting it skips ./bootstrap.sh (default:
#                         .venv/bin/python after ./bootstrap.sh, else python3 -- the first one that
#                         imports torch, torchvision, pandas and yaml and, unless dry, sees CUDA;
#                         bootstrap's torch need not be a CUDA build, nor can it install offline)
#   GPU_CHECK_SKIP_BOOTSTRAP=1   do not call ./bootstrap.sh
#   GPU_CHECK_STRATEGIES  strategies of steps 1 and 4 (default: every registered one)
#   GPU_CHECK_WORKLOADS   workloads of steps 2-3 (default: the paper's four)
#   GPU_CHECK_DRY_NGPU    dry run only: pretend this many GPUs (default 1; 2 also runs step 4 on CPU ranks)
# A dry run uses --device cpu, batch 8, 1 step, --replica-groups 2, and profiles each workload's
# tiny stand-in (tiny-nas for nas-*, tiny otherwise) under the paper workload's file name.
# Exit status: 0 when every step passed, 1 when some step failed, timed out or was skipped, 2 when
# no usable Python/CUDA/pipebd was found.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg'; use --dry-run or no argument" >&2; exit 2 ;;
  esac
done
[ "$DRY" = "0" ] && DRY="" || DRY=1

OUT=${GPU_CHECK_OUT:-results/reference/gpu}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
mkdir -p "$OUT/logs" || { echo "gpu_check: cannot create $OUT; set GPU_CHECK_OUT to a writable directory" >&2; exit 2; }
# a rerun replaces what an earlier one wrote (a stale profile must not be simulated)
rm -rf "$OUT/logs" "$OUT/runs" "$OUT/runs-llm" "$OUT/verify" "$OUT/verify-bf16" "$OUT/verify-n2" "$OUT/bench"
rm -f "$OUT/steps.csv" "$OUT/device.txt" "$OUT"/profile-*.csv "$OUT"/simulate-*.csv "$OUT/paper-vs-simulated.csv"
mkdir -p "$OUT/logs"
exec > >(tee "$OUT/gpu_check.log") 2>&1
SECONDS=0
FAILED=0
echo "step,seconds_limit,rc,seconds,status,command" > "$OUT/steps.csv"

say() { echo "gpu_check [$(printf '%3d' "$SECONDS") s]: $*"; }

# step NAME DEADLINE CAP LOG -- CMD...: run CMD under `timeout` (at most CAP seconds and never past
# DEADLINE seconds from the start), output to LOG (and a tail on the console); record it in steps.csv.
step() {
  local name=$1 deadline=$2 cap=$3 log=$4
  shift 5
  local left=$(( deadline - SECONDS ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 5 ]; then
    say "$name: skipped, out of time (${left} s left before this phase's deadline)"
    echo "$name,0,,0,skipped,\"$*\"" >> "$OUT/steps.csv"
    FAILED=1
    return 1
  fi
  say "$name (limit ${limit} s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; elif [ "$rc" -ne 0 ]; then status=failed; fi
  echo "$name,$limit,$rc,$(( SECONDS - t0 )),$status,\"$*\"" >> "$OUT/steps.csv"
  tail -n 6 "$log" | sed 's/^/    /'
  if [ "$status" != ok ]; then say "$name: $status (rc $rc), log $log"; FAILED=1; return 1; fi
  return 0
}

# ---- Python and device ---------------------------------------------------------------------------
if [ -z "${GPU_CHECK_SKIP_BOOTSTRAP:-}" ] && [ -z "${GPU_CHECK_PYTHON:-}" ]; then
  # fail fast where no package index can be reached (the GPU machine is offline)
  step bootstrap 60 60 "$OUT/logs/bootstrap.log" -- env PIP_RETRIES=0 PIP_TIMEOUT=5 ./bootstrap.sh \
    || say "bootstrap failed; looking for another Python that has torch"
fi
PROBE='import sys, torch, torchvision, pandas, yaml
sys.exit(0 if (sys.argv[1] == "cpu" or torch.cuda.is_available()) else 3)'
want=cuda; [ -n "$DRY" ] && want=cpu
PY=""
for cand in ${GPU_CHECK_PYTHON:-} .venv/bin/python python3; do
  if command -v "$cand" > /dev/null 2>&1 && timeout 120 "$cand" -c "$PROBE" "$want" > /dev/null 2>&1; then
    PY=$cand; break
  fi
  say "python '$cand' is unusable here (missing, no torch/torchvision/pandas/yaml, or no CUDA)"
done
if [ -z "$PY" ]; then
  say "no Python with torch$([ -z "$DRY" ] && echo ' and CUDA') found; set GPU_CHECK_PYTHON to one (torch with CUDA, torchvision, pandas, pyyaml)"
  { echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "error: no usable Python with CUDA torch"; } > "$OUT/device.txt"
  exit 2
fi
DEV=cuda
if [ -n "$DRY" ]; then
  DEV=cpu
  NGPU=${GPU_CHECK_DRY_NGPU:-1}
else
  NGPU=$(timeout 60 "$PY" -c "import torch; print(torch.cuda.device_count())" || echo 0)
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname 2>/dev/null || echo '?')"
  if [ -n "$DRY" ]; then echo "mode: dry run on the CPU (tiny sizes; not a GPU measurement)"; else echo "mode: GPU check"; fi
  echo "python: $PY ($(timeout 30 "$PY" -c 'import sys; print(sys.version.split()[0])'))"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (+local changes)')"
  timeout 60 "$PY" - <<'EOF'
import os, torch, torchvision
print(f"torch: {torch.__version__} (cuda {torch.version.cuda}), torchvision {torchvision.__version__}")
print(f"cpu cores: {os.cpu_count()}")
if torch.cuda.is_available():
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
    print(f"cuda devices: {torch.cuda.device_count()}, nccl {nccl}")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"gpu {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
              f"compute capability {p.major}.{p.minor}")
else:
    print("cuda devices: 0")
EOF
  if command -v nvidia-smi > /dev/null 2>&1; then
    echo "nvidia-smi: $(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | paste -sd ';')"
  else
    echo "nvidia-smi: not found"
  fi
} > "$OUT/device.txt" 2>&1
sed 's/^/    /' "$OUT/device.txt"
if [ -z "$DRY" ] && [ "$NGPU" -lt 1 ]; then say "no CUDA device visible; nothing to check"; exit 2; fi

# ---- sizes ---------------------------------------------------------------------------------------
WORKLOADS=${GPU_CHECK_WORKLOADS:-nas-cifar10 nas-imagenet compress-vgg16-cifar10 compress-vgg16-imagenet}
STRATEGIES=${GPU_CHECK_STRATEGIES:-$(timeout 60 "$PY" -c "from pipebd.strategies import strategy_names; print(' '.join(strategy_names()))")}
if [ -z "$STRATEGIES" ]; then
  say "could not list the registered strategies with $PY (does 'import pipebd' work?); set GPU_CHECK_STRATEGIES"; exit 2
fi
VERIFY_ONLY=()
[ -n "${GPU_CHECK_STRATEGIES:-}" ] && VERIFY_ONLY=(--strategies "$(echo "$STRATEGIES" | tr ' ' ',' )")
if [ -n "$DRY" ]; then
  RUN_SIZE=(-b 8 --steps 1 --warmup 0)
  LLM_RUN=(-w llm-tiny --seq-len 16 -b 4 --steps 1 --warmup 0)
  PROF_B=8; PROF_G=2; PROF_STEPS=(--steps 1 --warmup 1 --quick)
  BENCH_SIZE=(-w tiny -b 8 --steps 1 --warmup 0 --repeats 1 --ideal none)
else
  RUN_SIZE=(-b 64 --steps 3 --warmup 1)
  LLM_RUN=(-w llm-smol --seq-len 2048 -b 8 --steps 3 --warmup 1 --candidates uneven --precision bf16)
  PROF_B=256; PROF_G=8; PROF_STEPS=(--steps 3 --warmup 2)
  BENCH_SIZE=(-w compress-vgg16-cifar10 -b 256 --steps 4 --warmup 2 --repeats 1 --ideal estimate)
fi
stand_in() { if [ -z "$DRY" ]; then echo "$1"; elif [[ $1 == nas-* ]]; then echo tiny-nas; else echo tiny; fi; }
# phase deadlines (seconds from the start): step 1, step 2, step 3, step 4
if [ "$NGPU" -ge 2 ]; then D1=$(( BUDGET * 32 / 100 )); D2=$(( BUDGET * 68 / 100 )); D3=$(( BUDGET * 74 / 100 ))
else D1=$(( BUDGET * 38 / 100 )); D2=$(( BUDGET * 92 / 100 )); D3=$BUDGET; fi
D4=$BUDGET
say "$NGPU ${DEV} device(s); strategies: $STRATEGIES; workloads: $WORKLOADS; budget ${BUDGET} s"

# ---- 1. every strategy's CUDA path at one rank, and verify ---------------------------------------
for s in $STRATEGIES; do
  step "run-$s" "$D1" 45 "$OUT/logs/run-$s.log" -- "$PY" -m pipebd run -w tiny -s "$s" -n 1 --device "$DEV" \
    "${RUN_SIZE[@]}" --out "$OUT/runs" --tag gpu-check --quiet --no-trace
done
step verify-n1 "$D1" 150 "$OUT/logs/verify-n1.log" -- "$PY" -m pipebd verify -w tiny -n 1 --device "$DEV" \
  "${RUN_SIZE[@]}" "${VERIFY_ONLY[@]}" --out "$OUT/verify"
# bf16 autocast + channels-last on the device: same modes as its bf16 reference (prints the difference)
step verify-bf16 "$D1" 90 "$OUT/logs/verify-bf16.log" -- "$PY" -m pipebd verify -w tiny -n 1 --device "$DEV" \
  "${RUN_SIZE[@]}" --strategies "${STRATEGIES%% *}" --precision bf16 --memory-format channels-last \
  --out "$OUT/verify-bf16"
# a decoder on the device: tokens/s and model FLOPs utilisation, as runs.csv reports them
step run-llm "$D1" 120 "$OUT/logs/run-llm.log" -- "$PY" -m pipebd run "${LLM_RUN[@]}" -s sequential -n 1 \
  --device "$DEV" --out "$OUT/runs-llm" --tag gpu-check --quiet --no-trace

# ---- 2. profiles of the paper's workloads, per-replica batches ceil(B/g), g = 1..G ---------------
GROUPS_FLAG=(--replica-groups "$PROF_G")
if ! timeout 60 "$PY" -m pipebd profile --help 2>/dev/null | grep -q -- '--replica-groups'; then
  say "NOTE: this pipebd's profiler has no --replica-groups yet; profiling batch $PROF_B only (per-replica"
  say "      sizes then follow -n 1); the simulator extrapolates the smaller per-replica batches"
  echo "profile --replica-groups: not supported by this pipebd; profiled without it" >> "$OUT/device.txt"
  GROUPS_FLAG=()
fi
nw=$(echo "$WORKLOADS" | wc -w)
i=0
for w in $WORKLOADS; do
  # an even share of what is left of the phase for each remaining profile
  cap=$(( (D2 - SECONDS) / (nw - i) )); i=$(( i + 1 ))
  src=$(stand_in "$w")
  [ "$src" != "$w" ] && say "dry run: $w is profiled as its stand-in $src"
  step "profile-$w" "$D2" "$cap" "$OUT/logs/profile-$w.log" -- "$PY" -m pipebd profile -w "$src" -n 1 \
    -b "$PROF_B" "${GROUPS_FLAG[@]}" --device "$DEV" "${PROF_STEPS[@]}" --out "$OUT/profile-$w.csv"
done

# ---- 3. simulated 4- and 8-device speedups beside the paper's Fig. 6 -----------------------------
for w in $WORKLOADS; do
  if [ ! -f "$OUT/profile-$w.csv" ]; then say "simulate-$w: skipped, no profile"; FAILED=1; continue; fi
  step "simulate-$w" "$D3" 30 "$OUT/logs/simulate-$w.log" -- "$PY" -m pipebd simulate \
    --profile "$OUT/profile-$w.csv" --devices 4 8 --out "$OUT/simulate-$w.csv"
done
step compare "$D3" 30 "$OUT/logs/compare.log" -- "$PY" - "$OUT" $WORKLOADS <<'EOF'
"""Print the simulator's 4-/8-device speedups over dp beside Pipe-BD Fig. 6 (read from speedup.yaml)."""
import csv
import os
import sys

from pipebd.experiments import load_experiment

out, workloads = sys.argv[1], sys.argv[2:]
paper = load_experiment("experiments/speedup.yaml").paper_reference
rows = []
for w in workloads:
    path = os.path.join(out, f"simulate-{w}.csv")
    if not os.path.isfile(path):
        print(f"{w}: no simulation ({path} missing)")
        continue
    with open(path) as f:
        sim = {(r["strategy"], int(r["devices"])): r for r in csv.DictReader(f)}
    for s in sorted({k[0] for k in sim}, key=lambda s: (s not in paper.get(w, {}), s)):
        def sp(n):
            r = sim.get((s, n))
            return float(r["speedup_vs_dp"]) if r and r["speedup_vs_dp"] not in ("", "nan") else None
        rows.append({"workload": w, "strategy": s, "paper_fig6_4gpu": paper.get(w, {}).get(s),
                     "simulated_4": sp(4), "simulated_8": sp(8)})
fmt = lambda v: "" if v is None else f"{v:.2f}x"
print("speedup over dp: Pipe-BD Fig. 6 (4 x RTX A6000, batch 256) vs this simulator from this machine's profile")
print("CAVEAT: the profile has one GPU, so NCCL all-reduce/relay costs come from a bandwidth model, not a measurement")
print(f"{'workload':<26}{'strategy':<12}{'paper N=4':>11}{'sim N=4':>10}{'sim N=8':>10}")
for r in rows:
    print(f"{r['workload']:<26}{r['strategy']:<12}{fmt(r['paper_fig6_4gpu']):>11}"
          f"{fmt(r['simulated_4']):>10}{fmt(r['simulated_8']):>10}")
with open(os.path.join(out, "paper-vs-simulated.csv"), "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=["workload", "strategy", "paper_fig6_4gpu", "simulated_4", "simulated_8"])
    wr.writeheader()
    wr.writerows(rows)
sys.exit(0 if rows else 1)
EOF
cat "$OUT/logs/compare.log"

# ---- 4. NCCL, with two GPUs or more --------------------------------------------------------------
if [ "$NGPU" -ge 2 ]; then
  step verify-n2 "$D4" 120 "$OUT/logs/verify-n2.log" -- "$PY" -m pipebd verify -w tiny -n 2 --device "$DEV" \
    "${RUN_SIZE[@]}" "${VERIFY_ONLY[@]}" --out "$OUT/verify-n2"
  step bench-n2 "$D4" 120 "$OUT/logs/bench-n2.log" -- "$PY" -m pipebd bench -n 2 --device "$DEV" \
    "${BENCH_SIZE[@]}" ${GPU_CHECK_STRATEGIES:+--strategies "$(echo "$STRATEGIES" | tr ' ' ',')"} --out "$OUT/bench"
else
  say "one GPU: NCCL (verify -n 2, bench -n 2) not checked; it needs 2 or more GPUs"
fi

say "wrote $(find "$OUT" -type f | wc -l) files under $OUT in ${SECONDS} s; steps:"
column -s, -t < "$OUT/steps.csv" 2>/dev/null | cut -c1-110 || cat "$OUT/steps.csv"
if [ "$FAILED" -ne 0 ]; then say "FAILED: some steps failed, timed out or were skipped (see steps.csv)"; exit 1; fi
say "all steps passed"
exit 0
