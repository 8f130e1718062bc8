// A well-formed third-party module, for install/remove tests.
#include "clusterconnect/plugin.hpp"

namespace {
const char* const caps[] = {"credential:static-test"};
class M final : public clusterconnect::Module {};
std::unique_ptr<clusterconnect::Module> create(clusterconnect::HostServices&) noexcept { return std::make_unique<M>(); }
const clusterconnect::PluginDescriptor& descriptor() noexcept {
  static const clusterconnect::PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "extra", "1.2.3", "test module", caps, 1, &create};
  return d;
}
}  // namespace
CLUSTERCONNECT_PLUGIN(descriptor)
