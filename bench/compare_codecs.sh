#!/usr/bin/env bash
# Compressed data-parallel training: the Fashion-MNIST MLP of story 4
# (examples/04_compressed) on 4 in-process ranks, 5 epochs, once per codec,
# then a markdown table (the one in README.md):
#   codec | bytes/step | vs none | test accuracy | vs none | samples/s
#   bench/compare_codecs.sh                      none, top-k 1% + EF, PowerSGD rank 4
#   bench/compare_codecs.sh none topk powersgd f16 int8 sign randomk bf16
# EPOCHS=1 for a quick look. bytes/step: what rank 0's transport sent per
# training step (the three weight matrices through their codecs, biases
# uncompressed through a ring).
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" dataset-fashion-mnist
if [ -f "$WEFT_BUILD/build.ninja" ]; then ninja -C "$WEFT_BUILD" examples/04_compressed; else weft_build; fi
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
EPOCHS=${EPOCHS:-5}
codecs=("$@")
[ ${#codecs[@]} -gt 0 ] || codecs=(none topk powersgd)
results=()
for c in "${codecs[@]}"; do
  line=$("$WEFT_BUILD/examples/04_compressed" "$c" "$EPOCHS" 4 | tee -a /dev/stderr | grep '^result ')
  results+=("$line")
done
printf '%s\n' "${results[@]}" | awk -v epochs="$EPOCHS" '
  function field(k,   i, n, a) {
    for (i = 2; i <= NF; ++i) { n = index($i, "="); if (substr($i, 1, n - 1) == k) return substr($i, n + 1) }
    return ""
  }
  {
    # the codec label may hold spaces: it runs from "codec=" to " bytes_per_step="
    s = $0; sub(/^result codec=/, "", s); sub(/ bytes_per_step=.*/, "", s)
    label[NR] = s; bytes[NR] = field("bytes_per_step"); acc[NR] = field("accuracy"); sps[NR] = field("samples_per_s")
    if (s ~ /^none/) { base_b = bytes[NR]; base_a = acc[NR] }
  }
  END {
    printf "\n%d ranks as threads, MLP 784-256-256-10, Adam, global batch 128, %d epochs\n\n", 4, epochs
    print "| codec | bytes/step (rank 0) | vs none | test accuracy | vs none | samples/s |"
    print "|---|---:|---:|---:|---:|---:|"
    for (i = 1; i <= NR; ++i) {
      ratio = base_b > 0 ? sprintf("%.1fx less", base_b / bytes[i]) : "n/a"
      delta = base_a != "" ? sprintf("%+.2f", acc[i] - base_a) : "n/a"
      printf "| %s | %d | %s | %.2f%% | %s | %d |\n", label[i], bytes[i], ratio, acc[i], delta, sps[i]
    }
  }'
