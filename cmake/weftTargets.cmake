# What each weft target means, written once and read by both routes into a
# CMake build: the installed package (weftConfig.cmake, from weftConfig.cmake.in)
# and the source tree (CMakeLists.txt, for add_subdirectory and FetchContent).
#
# weft is header-only, so every target is an INTERFACE target that compiles
# nothing; it carries include directories, C++20 and the libraries that one
# family of headers needs. Those headers are opt-in by including them, so a
# consumer links only the components whose headers it includes:
#
#   weft::weft   include/, cxx_std_20, Threads (comm/run_local.hpp's ranks are threads)
#   weft::blas   + CBLAS from OpenBLAS      expr/matmul.hpp, kernels/cpu/blas.hpp, nn/
#   weft::zlib   + zlib                     io/idx.hpp (gzip'd IDX files)
#   weft::mpi    + MPI (C API from C++)     comm/transport/mpi.hpp
#   weft::cuda   + CUDA runtime, cuBLAS(Lt) kernels/cuda/*.cuh (compiled by nvcc)
#   weft::nccl   + NCCL and weft::cuda      NCCL has no CMake package on Debian:
#                                           found by nccl.h and libnccl (NCCL_ROOT hints)
#
# The includer sets _weft_include_dir and, for components the user marked as
# required, _weft_required_<component> (then a missing dependency goes through
# find_dependency and its message). The macros set _weft_<component>_found.

set(_weft_components blas zlib mpi cuda nccl)

# In the source tree the targets are GLOBAL so the project that called
# add_subdirectory sees them; in the installed package they are plain imported
# targets, like those of any other config package.
macro(_weft_interface_target _weft_name)
  if(NOT TARGET weft::${_weft_name})
    if(_weft_from_source)
      add_library(weft::${_weft_name} INTERFACE IMPORTED GLOBAL)
    else()
      add_library(weft::${_weft_name} INTERFACE IMPORTED)
    endif()
    set_property(TARGET weft::${_weft_name} APPEND PROPERTY INTERFACE_LINK_LIBRARIES ${ARGN})
  endif()
endmacro()

# A required component's dependency goes through find_dependency (it forwards
# QUIET and REQUIRED and, if the dependency is missing, ends the package search
# with a message); an optional one is looked for quietly and may be absent.
macro(_weft_find _weft_comp)
  if(_weft_required_${_weft_comp})
    find_dependency(${ARGN})
  else()
    find_package(${ARGN} QUIET)
  endif()
endmacro()

macro(_weft_core)
  if(NOT TARGET weft::weft)
    if(_weft_from_source)
      find_package(Threads REQUIRED)
    else()
      find_dependency(Threads)
    endif()
    _weft_interface_target(weft Threads::Threads)
    set_target_properties(weft::weft PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${_weft_include_dir}"
      INTERFACE_COMPILE_FEATURES cxx_std_20)
  endif()
endmacro()

