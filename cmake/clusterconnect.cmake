# Project-wide compile settings and helpers for modules and binaries.

add_library(clusterconnect_options INTERFACE)
target_compile_options(clusterconnect_options INTERFACE -Wall -Wextra -Wpedantic)
target_compile_definitions(clusterconnect_options INTERFACE
  BOOST_DLL_USE_STD_FS
  BOOST_ASIO_NO_DEPRECATED
  BOOST_BEAST_USE_STD_STRING_VIEW
  SPDLOG_FMT_EXTERNAL
  SPDLOG_COMPILED_LIB)
option(CLUSTERCONNECT_TSAN "Build with ThreadSanitizer (tests/tsan.supp lists what is suppressed and why)" OFF)
if(CLUSTERCONNECT_SANITIZE AND CLUSTERCONNECT_TSAN)
  message(FATAL_ERROR "CLUSTERCONNECT_SANITIZE (ASan+UBSan) and CLUSTERCONNECT_TSAN cannot be combined: use one preset each")
endif()
if(CLUSTERCONNECT_SANITIZE)
  target_compile_options(clusterconnect_options INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(clusterconnect_options INTERFACE -fsanitize=address,undefined)
endif()
if(CLUSTERCONNECT_TSAN)
  target_compile_options(clusterconnect_options INTERFACE -fsanitize=thread -fno-omit-frame-pointer)
  target_link_options(clusterconnect_options INTERFACE -fsanitize=thread)
endif()
# Under the sanitizers GCC's flow analysis reports "may be used uninitialized"
# inside libstdc++'s own headers (<regex> building std::function states):
# false positives that warnings-as-errors would turn into a failed build.
if((CLUSTERCONNECT_SANITIZE OR CLUSTERCONNECT_TSAN) AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(clusterconnect_options INTERFACE -Wno-maybe-uninitialized)
endif()

set(CLUSTERCONNECT_PLUGIN_INSTALL_DIR "${CMAKE_INSTALL_LIBDIR}/connectedk8s/plugins")
# Build-tree plugin directory, laid out like the install tree so binaries find
# their modules at ../lib/connectedk8s/plugins relative to themselves.
set(CLUSTERCONNECT_STAGE_DIR "${CMAKE_BINARY_DIR}/stage")

# clusterconnect_add_module(NAME SOURCES...) builds a loadable module that
# links only the core library.
function(clusterconnect_add_module name)
  add_library(${name} MODULE ${ARGN})
  target_link_libraries(${name} PRIVATE clusterconnect::core clusterconnect_options)
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    OUTPUT_NAME "${name}"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LIBRARY_OUTPUT_DIRECTORY "${CLUSTERCONNECT_STAGE_DIR}/lib/connectedk8s/plugins"
    BUILD_RPATH "\$ORIGIN/../.."
    INSTALL_RPATH "\$ORIGIN/../..")
  # Debug builds of the Beast-heavy modules carry hundreds of MB of DWARF;
  # compressed, they stay well under the loader's size limit.
  target_link_options(${name} PRIVATE -Wl,--no-undefined -Wl,--compress-debug-sections=zlib)
  install(TARGETS ${name} LIBRARY DESTINATION ${CLUSTERCONNECT_PLUGIN_INSTALL_DIR})
endfunction()

# clusterconnect_add_binary(NAME SOURCES...) builds an executable placed in
# the staged bin/ with an $ORIGIN-relative RPATH.
function(clusterconnect_add_binary name)
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE clusterconnect::core clusterconnect_options)
  set_target_properties(${name} PROPERTIES
    RUNTIME_OUTPUT_DIRECTORY "${CLUSTERCONNECT_STAGE_DIR}/bin"
    BUILD_RPATH "\$ORIGIN/../lib"
    INSTALL_RPATH "\$ORIGIN/../lib")
  install(TARGETS ${name} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endfunction()
