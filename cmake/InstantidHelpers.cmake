# Helpers shared by the component CMakeLists files.

# Warnings for our own code (not for third-party headers, which come in as SYSTEM).
function(instantid_warnings target)
  set(cxx_flags -Wall -Wextra -Wpedantic -Wno-unused-parameter)
  if(INSTANTID_WERROR)
    list(APPEND cxx_flags -Werror)
  endif()
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${cxx_flags}>)
  if(INSTANTID_HAS_CUDA)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall --expt-relaxed-constexpr -lineinfo>)
    if(INSTANTID_WERROR)
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
    endif()
  endif()
  if(INSTANTID_SANITIZE OR INSTANTID_FUZZ)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all>)
    target_link_options(${target} PUBLIC -fsanitize=address,undefined)
  endif()
  if(INSTANTID_FUZZ AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    # Coverage feedback for libFuzzer from the parsers; tests/fuzz links the fuzzer runtime itself.
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=fuzzer-no-link>)
  endif()
endfunction()

# instantid_add_component(<name> SOURCES ... [DEPS ...] [PRIVATE_DEPS ...])
# Builds the static library instantid_<name> (alias instantid::<name>) that instantid::instantid
# aggregates.
function(instantid_add_component name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  set(target instantid_${name})
  add_library(${target} STATIC ${ARG_SOURCES})
  add_library(instantid::${name} ALIAS ${target})
  target_link_libraries(${target} PUBLIC instantid_headers ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/src)
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${name})
  instantid_warnings(${target})
  set_property(GLOBAL APPEND PROPERTY INSTANTID_COMPONENTS ${target})
endfunction()
