# The CUDA backend: generic kernels (any sm) and fused sm80-style tensor-core kernels built for
# sm80, sm86, sm89 and sm90 (all of which run on the H100). CUTLASS/CuTe headers come from the
# nvidia-cutlass wheel (scripts/setup.sh puts them in .deps/cutlass).
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
set(NATTN_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}" CACHE STRING "CUDA architectures of the CUDA backend")
set(CMAKE_CUDA_STANDARD 17)  # cmake 3.25 does not know nvcc 13 for CUDA20
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

target_sources(nattn_objects PRIVATE
  src/cuda/backend.cu
  src/cuda/generic/forward.cu
  src/cuda/generic/backward.cu
  src/cuda/sm80/device/fna_forward.cu
  src/cuda/sm80/device/fna_backward.cu
)
set_target_properties(nattn_objects PROPERTIES CUDA_ARCHITECTURES "${NATTN_CUDA_ARCHS}"
  CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON CUDA_EXTENSIONS OFF)
target_compile_definitions(nattn_objects PUBLIC NATTN_WITH_CUDA)
target_include_directories(nattn_objects PRIVATE "${NATTN_CUTLASS_DIR}/include")
target_compile_options(nattn_objects PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo -Xptxas=-warn-spills>)
# Static cudart: the Python package loads libnattn.so with ctypes, with no RPATH to a toolkit.
target_link_libraries(nattn_objects PUBLIC CUDA::cudart_static)
