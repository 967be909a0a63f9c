#!/bin/bash
# Fan a build out on Slurm: plan the work units (fetching the inputs once,
# here), submit the scan as a job array, and a merge job that runs after the
# whole array succeeded.
#
#   scripts/slurm/submit.sh MANIFEST [TASKS] [--wait]
#
# TASKS: array size (default: one task per unit, at most 1000). --wait:
# block until the merge job ends and return its exit code.
# IMAGENET_HARD names the binary (default: imagenet-hard on PATH); DEVICE is
# passed to `scan --device` (default auto). Extra sbatch options can go in
# SBATCH_ARGS (e.g. "--partition=gpu --gres=gpu:8 --cpus-per-task=64"): each
# task then runs one worker per GPU it holds (see build.sbatch), so TASKS
# tasks of G GPUs run TASKS x G workers.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="${1:?usage: submit.sh MANIFEST [TASKS] [--wait]}"
tasks="${2:-}"
wait_flag=""
[[ "${3:-}" == "--wait" || "${2:-}" == "--wait" ]] && wait_flag="--wait"
[[ "$tasks" == "--wait" ]] && tasks=""
bin="${IMAGENET_HARD:-imagenet-hard}"

units="$("$bin" plan "$manifest" | tail -n +2 | wc -l)"
if [[ "$units" -eq 0 ]]; then
  echo "submit.sh: the plan has no units" >&2
  exit 1
fi
tasks="${tasks:-$(( units < 1000 ? units : 1000 ))}"
(( tasks > units )) && tasks="$units"
export MANIFEST="$manifest" IMAGENET_HARD="$bin"
# shellcheck disable=SC2086
scan_job="$(sbatch --parsable ${SBATCH_ARGS:-} --array="0-$((tasks - 1))" --export=ALL "$here/build.sbatch")"
echo "scan: job array $scan_job, $tasks task(s) over $units unit(s)" >&2
# shellcheck disable=SC2086
merge_job="$(sbatch --parsable ${SBATCH_ARGS:-} $wait_flag --dependency="afterok:${scan_job%%;*}" --kill-on-invalid-dep=yes --export=ALL "$here/merge.sbatch")"
echo "merge: job $merge_job (after the scan array succeeds)" >&2
echo "$merge_job"
