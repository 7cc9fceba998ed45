#!/usr/bin/env bash
# Reproduce the paper's experiments (experiments/*.yaml) and their figures.
#
#   ./run_all.sh                      every experiment, cpu profile (sized for a 2-core machine; see README)
#   ./run_all.sh --profile quick      a first look in <= 5 minutes (CIFAR-10 speedup panels, one repeat)
#   ./run_all.sh --profile paper      the paper's sizes (4 GPUs, batch 256, full resolution)
#   ./run_all.sh --list               what each experiment will run, and what your results already hold
#   ./run_all.sh --only speedup       one experiment (repeatable, or comma-separated)
#   ./run_all.sh --force              rerun finished experiments (deletes their results, re-profiles)
#   ./run_all.sh --max-reruns K       re-run rounds for cells whose repeats differ by > 25 % (default 2)
#   ./run_all.sh --results DIR --plots DIR --experiments DIR   other roots (tests, trial runs)
#
# Writes results/<profile>/<experiment>/*.csv and plots/<profile>/*.png (yours; git ignores them;
# the committed reference results are under results/reference/). Prints a line per run with an
# ETA, and at the end the speedup table beside the reference's and the paper's. An experiment is
# marked done (results/<profile>/<experiment>/DONE) only when every run succeeded; if any failed
# the command exits 1 naming them, and the next ./run_all.sh retries only those. A plot script
# that is missing or fails is a note, not an error.
set -uo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

profile=cpu
names=()
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs a value (cpu, quick or paper)}; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --only) names+=("${2:?--only needs an experiment name}"); shift 2 ;;
    --only=*) names+=("${1#*=}"); shift ;;
    --force|--no-plots|--plots-only|--list|--dry-run) args+=("$1"); shift ;;
    --results|--plots|--experiments) args+=("$1" "${2:?$1 needs a directory}"); shift 2 ;;
    --max-reruns) args+=("$1" "${2:?--max-reruns needs a number}"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

./bootstrap.sh || { echo "run_all.sh: bootstrap failed" >&2; exit 1; }

start=$(date +%s)
echo "run_all: profile $profile, experiments: ${names[*]:-all}, started $(date '+%F %T')"
PYTHONUNBUFFERED=1 .venv/bin/python -m pipebd experiment "${names[@]}" --profile "$profile" "${args[@]}"
rc=$?
elapsed=$(( $(date +%s) - start ))
printf 'run_all: total %dm%02ds (exit %d)\n' $((elapsed / 60)) $((elapsed % 60)) "$rc"
exit "$rc"
