# The CUDA backend, one object library per kernel family with its own architecture list:
#   nattn_cuda       backend, planner, common pre/post passes, generic kernels (any sm)
#   nattn_cuda_sm80  fused mma.sync kernels (sm80, sm86, sm89, sm90: all run on the H100)
#   nattn_cuda_sm90  the Hopper family (sm_90a only: wgmma/TMA instructions exist nowhere else)
# CUTLASS/CuTe headers come from the nvidia-cutlass wheel (scripts/setup.sh puts them in .deps/cutlass).
# The default must be set before enable_language, which otherwise picks nvcc's own default.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES 80 86 89 90)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(NATTN_CUTLASS_DIR "${CMAKE_CURRENT_SOURCE_DIR}/.deps/cutlass" CACHE PATH "CUTLASS headers (include/ inside)")
if(NOT EXISTS "${NATTN_CUTLASS_DIR}/include/cute/tensor.hpp")
  message(FATAL_ERROR "CUTLASS headers not found in ${NATTN_CUTLASS_DIR}: run scripts/setup.sh")
endif()
set(NATTN_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}" CACHE STRING "CUDA architectures of the backend and the generic kernels")
set(NATTN_SM80_ARCHS "${NATTN_CUDA_ARCHS}" CACHE STRING "CUDA architectures of the sm80 family")
set(NATTN_SM90_ARCHS "90a" CACHE STRING "CUDA architectures of the sm90 family (empty: not built)")
# Head dims whose fused kernels are compiled (drop some for quicker builds; the plan says which
# configurations are missing and the generic kernels are not used in their place).
set(NATTN_HEAD_DIMS "32;64;128;256" CACHE STRING "Padded head dims of the fused kernels to build")
set(CMAKE_CUDA_STANDARD 17)  # cmake 3.25 does not know nvcc 13 for CUDA20
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

# ptxas reports spills of every kernel; cmake/ptxas_check.py fails the compile on a spill unless
# cmake/spill_allowlist.txt names the kernel with its measured reason.
find_package(Python3 REQUIRED COMPONENTS Interpreter)
set(NATTN_PTXAS_LAUNCHER ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/cmake/ptxas_check.py
    ${CMAKE_CURRENT_SOURCE_DIR}/cmake/spill_allowlist.txt)

function(nattn_cuda_objects name archs)
  add_library(${name} OBJECT ${ARGN})
  set_target_properties(${name} PROPERTIES CUDA_ARCHITECTURES "${archs}" CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON CUDA_EXTENSIONS OFF POSITION_INDEPENDENT_CODE ON
    CUDA_COMPILER_LAUNCHER "${NATTN_PTXAS_LAUNCHER}")
  target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/include ${CMAKE_CURRENT_SOURCE_DIR}/src
    "${NATTN_CUTLASS_DIR}/include")
  target_compile_definitions(${name} PRIVATE NATTN_WITH_CUDA)
  target_compile_options(${name} PRIVATE --expt-relaxed-constexpr -lineinfo -Xptxas=-warn-spills,-v)
endfunction()

nattn_cuda_objects(nattn_cuda "${NATTN_CUDA_ARCHS}"
  src/cuda/backend.cu
  src/cuda/families.cu
  src/cuda/planner.cu
  src/cuda/workspace_pool.cu
  src/cuda/common/delta.cu
  src/cuda/common/dq_convert.cu
  src/cuda/common/layout_copy.cu
  src/cuda/common/merge.cu
  src/cuda/generic/backward.cu
  src/cuda/generic/family.cu
  src/cuda/generic/forward.cu
)

set(sm80_sources src/cuda/sm80/device/dispatch.cu src/cuda/sm80/device/family.cu)
set(sm80_defs "")
foreach(hd IN LISTS NATTN_HEAD_DIMS)
  if(NOT hd MATCHES "^(32|64|128|256)$")
    message(FATAL_ERROR "NATTN_HEAD_DIMS: ${hd} is not one of 32, 64, 128, 256")
  endif()
  list(APPEND sm80_sources src/cuda/sm80/instantiate/hd${hd}.cu)
  list(APPEND sm80_defs NATTN_SM80_HD${hd})
endforeach()
nattn_cuda_objects(nattn_cuda_sm80 "${NATTN_SM80_ARCHS}" ${sm80_sources})
target_compile_definitions(nattn_cuda_sm80 PRIVATE ${sm80_defs})

set(NATTN_CUDA_OBJECT_LIBS nattn_cuda nattn_cuda_sm80)
# The sm90 family's host side is always built; its kernels only when NATTN_SM90_ARCHS is set
# (empty, e.g. for a quick build for a non-Hopper GPU: its rows are then "not built").
set(sm90_sources src/cuda/sm90/device/dispatch.cu src/cuda/sm90/device/family.cu src/cuda/sm90/device/tensor_maps.cu)
set(sm90_defs "")
if(NATTN_SM90_ARCHS)
  foreach(hd IN LISTS NATTN_HEAD_DIMS)
    list(APPEND sm90_sources src/cuda/sm90/instantiate/hd${hd}.cu src/cuda/sm90/instantiate/bwd_hd${hd}.cu)
    list(APPEND sm90_defs NATTN_SM90_HD${hd} NATTN_SM90_BWD_HD${hd})
  endforeach()
  nattn_cuda_objects(nattn_cuda_sm90 "${NATTN_SM90_ARCHS}" ${sm90_sources})
else()
  nattn_cuda_objects(nattn_cuda_sm90 "${NATTN_CUDA_ARCHS}" ${sm90_sources})
endif()
target_compile_definitions(nattn_cuda_sm90 PRIVATE ${sm90_defs})
list(APPEND NATTN_CUDA_OBJECT_LIBS nattn_cuda_sm90)

target_compile_definitions(nattn_objects PUBLIC NATTN_WITH_CUDA)
# Static cudart: the Python package loads libnattn.so with ctypes, with no RPATH to a toolkit.
target_link_libraries(nattn_objects PUBLIC CUDA::cudart_static)
