# A missing third-party package stops `cmake` with a message that names the Debian package and
# `make deps` (cmake/KilnDeps.cmake), for a find_package package and for a pkg-config module.
#   cmake -DKILN_SOURCE=<repo> -DWORK=<scratch folder> -P missing_dependency.cmake
foreach(kind package pkgconfig)
  set(project ${WORK}/${kind})
  file(REMOVE_RECURSE ${project})
  if(kind STREQUAL "package")
    set(call "kiln_require(KilnNoSuchPackage kiln-no-such-deb)")
  else()
    set(call "kiln_require_pkgconfig(NOSUCH kiln-no-such-module kiln-no-such-deb)")
  endif()
  file(WRITE ${project}/CMakeLists.txt
       "cmake_minimum_required(VERSION 3.25)\nproject(probe LANGUAGES NONE)\n"
       "include(${KILN_SOURCE}/cmake/KilnDeps.cmake)\n${call}\n")
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${project} -B ${project}/build
                  RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(status EQUAL 0)
    message(FATAL_ERROR "${kind}: configuring with a missing dependency succeeded")
  endif()
  string(REGEX REPLACE "[ \n]+" " " text "${out}${err}")  # CMake wraps long messages
  foreach(expected "Install the Debian package 'kiln-no-such-deb'" "make deps")
    string(FIND "${text}" "${expected}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "${kind}: the configure error does not say \"${expected}\":\n${out}${err}")
    endif()
  endforeach()
endforeach()
message(STATUS "both missing dependencies were named with their Debian package")
