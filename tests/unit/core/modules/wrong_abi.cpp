// A module built for another host: its ABI section names another interface revision.
#include "clusterconnect/plugin.hpp"

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
