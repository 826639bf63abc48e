#!/usr/bin/env bash
# Time the README's two commands the way a newcomer meets them: a fresh clone of this repository, an empty pip
# cache, and compilers replaced by stubs that log and fail (so an install that tries to build from source fails
# and shows it).   bash scripts/measure_setup.sh demo|test [OUT_DIR]
# For `test` the install and the test run are timed separately (`make install`, then `make test`), each with
# /usr/bin/time (wall, user and sys seconds). Writes OUT_DIR/{install,test|demo}.{out,err,time}, the load average
# before and after, `pip list`, and compilers.log (absent when no compiler was called).
set -uo pipefail
target=${1:?usage: measure_setup.sh demo|test [OUT_DIR]}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${2:-/tmp/blockfp8-measure-$target}" && cd "${2:-/tmp/blockfp8-measure-$target}" && pwd)
work=$(mktemp -d)
mkdir -p "$work/stubs"
for c in gcc g++ cc c++ cmake clang clang++ ninja; do
  printf '#!/bin/sh\necho "%s $*" >> %s/compilers.log\nexit 1\n' "$c" "$out" > "$work/stubs/$c"
  chmod +x "$work/stubs/$c"
done
export PATH="$work/stubs:$PATH" PIP_NO_CACHE_DIR=1
git clone -q "$repo" "$work/clone" && cd "$work/clone" || exit 1
git log --oneline -1 > "$out/commit"
uptime > "$out/load_before"
timed() { /usr/bin/time -f "wall %e s, user %U s, sys %S s" -o "$out/$1.time" make "$1" > "$out/$1.out" 2> "$out/$1.err"; }
if [ "$target" = test ]; then timed install; fi
timed "$target"; rc=$?
uptime > "$out/load_after"
.venv/bin/python -m pip list > "$out/pip-list.txt" 2>/dev/null
echo "make $target exited $rc; results in $out"
exit $rc
