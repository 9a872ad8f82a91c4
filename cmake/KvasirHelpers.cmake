# Helpers that give every folder the same shape: one library target per folder
# (kvasir_<name>, alias kvasir::<name>), one test binary per folder, and binaries in build/bin.
include_guard(GLOBAL)

# Collects the .cc (and .cu when CUDA is on) files of the given folders, leaving out main.cc,
# *_test.cc, *_fuzz.cc and *_benchmark.cc.
function(kvasir_collect_sources out)
  set(files)
  foreach(dir IN LISTS ARGN)
    file(GLOB found CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/${dir}/*.cc")
    list(APPEND files ${found})
  endforeach()
  list(FILTER files EXCLUDE REGEX "(/main\\.cc|_test\\.cc|_fuzz\\.cc|_benchmark\\.cc)$")
  set(${out} ${files} PARENT_SCOPE)
endfunction()

# kvasir_add_library(name [SRCS files...] [DIRS folders...] [DEPS targets...] [PRIVATE_DEPS targets...])
# Without SRCS, the sources are every .cc file of DIRS (default: the folder itself).
function(kvasir_add_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DIRS;DEPS;PRIVATE_DEPS" ${ARGN})
  if(NOT ARG_SRCS)
    if(NOT ARG_DIRS)
      set(ARG_DIRS .)
    endif()
    kvasir_collect_sources(ARG_SRCS ${ARG_DIRS})
  endif()
  if(NOT ARG_SRCS)
    message(STATUS "kvasir: ${name} has no sources yet; target skipped")
    return()
  endif()
  add_library(kvasir_${name} STATIC ${ARG_SRCS})
  add_library(kvasir::${name} ALIAS kvasir_${name})
  target_include_directories(kvasir_${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(kvasir_${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  target_compile_options(kvasir_${name} PRIVATE ${KVASIR_WARNINGS})
endfunction()

# kvasir_add_executable(name SRCS files... DEPS targets...): a binary in build/bin.
function(kvasir_add_executable name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  target_compile_options(${name} PRIVATE ${KVASIR_WARNINGS})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
endfunction()

# kvasir_add_test(name DIRS folders... DEPS targets... [LABELS labels...] [TIMEOUT s])
# Builds kvasir_<name>_tests from every *_test.cc of DIRS and registers each test case with ctest,
# labelled with LABELS (default: unit) and with the binary's name (ctest -L kvasir_<name>_tests).
function(kvasir_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "DIRS;SRCS;DEPS;LABELS" ${ARGN})
  if(NOT KVASIR_BUILD_TESTS)
    return()
  endif()
  set(files ${ARG_SRCS})
  foreach(dir IN LISTS ARG_DIRS)
    file(GLOB found CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/${dir}/*_test.cc")
    list(APPEND files ${found})
  endforeach()
  if(NOT files)
    return()
  endif()
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_executable(kvasir_${name}_tests ${files})
  target_link_libraries(kvasir_${name}_tests PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock
                        GTest::gtest_main)
  target_include_directories(kvasir_${name}_tests PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_definitions(kvasir_${name}_tests
                             PRIVATE KVASIR_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
                                     KVASIR_BINARY_DIR="${PROJECT_BINARY_DIR}")
  target_compile_options(kvasir_${name}_tests PRIVATE ${KVASIR_WARNINGS})
  set_target_properties(kvasir_${name}_tests PROPERTIES RUNTIME_OUTPUT_DIRECTORY
                                                        ${PROJECT_BINARY_DIR}/tests)
  gtest_discover_tests(kvasir_${name}_tests
                       WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
                       PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT}
                                  SKIP_REGULAR_EXPRESSION "KVASIR_SHARED_FIXTURES_MISSING"
                       DISCOVERY_TIMEOUT 60 TEST_LIST kvasir_${name}_tests_TESTS)
  # A second label, the binary's name, added once the discovered list exists (at ctest time):
  # gtest_discover_tests cannot pass a list-valued LABELS through.
  set(labels_file ${CMAKE_CURRENT_BINARY_DIR}/kvasir_${name}_tests_labels.cmake)
  file(WRITE ${labels_file}
       "if(kvasir_${name}_tests_TESTS)\n"
       "  set_tests_properties(\${kvasir_${name}_tests_TESTS} PROPERTIES LABELS "
       "\"${ARG_LABELS};kvasir_${name}_tests\")\n"
       "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${labels_file})
endfunction()

# kvasir_add_fuzzer(name SRCS files... DEPS targets... [SEEDS folder])
# A fuzz target defines LLVMFuzzerTestOneInput. With KVASIR_BUILD_FUZZERS=ON (clang, the `fuzz`
# preset) it links libFuzzer; otherwise it links tests/testing/fuzz_driver.cc, which replays the
# seeds and a few thousand deterministic mutations of them, and runs as an ordinary ctest.
function(kvasir_add_fuzzer name)
  cmake_parse_arguments(ARG "" "SEEDS" "SRCS;DEPS" ${ARGN})
  if(NOT KVASIR_BUILD_TESTS AND NOT KVASIR_BUILD_FUZZERS)
    return()
  endif()
  foreach(src IN LISTS ARG_SRCS)
    if(NOT EXISTS ${src})
      return()
    endif()
  endforeach()
  add_executable(${name} ${ARG_SRCS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/fuzz)
  if(KVASIR_BUILD_FUZZERS)
    target_compile_options(${name} PRIVATE -fsanitize=fuzzer)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  else()
    target_sources(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests/testing/fuzz_driver.cc)
    add_test(NAME ${name} COMMAND ${name} ${ARG_SEEDS} WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
    set_tests_properties(${name} PROPERTIES LABELS fuzz TIMEOUT 300)
  endif()
endfunction()