macro(_weft_component_blas)
  # Debian's libopenblas*-dev ships OpenBLASConfig.cmake (variables, no target),
  # which also names the folder of its cblas.h; elsewhere FindBLAS and cblas.h.
  set(_weft_blas_found FALSE)
  find_package(OpenBLAS CONFIG QUIET)
  if(OpenBLAS_FOUND AND OpenBLAS_LIBRARIES)
    _weft_interface_target(blas weft::weft ${OpenBLAS_LIBRARIES})
    set_property(TARGET weft::blas PROPERTY INTERFACE_INCLUDE_DIRECTORIES ${OpenBLAS_INCLUDE_DIRS})
    set(_weft_blas_found TRUE)
  else()
    if(NOT DEFINED BLA_VENDOR)
      set(BLA_VENDOR OpenBLAS)
    endif()
    _weft_find(blas BLAS)
    find_path(WEFT_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread openblas-openmp openblas-serial)
    if(BLAS_FOUND AND WEFT_CBLAS_INCLUDE_DIR)
      _weft_interface_target(blas weft::weft BLAS::BLAS)
      set_property(TARGET weft::blas PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${WEFT_CBLAS_INCLUDE_DIR}")
      set(_weft_blas_found TRUE)
    else()
      set(_weft_blas_missing "CBLAS: found no OpenBLASConfig.cmake, and BLAS or cblas.h is missing (set OpenBLAS_DIR or WEFT_CBLAS_INCLUDE_DIR)")
    endif()
  endif()
endmacro()

macro(_weft_component_zlib)
  _weft_find(zlib ZLIB)
  set(_weft_zlib_found ${ZLIB_FOUND})
  if(ZLIB_FOUND)
    _weft_interface_target(zlib weft::weft ZLIB::ZLIB)
  else()
    set(_weft_zlib_missing "zlib not found (FindZLIB: set ZLIB_ROOT)")
  endif()
endmacro()

macro(_weft_component_mpi)
  _weft_find(mpi MPI COMPONENTS CXX)
  set(_weft_mpi_found ${MPI_CXX_FOUND})
  if(MPI_CXX_FOUND)
    _weft_interface_target(mpi weft::weft MPI::MPI_CXX)
  else()
    set(_weft_mpi_missing "MPI for C++ not found (FindMPI: set MPI_HOME or MPI_CXX_COMPILER)")
  endif()
endmacro()

macro(_weft_component_cuda)
  _weft_find(cuda CUDAToolkit 11)
  set(_weft_cuda_found ${CUDAToolkit_FOUND})
  if(CUDAToolkit_FOUND)
    _weft_interface_target(cuda weft::weft CUDA::cudart CUDA::cublas CUDA::cublasLt)
  else()
    set(_weft_cuda_missing "CUDA toolkit 11+ not found (FindCUDAToolkit: set CUDAToolkit_ROOT)")
  endif()
endmacro()

macro(_weft_component_nccl)
  set(_weft_nccl_found FALSE)
  if(_weft_required_nccl)
    set(_weft_required_cuda TRUE)
  endif()
  _weft_component_cuda()
  if(_weft_cuda_found)
    find_path(WEFT_NCCL_INCLUDE_DIR nccl.h
      HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_INCLUDE_DIRS} "${CUDAToolkit_LIBRARY_ROOT}"
      PATH_SUFFIXES include)
    find_library(WEFT_NCCL_LIBRARY nccl
      HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} "${CUDAToolkit_LIBRARY_DIR}" "${CUDAToolkit_LIBRARY_ROOT}"
      PATH_SUFFIXES lib lib64)
    if(WEFT_NCCL_INCLUDE_DIR AND WEFT_NCCL_LIBRARY)
      _weft_interface_target(nccl weft::cuda "${WEFT_NCCL_LIBRARY}")
      set_property(TARGET weft::nccl PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${WEFT_NCCL_INCLUDE_DIR}")
      set(_weft_nccl_found TRUE)
    else()
      set(_weft_nccl_missing "NCCL: nccl.h or libnccl not found (set NCCL_ROOT, or WEFT_NCCL_INCLUDE_DIR and WEFT_NCCL_LIBRARY)")
    endif()
  else()
    set(_weft_nccl_missing "NCCL: needs the CUDA toolkit, which was not found")
  endif()
endmacro()

# Called by name, not through cmake_language(CALL): a required dependency's
# find_dependency must be able to end the config file with return(), as it does
# from a macro expanded in place.
macro(_weft_component _weft_which)
  if("${_weft_which}" STREQUAL "blas")
    _weft_component_blas()
  elseif("${_weft_which}" STREQUAL "zlib")
    _weft_component_zlib()
  elseif("${_weft_which}" STREQUAL "mpi")
    _weft_component_mpi()
  elseif("${_weft_which}" STREQUAL "cuda")
    _weft_component_cuda()
  elseif("${_weft_which}" STREQUAL "nccl")
    _weft_component_nccl()
  endif()
endmacro()
