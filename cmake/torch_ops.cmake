# nattn_torch_ops: the dispatcher ops nattn_native::na_forward / na_backward (src/torch_ops/ops.cpp),
# built on torch's stable C ABI when a Python with torch is found. Optional: without it the
# Python package binds libnattn with ctypes alone (nattn.op_path() says which path runs).
#   NATTN_TORCH_OPS              AUTO (build when torch's headers are found), ON or OFF
#   NATTN_TORCH_TARGET_VERSION   oldest torch the library must load into (major.minor); the
#                                stable headers then use only what that version exports
find_package(Python3 COMPONENTS Interpreter)
set(nattn_torch_dir "")
if(Python3_Interpreter_FOUND)
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
            "import os, torch; print(os.path.dirname(torch.__file__) + ';' + torch.__version__.split('+')[0])"
    OUTPUT_VARIABLE nattn_torch_found OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE nattn_torch_rc)
  if(nattn_torch_rc EQUAL 0)
    list(GET nattn_torch_found 0 nattn_torch_dir)
    list(GET nattn_torch_found 1 nattn_torch_version)
  endif()
endif()
# Headers older than the target lack what it needs (the stable ABI grows each release).
if(nattn_torch_dir AND nattn_torch_version VERSION_LESS NATTN_TORCH_TARGET_VERSION)
  message(STATUS "nattn: torch ${nattn_torch_version} is older than NATTN_TORCH_TARGET_VERSION ${NATTN_TORCH_TARGET_VERSION}")
  set(nattn_torch_dir "")
endif()
if(nattn_torch_dir AND EXISTS "${nattn_torch_dir}/include/torch/csrc/stable/library.h"
   AND EXISTS "${nattn_torch_dir}/lib/libtorch_cpu.so")
  message(STATUS "nattn: torch ops library ON (torch ${nattn_torch_version} at ${nattn_torch_dir}, target ${NATTN_TORCH_TARGET_VERSION})")
elseif(NATTN_TORCH_OPS STREQUAL "ON")
  message(FATAL_ERROR "NATTN_TORCH_OPS=ON but no torch with stable-ABI headers was found (python: ${Python3_EXECUTABLE})")
else()
  message(STATUS "nattn: torch ops library OFF (no torch with torch/csrc/stable headers found)")
  return()
endif()

string(REPLACE "." ";" nattn_tv "${NATTN_TORCH_TARGET_VERSION}")
list(GET nattn_tv 0 nattn_tv_major)
list(GET nattn_tv 1 nattn_tv_minor)
math(EXPR nattn_tv_hex "(${nattn_tv_major} << 8) | ${nattn_tv_minor}" OUTPUT_FORMAT HEXADECIMAL)
string(REPLACE "0x" "" nattn_tv_hex "${nattn_tv_hex}")
string(LENGTH "${nattn_tv_hex}" nattn_tv_len)
if(nattn_tv_len LESS 4)
  string(REPEAT "0" 4 nattn_pad)
  math(EXPR nattn_pad_len "4 - ${nattn_tv_len}")
  string(SUBSTRING "${nattn_pad}" 0 ${nattn_pad_len} nattn_pad)
  set(nattn_tv_hex "${nattn_pad}${nattn_tv_hex}")
endif()

add_library(nattn_torch_ops SHARED src/torch_ops/ops.cpp)
target_include_directories(nattn_torch_ops SYSTEM PRIVATE "${nattn_torch_dir}/include")
target_include_directories(nattn_torch_ops PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/include")
# TORCH_TARGET_VERSION = major << 56 | minor << 48 (torch/csrc/stable/version.h).
target_compile_definitions(nattn_torch_ops PRIVATE TORCH_TARGET_VERSION=0x${nattn_tv_hex}000000000000)
target_compile_options(nattn_torch_ops PRIVATE -Wall -Wextra)
# libtorch_cpu.so exports the stable C ABI; linked by name (no rpath): torch has loaded it by the
# time the ops library is loaded, and the loader reuses that copy. libnattn.so: beside this
# library in the installed package ($ORIGIN) and in the build folder.
target_link_libraries(nattn_torch_ops PRIVATE nattn_shared "${nattn_torch_dir}/lib/libtorch_cpu.so" ${CMAKE_DL_LIBS})
set_target_properties(nattn_torch_ops PROPERTIES INSTALL_RPATH "$ORIGIN" SKIP_BUILD_RPATH OFF)
if(NATTN_PYTHON)
  install(TARGETS nattn_torch_ops LIBRARY DESTINATION nattn)
endif()
