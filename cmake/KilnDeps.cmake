# kiln's third-party packages, each found once with the Debian package that provides it. A package
# that is missing stops the configure step with one message naming that Debian package and the
# command that installs everything (`make deps`), instead of CMake's own trace from deep inside a
# find module. scripts/install-deps.sh installs the same packages.
#
#   kiln_require(NAME DEBIAN_PACKAGE [find_package arguments...])
#   kiln_require_pkgconfig(PREFIX MODULE DEBIAN_PACKAGE)   # an IMPORTED GLOBAL PkgConfig::PREFIX

function(kiln_missing what debian_package)
  message(FATAL_ERROR
    "kiln: ${what} was not found. Install the Debian package '${debian_package}' "
    "(`make deps` installs every package kiln needs: scripts/install-deps.sh), "
    "then configure again.")
endfunction()

macro(kiln_require name debian_package)
  find_package(${name} ${ARGN} QUIET)
  if(NOT ${name}_FOUND)
    kiln_missing("${name}" "${debian_package}")
  endif()
endmacro()

macro(kiln_require_pkgconfig prefix module debian_package)
  if(NOT PKG_CONFIG_FOUND)
    find_package(PkgConfig QUIET)
    if(NOT PKG_CONFIG_FOUND)
      kiln_missing("pkg-config" "pkg-config")
    endif()
  endif()
  pkg_check_modules(${prefix} QUIET IMPORTED_TARGET GLOBAL ${module})
  if(NOT ${prefix}_FOUND)
    kiln_missing("${module} (pkg-config)" "${debian_package}")
  endif()
endmacro()
