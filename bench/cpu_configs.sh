#!/usr/bin/env bash
# The README's test command under one CPU configuration, on a fresh clone with an empty store:
#
#   bench/cpu_configs.sh NAME CORE [VAR=value ...]
#   TARGET=nbval bench/cpu_configs.sh NAME CORE [VAR=value ...]   (the notebooks' part only)
#
# clones this repository's HEAD (refused if the working tree has uncommitted changes) into
# $WORK/NAME/main (WORK defaults to /tmp/stitchlib-configs), puts ../shared beside it, and runs
# `make test` there (a new venv, the unit tests, nbval over the five notebooks computed from
# scratch) with the given environment, one thread, pinned to CPU core CORE. Two configurations on
# a 2-core machine run side by side, one per core. Writes $WORK/NAME/make_test.log and
# $WORK/NAME/result.txt (commit, exit status, seconds, environment); the claims tables the
# notebooks wrote stay in $WORK/NAME/main/figures/smoke for bench/compare_verdicts.py.
set -uo pipefail
name=${1:?NAME}
core=${2:?CORE}
shift 2
[[ $name =~ ^[A-Za-z0-9_-]+$ ]] || { echo "NAME must be letters, digits, _ or -, got '$name'" >&2; exit 2; }
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel) || exit 1
git -C "$repo" diff --quiet HEAD || { echo "commit first: $repo has uncommitted changes" >&2; exit 2; }
shared=$(cd "$repo/../shared" && pwd) || { echo "no ../shared beside $repo" >&2; exit 2; }
commit=$(git -C "$repo" rev-parse --short HEAD)
work=$(realpath -m "${WORK:-/tmp/stitchlib-configs}/$name")
rm -rf "$work" && mkdir -p "$work" || exit 1
git clone -q "$repo" "$work/main" || exit 1
ln -s "$shared" "$work/shared" || exit 1
cd "$work/main" || exit 1
start=$(date +%s)
# Nothing of the caller's stitchlib settings leaks in: an empty store and figures in the clone.
env -u STITCHLIB_STORE -u STITCHLIB_FIGURES -u STITCHLIB_WEIGHTS -u STITCHLIB_DATA -u VENV -u PYTHON \
  "$@" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c "$core" make "${TARGET:-test}" > "$work/make_test.log" 2>&1
rc=$?
echo "$name: commit $commit, make ${TARGET:-test} exit $rc, $(( $(date +%s) - start )) s, $(date +%F), env: $*" \
  "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1, core $core" | tee "$work/result.txt"
exit $rc
