#!/usr/bin/env bash
# Builds a libFuzzer target with clang (address and undefined-behaviour
# sanitizers) and runs it for a bounded time from a small seed corpus.
#   usage: run.sh TARGET.cpp INCLUDE_DIR SECONDS [LIBS or more sources...]
# A TARGET.dict beside the target is given to the fuzzer as its dictionary.
# Exit 77 (skipped) where clang or its libFuzzer runtime is missing.
set -u
src=$1 inc=$2 secs=$3
shift 3
command -v clang++ >/dev/null || { echo "clang++ not found: skipped"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
bin=$work/fuzz
if ! clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
     -I"$inc" "$src" -o "$bin" "$@" 2>"$work/build.log"; then
  if grep -q "fuzzer" "$work/build.log" && grep -qi "no such file\|cannot find" "$work/build.log"; then
    echo "clang's libFuzzer runtime is missing: skipped"; exit 77
  fi
  cat "$work/build.log"; exit 1
fi
# Seeds: valid IDX files (rank 1 and 3), plain and gzip, so the fuzzer starts past the header checks.
mkdir -p "$work/corpus"
printf '\x00\x00\x08\x01\x00\x00\x00\x03abc' >"$work/corpus/rank1"
printf '\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00\x02abcdefgh' >"$work/corpus/rank3"
gzip -c "$work/corpus/rank1" >"$work/corpus/rank1.gz"
gzip -c "$work/corpus/rank3" >"$work/corpus/rank3.gz"
dict=()
[ -f "${src%.cpp}.dict" ] && dict=(-dict="$(cd "$(dirname "$src")" && pwd)/$(basename "${src%.cpp}.dict")")
cd "$work" || exit 1
"$bin" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 "${dict[@]}" "$work/corpus" 2>&1 | tail -15
exit "${PIPESTATUS[0]}"
