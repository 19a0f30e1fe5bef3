#!/usr/bin/env bash
# weft as a dependency, every way a consumer gets it, each built and run:
#   1. a Meson subproject: dependency('weft', fallback: ['weft', 'weft_dep'])
#   2. installed headers + pkg-config: `pkg-config --cflags --libs weft`
#   3. installed CMake package: find_package(weft CONFIG REQUIRED COMPONENTS blas)
#      (also: its version file, and a missing required component fails)
#   4. the source tree in CMake: FetchContent_MakeAvailable(weft), i.e. add_subdirectory
# Routes 3 and 4 need cmake; without it they are skipped and the test reports
# "skipped" (exit 77) after routes 1 and 2 pass.
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

# The CMake consumers also run one collective on two ranks that are threads
# (weft::weft's Threads), so the core target is proven to link as well as compile.
cat > "$work/cmake_main.cpp" <<'CPP'
#include <weft/comm/algorithm/ring.hpp>
#include <weft/comm/communicator.hpp>
#include <weft/comm/run_local.hpp>
#include <weft/expr/matmul.hpp>
#include <weft/weft.hpp>
#include <cstdio>
int main() {
  weft::Tensor<float> a({2, 2}, {1, 2, 3, 4});
  auto [v, g] = weft::value_and_grad([](auto x) { return weft::sum(weft::matmul(x, x)); }, a);
  // d/dx sum(x x) = 1 x^T + x^T 1 (1 = ones): for this a, [[7, 11], [9, 13]]; value 54
  if (!(v.item() == 54.0f && g(0, 0) == 7.0f && g(1, 1) == 13.0f)) return std::puts("matmul: wrong"), 1;
  float sums[2][3] = {};
  weft::comm::run_local(2, [&](weft::comm::ThreadTransport& t) {
    weft::comm::Communicator<weft::comm::Ring, weft::comm::ThreadTransport> c{t};
    float* x = sums[t.rank()];
    for (int i = 0; i < 3; ++i) x[i] = static_cast<float>((t.rank() + 1) * (i + 1));
    c.allreduce(x, x, 3);  // rank 0: 1 2 3, rank 1: 2 4 6; sum 3 6 9 on both
  });
  for (auto& x : sums)
    if (!(x[0] == 3.0f && x[1] == 6.0f && x[2] == 9.0f)) return std::puts("ring allreduce: wrong"), 1;
  return 0;
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

if ! command -v cmake >/dev/null; then
  echo "skip: cmake not installed (apt-get install cmake): CMake routes not tested"
  exit 77
fi
# Meson puts the package next to the pkg-config file: <libdir>/cmake/weft.
config=$(find "$work/prefix" -name weftConfig.cmake -printf '%h')
[ "$config" = "$(dirname "$pc")/cmake/weft" ] || { echo "FAIL: weftConfig.cmake is in '$config', not in <libdir>/cmake/weft beside <libdir>/pkgconfig ($pc)"; exit 1; }
[ -f "$config/weftConfigVersion.cmake" ] || { echo "FAIL: no weftConfigVersion.cmake in $config"; exit 1; }
cmake_build() {  # cmake_build DIR [cmake args...]: configure and build into DIR/build, log in DIR/log
  local dir=$1
  shift
  if ! { cmake -S "$dir" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release "$@" && cmake --build "$dir/build"; } >"$dir/log" 2>&1; then
    tail -40 "$dir/log"
    return 1
  fi
}

# 3. installed CMake package, found through CMAKE_PREFIX_PATH as a user would
mkdir -p "$work/cm-find"
cp "$work/cmake_main.cpp" "$work/cm-find/main.cpp"
cat > "$work/cm-find/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.17)
project(consumer CXX)
find_package(weft 0.1 CONFIG REQUIRED COMPONENTS blas OPTIONAL_COMPONENTS zlib mpi cuda nccl)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE weft::blas)
# Each optional component that was found is a target that brings its dependency.
foreach(c zlib mpi cuda nccl)
  if(weft_${c}_FOUND AND NOT TARGET weft::${c})
    message(FATAL_ERROR "weft_${c}_FOUND but no target weft::${c}")
  endif()
