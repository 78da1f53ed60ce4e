# Installation and packaging: `cmake --install` puts the public headers, the device templates, every
# component library, the `instantid` command line and a CMake package (find_package(instantid))
# plus a pkg-config file under the prefix. Included at the end of the top-level CMakeLists.txt,
# after every component has been added.

include(CMakePackageConfigHelpers)

set(INSTANTID_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/instantid
    CACHE STRING "Where the CMake package of instantid is installed, relative to the prefix")

get_property(instantid_components GLOBAL PROPERTY INSTANTID_COMPONENTS)

# Everything an exported target links to must itself be exported or be an imported target that
# the package config finds again; collect our own (non-imported) targets reachable from the
# components, e.g. instantid_cudnn or a component's internal kernel library.
function(instantid_collect_own_targets out_var)
  set(pending ${ARGN})
  set(seen)
  while(pending)
    list(POP_FRONT pending target)
    if(NOT TARGET ${target} OR target IN_LIST seen)
      continue()
    endif()
    get_target_property(aliased ${target} ALIASED_TARGET)
    if(aliased)
      list(APPEND pending ${aliased})
      continue()
    endif()
    get_target_property(imported ${target} IMPORTED)
    if(imported)
      continue()
    endif()
    list(APPEND seen ${target})
    get_target_property(type ${target} TYPE)
    set(links)
    if(NOT type STREQUAL "INTERFACE_LIBRARY")
      get_target_property(direct ${target} LINK_LIBRARIES)
      if(direct)
        list(APPEND links ${direct})
      endif()
    endif()
    get_target_property(interface ${target} INTERFACE_LINK_LIBRARIES)
    if(interface)
      list(APPEND links ${interface})
    endif()
    foreach(link ${links})
      # $<LINK_ONLY:x> and other simple generator expressions wrap a target name.
      string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" link "${link}")
      if(TARGET ${link})
        list(APPEND pending ${link})
      endif()
    endforeach()
  endwhile()
  set(${out_var} ${seen} PARENT_SCOPE)
endfunction()

instantid_collect_own_targets(instantid_export_targets instantid instantid_headers ${instantid_components})

set_target_properties(instantid_headers PROPERTIES EXPORT_NAME headers)
set_target_properties(instantid PROPERTIES EXPORT_NAME instantid)
foreach(target ${instantid_export_targets})
  get_target_property(export_name ${target} EXPORT_NAME)
  if(NOT export_name AND target MATCHES "^instantid_(.+)$")
    set_target_properties(${target} PROPERTIES EXPORT_NAME ${CMAKE_MATCH_1})
  endif()
endforeach()

install(TARGETS ${instantid_export_targets}
  EXPORT instantidTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/instantid
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp" PATTERN "*.h")
# Device templates: kernels/instantid/kernels/*.cuh → <prefix>/include/instantid/kernels/.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/kernels/instantid
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.cuh" PATTERN "*.hpp")

if(TARGET instantid_cli)
  install(TARGETS instantid_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
# `instantid bench` runs bench_cuda from beside itself once installed.
if(TARGET bench_cuda)
  install(TARGETS bench_cuda RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

install(EXPORT instantidTargets
  NAMESPACE instantid::
  DESTINATION ${INSTANTID_INSTALL_CMAKEDIR}
  FILE instantidTargets.cmake)

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/instantidConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cmake/instantidConfig.cmake
  INSTALL_DESTINATION ${INSTANTID_INSTALL_CMAKEDIR})
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/cmake/instantidConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/cmake/instantidConfig.cmake
  ${PROJECT_BINARY_DIR}/cmake/instantidConfigVersion.cmake
  DESTINATION ${INSTANTID_INSTALL_CMAKEDIR})

# pkg-config: static libraries, so dependents come before what they depend on (reverse of the
# order components were added, which follows their dependencies).
set(INSTANTID_PC_LIBS "")
set(pc_order ${instantid_components})
list(REVERSE pc_order)
list(APPEND pc_order ${instantid_export_targets})
list(REMOVE_DUPLICATES pc_order)
foreach(target ${pc_order})
  get_target_property(type ${target} TYPE)
  if(NOT type STREQUAL "STATIC_LIBRARY")
    continue()
  endif()
  get_target_property(output_name ${target} OUTPUT_NAME)
  if(NOT output_name)
    set(output_name ${target})
  endif()
  string(APPEND INSTANTID_PC_LIBS " -l${output_name}")
endforeach()
# Relocatable: the prefix is found from where the .pc file lies.
file(RELATIVE_PATH INSTANTID_PC_PREFIX_FROM_PCDIR
     /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" INSTANTID_PC_PREFIX_FROM_PCDIR "${INSTANTID_PC_PREFIX_FROM_PCDIR}")
set(INSTANTID_PC_LIBS_PRIVATE "-lonnx -lonnx_proto -lpthread")
set(INSTANTID_PC_CFLAGS_EXTRA "")
if(INSTANTID_HAS_CUDA)
  get_filename_component(cudnn_dir "${CUDNN_LIBRARY}" DIRECTORY)
  string(APPEND INSTANTID_PC_LIBS_PRIVATE
    " -L${CUDAToolkit_LIBRARY_DIR} -L${cudnn_dir} -lcudnn -lcublasLt -lcublas -lcudart")
  foreach(dir ${CUDAToolkit_INCLUDE_DIRS} ${CUDNN_INCLUDE_DIR})
    string(APPEND INSTANTID_PC_CFLAGS_EXTRA " -I${dir}")
  endforeach()
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/instantid.pc.in ${PROJECT_BINARY_DIR}/instantid.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/instantid.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
