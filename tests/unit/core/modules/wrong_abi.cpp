// A module built for another host: its ABI section names another interface revision.
#include <cstdio>
#include <cstdlib>

#include "clusterconnect/plugin.hpp"

// Runs as soon as the module is mapped: leaves a marker file where
// CLUSTERCONNECT_TEST_CTOR_MARKER says, so a test can tell whether the host
// ever loaded this code.
__attribute__((constructor)) static void leave_marker() {
  if (const char* path = std::getenv("CLUSTERCONNECT_TEST_CTOR_MARKER"))
    if (FILE* f = std::fopen(path, "w")) std::fclose(f);
}

namespace {
const char* const caps[] = {"transport:wrong"};
std::unique_ptr<clusterconnect::Module> create(clusterconnect::HostServices&) noexcept { return nullptr; }
const clusterconnect::PluginDescriptor& descriptor() noexcept {
  static const clusterconnect::PluginDescriptor d{"clusterconnect-abi/0 gcc-0.0", "wrong-abi", "0", "", caps, 1, &create};
  return d;
}
}  // namespace

extern "C" BOOST_SYMBOL_EXPORT __attribute__((used, section(".clusterconnect_abi")))
const char clusterconnect_abi_v1[] = "clusterconnect-abi/0 gcc-0.0";
BOOST_DLL_ALIAS(descriptor, clusterconnect_plugin_v1)