endforeach()
if(weft_zlib_FOUND)
  file(WRITE "${CMAKE_BINARY_DIR}/idx.cpp" "#include <weft/io/idx.hpp>\nint main() {}\n")
  add_executable(consumer_zlib "${CMAKE_BINARY_DIR}/idx.cpp")
  target_link_libraries(consumer_zlib PRIVATE weft::zlib)
endif()
if(weft_mpi_FOUND)
  file(WRITE "${CMAKE_BINARY_DIR}/mpi.cpp" "#include <weft/comm/transport/mpi.hpp>\nint main() {}\n")
  add_executable(consumer_mpi "${CMAKE_BINARY_DIR}/mpi.cpp")
  target_link_libraries(consumer_mpi PRIVATE weft::mpi)
endif()
if(weft_nccl_FOUND)  # headers and libraries only: no nvcc needed to include nccl.h
  file(WRITE "${CMAKE_BINARY_DIR}/nccl.cpp" "#include <nccl.h>\n#include <weft/weft.hpp>\nint main() { int v = 0; return ncclGetVersion(&v); }\n")
  add_executable(consumer_nccl "${CMAKE_BINARY_DIR}/nccl.cpp")
  target_link_libraries(consumer_nccl PRIVATE weft::nccl)
endif()
message(STATUS "weft ${weft_VERSION} from ${weft_DIR}: zlib ${weft_zlib_FOUND}, mpi ${weft_mpi_FOUND}, cuda ${weft_cuda_FOUND}, nccl ${weft_nccl_FOUND}")
CMAKE
cmake_build "$work/cm-find" -DCMAKE_PREFIX_PATH="$work/prefix"
"$work/cm-find/build/consumer"
echo "cmake find_package: ok ($(grep -o 'weft [0-9.]* from .*' "$work/cm-find/log"))"

# The version file and the component check: an incompatible version and an
# unknown required component make the package "not found", with a reason.
mkdir -p "$work/cm-probe"
cat > "$work/cm-probe/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.17)
project(probe CXX)
find_package(weft 0.2 CONFIG QUIET)
if(weft_FOUND)
  message(FATAL_ERROR "weft ${weft_VERSION} accepted for a request of 0.2")
endif()
unset(weft_DIR CACHE)
find_package(weft 0.1...<1 CONFIG QUIET COMPONENTS no_such_component)
if(weft_FOUND OR NOT weft_NOT_FOUND_MESSAGE MATCHES "no_such_component")
  message(FATAL_ERROR "a missing required component was not reported: '${weft_NOT_FOUND_MESSAGE}'")
endif()
unset(weft_DIR CACHE)
find_package(weft 0.1...<1 CONFIG REQUIRED)
message(STATUS "weft ${weft_VERSION}: version file and component check ok")
CMAKE
cmake_build "$work/cm-probe" -DCMAKE_PREFIX_PATH="$work/prefix"
echo "cmake version file and components: ok"

# 4. the source tree: FetchContent, pointed at this checkout the documented way
# (FETCHCONTENT_SOURCE_DIR_WEFT overrides the declared URL, which is never
# fetched), which is add_subdirectory underneath.
mkdir -p "$work/cm-sub"
cp "$work/cmake_main.cpp" "$work/cm-sub/main.cpp"
cat > "$work/cm-sub/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.17)
project(consumer CXX)
include(FetchContent)
set(WEFT_COMPONENTS blas)
FetchContent_Declare(weft GIT_REPOSITORY https://example.invalid/weft.git GIT_TAG main)
FetchContent_MakeAvailable(weft)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE weft::blas)
CMAKE
cmake_build "$work/cm-sub" -DFETCHCONTENT_SOURCE_DIR_WEFT="$src"
"$work/cm-sub/build/consumer"
echo "cmake FetchContent / add_subdirectory: ok ($(grep -o 'weft [0-9.]*: .*' "$work/cm-sub/log"))"
