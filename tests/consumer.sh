#!/usr/bin/env bash
# weft as a dependency, the two ways a consumer gets it:
#   1. a Meson subproject: dependency('weft', fallback: ['weft', 'weft_dep'])
#   2. installed headers + pkg-config: `pkg-config --cflags --libs weft`
#   usage: consumer.sh SOURCE_ROOT
set -euo pipefail
src=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/main.cpp" <<'CPP'
#include <weft/expr/matmul.hpp>
#include <weft/weft.hpp>
int main() {
  weft::Tensor<float> a({2, 2}, {1, 2, 3, 4});
  auto [v, g] = weft::value_and_grad([](auto x) { return weft::sum(weft::matmul(x, x)); }, a);
  // d/dx sum(x x) = 1 x^T + x^T 1 (1 = ones): for this a, [[7, 11], [9, 13]]; value 54
  return v.item() == 54.0f && g(0, 0) == 7.0f && g(1, 1) == 13.0f ? 0 : 1;
}
CPP

# 1. subproject
mkdir -p "$work/sub/subprojects"
ln -s "$src" "$work/sub/subprojects/weft"
cp "$work/main.cpp" "$work/sub/"
cat > "$work/sub/meson.build" <<'MESON'
project('consumer', 'cpp', default_options: ['cpp_std=c++20'])
weft = dependency('weft', fallback: ['weft', 'weft_dep'])
executable('consumer', 'main.cpp', dependencies: weft)
MESON
meson setup "$work/sub/build" "$work/sub" -Dweft:tests=false -Dweft:benches=false -Dweft:examples=false \
  -Dweft:cuda=disabled -Dweft:mpi=disabled >/dev/null
ninja -C "$work/sub/build" >/dev/null
"$work/sub/build/consumer"
echo "subproject: ok"

# 2. install + pkg-config
meson setup "$work/inst-build" "$src" --prefix="$work/prefix" -Dtests=false -Dbenches=false -Dexamples=false \
  -Dcuda=disabled -Dmpi=disabled >/dev/null
meson install -C "$work/inst-build" >/dev/null
pc=$(find "$work/prefix" -name weft.pc -printf '%h')
flags=$(PKG_CONFIG_PATH="$pc" pkg-config --cflags --libs weft)
g++ "$work/main.cpp" -o "$work/pc-consumer" $flags
"$work/pc-consumer"
echo "pkg-config: ok ($flags)"
