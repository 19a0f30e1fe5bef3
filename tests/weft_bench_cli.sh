#!/usr/bin/env bash
# weft-bench's command line, as a new user gets it wrong: every bad number,
# list or size ends in exit code 2 and one sentence on stderr naming the flag
# and the problem (never exit 0, a crash, std::bad_alloc or a conversion
# error); --help and a small valid run still work.
#   usage: weft_bench_cli.sh WEFT_BENCH
set -u
bench=$1
fails=0

# expect RC 'SUBSTRING' ARGS...: exit code RC and SUBSTRING in what it printed.
expect() {
  local rc=$1 want=$2 out got
  shift 2
  out=$("$bench" "$@" 2>&1)
  got=$?
  if [ "$got" -ne "$rc" ] || [[ "$out" != *"$want"* ]]; then
    echo "FAIL: weft-bench $* -> exit $got (want $rc), output:"
    echo "$out" | head -5 | sed 's/^/    /'
    echo "    (wanted: $want)"
    fails=$((fails + 1))
  else
    echo "ok:   weft-bench $* -> $(echo "$out" | head -1)"
  fi
}

# Non-finite, negative, fractional and out-of-range numbers.
expect 2 "-f: expected a finite number > 1 and <= 1024, got 'nan'" -f nan
expect 2 "-f: expected a finite number > 1 and <= 1024, got 'inf'" -f inf
expect 2 "-f: expected a finite number > 1 and <= 1024, got '1'" -f 1
expect 2 "-f: expected a number, got '2x'" -f 2x
expect 2 "-b: 'nan' is not a finite size" -b nan
expect 2 "-e: 'inf' is not a finite size" -e inf
expect 2 "-e: 1e30 is larger than any machine (at most 1 PiB)" -e 1e30
expect 2 "-b: '-5' is negative" -b -5
expect 2 "-b: 1.5 is not a whole number of bytes" -b 1.5
expect 2 "-e: unknown size suffix 'X' in '4X'" -e 4X
expect 2 "-i: the step must be at least 1 byte" -i 0
expect 2 "-n: expected an integer in 1..1000000, got '0'" -n 0
expect 2 "-n: expected an integer in 1..1000000, got '1e3'" -n 1e3
expect 2 "--contend: expected an integer in 0..1024, got 'x'" --contend x
expect 2 "--contend: expected an integer in 0..1024, got '-1'" --contend -1
expect 2 "-w: expected an integer in 0..1000000, got '99999999999999999999'" -w 99999999999999999999
expect 2 "--np: expected an integer in 1..4096, got '0'" --np 0
expect 2 "--bytes-budget: 'nan' is not a finite size" --bytes-budget nan
expect 2 "--chunk: 'inf' is not a finite size" --chunk inf
expect 2 "--codec topk fraction: expected a finite number > 0 and <= 1, got 'nan'" --codec topk:nan
expect 2 "--codec int8 chunk: expected an integer in 1..1073741824, got '-3'" --codec int8:-3
expect 2 "--codec powersgd rank: expected an integer in 1..4096, got '2.5'" --codec powersgd:2.5
expect 2 "--codec sign: takes no parameter" --codec sign:3
expect 2 "--codec: algorithm 'hierarchical' is not offered with codecs" --codec f16 --algo hierarchical
expect 2 "--quiet: takes no value" --quiet=1
# Sweeps that are empty or too long, sizes in the wrong order.
expect 2 "-b/--minbytes 64 KiB is larger than -e/--maxbytes 1 KiB" -b 64K -e 1K
expect 2 "-e/--maxbytes: the largest size must be at least 1 byte" -b 0 -e 0
expect 2 "has more than 10000 sizes: use a larger step" -b 8 -e 32M -f 1.0000001
expect 2 "has more than 10000 sizes: use a larger step" -b 1 -e 1M -i 1
# Sizes this machine cannot hold: more than its physical memory (from
# /proc/meminfo here, sysconf in weft-bench), named as too large for it.
mem_gib=$(awk '/^MemTotal:/ {print int($2 / 1048576) + 1}' /proc/meminfo)
expect 2 "-b/--minbytes ${mem_gib} GiB: 2 thread ranks need at least" -b "${mem_gib}G"
expect 2 "more than this machine's" -b "${mem_gib}G" -e "${mem_gib}G"
expect 2 "-e/--maxbytes 1 TiB: 4 thread ranks need at least 8 TiB" -e 1T --np 4
expect 2 "lower -e/--maxbytes or --np" -e 1T --np 4
expect 2 "-e/--maxbytes 1 TiB: memcpy needs at least 2 TiB (a source and a destination)" memcpy -e 1T
# What still works.
expect 0 "usage: weft-bench" --help
expect 0 "" --np 2 -b 8 -e 64 -n 1 -w 0 -q
expect 0 "" --np 2 -b 1K -e 4K -i 1K -n 1 -w 0 -q

if [ "$fails" -ne 0 ]; then
  echo "$fails scenario(s) failed"
  exit 1
fi
echo "all scenarios ended as expected"
