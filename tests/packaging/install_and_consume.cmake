# cmake -P script run by the packaging test; every step must succeed, or the test fails with the
# step's output.
function(step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "packaging: ${name} failed (exit ${rc})\n${out}\n${err}")
  endif()
  message(STATUS "packaging: ${name}: ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${PREFIX} ${CONSUMER_BINARY})
step("install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX})

foreach(required
    ${INCLUDEDIR}/instantid/error.hpp ${INCLUDEDIR}/instantid/tensor.hpp
    ${INCLUDEDIR}/instantid/patch.hpp ${LIBDIR}/cmake/instantid/instantidConfig.cmake
    ${LIBDIR}/cmake/instantid/instantidTargets.cmake ${LIBDIR}/pkgconfig/instantid.pc
    ${LIBDIR}/libinstantid_core.a)
  if(NOT EXISTS ${PREFIX}/${required})
    message(FATAL_ERROR "packaging: ${PREFIX}/${required} was not installed")
  endif()
endforeach()

step("configure consumer" ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE} -B ${CONSUMER_BINARY}
     -DCMAKE_PREFIX_PATH=${PREFIX} -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
     -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_C_COMPILER=${C_COMPILER})
step("build consumer" ${CMAKE_COMMAND} --build ${CONSUMER_BINARY})
step("run consumer" ${CONSUMER_BINARY}/consumer)
message(STATUS "${step_output}")
if(EXISTS ${CONSUMER_BINARY}/consumer_c)
  step("run C consumer" ${CONSUMER_BINARY}/consumer_c)
  message(STATUS "${step_output}")
endif()

# pkg-config: the same C++ program compiled and linked from the .pc file alone.
find_program(PKG_CONFIG_EXECUTABLE pkg-config)
if(PKG_CONFIG_EXECUTABLE)
  set(ENV{PKG_CONFIG_PATH} "${PREFIX}/${LIBDIR}/pkgconfig")
  step("pkg-config flags" ${PKG_CONFIG_EXECUTABLE} --cflags --libs --static instantid)
  string(STRIP "${step_output}" flags)
  separate_arguments(flags UNIX_COMMAND "${flags}")
  step("pkg-config build" ${CXX_COMPILER} -std=c++17 ${CONSUMER_SOURCE}/main.cpp -o
       ${CONSUMER_BINARY}/consumer_pkgconfig ${flags})
  step("run pkg-config consumer" ${CONSUMER_BINARY}/consumer_pkgconfig)
else()
  message(WARNING "packaging: pkg-config not found; the .pc file was installed but not tried")
endif()
