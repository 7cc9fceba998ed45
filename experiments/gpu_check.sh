#!/usr/bin/env bash
# One prepared GPU check (<= 8 minutes) for a machine with one or more NVIDIA GPUs.
#   1. the CUDA path: verify (same weights as the sequential reference) for every strategy, on
#      NCCL when each rank has its own GPU, else with ranks sharing GPUs (--share-gpus: gloo
#      transport staged through host memory);
#   2. profiles of the paper-sized workloads (batch 256, full resolution) on the GPU(s);
#   3. the simulator's prediction of every strategy on 4 devices from those profiles.
# Everything lands under results/gpu/ (CSVs + logs).  Usage: bash experiments/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
./bootstrap.sh
PY=.venv/bin/python
OUT=results/gpu
mkdir -p "$OUT"
ngpu=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$ngpu" -lt 1 ]; then echo "gpu_check: no CUDA device visible; nothing to check" >&2; exit 2; fi
$PY -c "import torch; print(torch.cuda.get_device_name(0), torch.__version__)" | tee "$OUT/device.txt"
N=2
share=""
if [ "$ngpu" -lt "$N" ]; then share="--share-gpus"; fi
echo "== verify on $N ranks over $ngpu GPU(s) ${share:+(shared, host-staged gloo)}" | tee "$OUT/verify.log"
timeout 150 $PY -m pipebd verify -w tiny -n "$N" --device cuda $share --rtol 1e-4 2>&1 | tee -a "$OUT/verify.log"
timeout 100 $PY -m pipebd run -w nas-cifar10 -s tr-dpu -n "$N" -b 256 --steps 10 --warmup 8 --device cuda $share \
  --out "$OUT" --quiet 2>&1 | tee "$OUT/run.log"
P=$(( ngpu < 4 ? ngpu : 4 ))
for w in nas-cifar10 nas-imagenet compress-vgg16-cifar10 compress-vgg16-imagenet; do
  echo "== profile $w on $P GPU(s), batch 256" | tee -a "$OUT/profile.log"
  timeout 90 $PY -m pipebd profile -w "$w" -n "$P" -b 256 --device cuda --steps 5 --warmup 3 \
    --out "$OUT/profile-$w.csv" 2>&1 | tail -12 | tee -a "$OUT/profile.log"
  [ -f "$OUT/profile-$w.csv" ] && $PY -m pipebd simulate --profile "$OUT/profile-$w.csv" --devices 1 2 4 \
    --out "$OUT/simulate-$w.csv" 2>&1 | tee -a "$OUT/simulate.log"
done
echo "gpu_check: wrote $(ls "$OUT" | wc -l) files under $OUT"
