#include "clusterconnect/command.hpp"
#include "clusterconnect/plugin.hpp"
#include "proxy_command.hpp"

namespace clusterconnect::proxy {
namespace {

const char* const capabilities[] = {"command:proxy"};

class ProxyModule final : public Module {
 public:
  explicit ProxyModule(HostServices& host) : host_(host) {}
  std::shared_ptr<CommandCapability> command(std::string_view name) noexcept override {
    if (name != "proxy") return nullptr;
    if (!command_) command_ = std::make_shared<ProxyCommand>(host_);
    return command_;
  }

 private:
  HostServices& host_;
  std::shared_ptr<ProxyCommand> command_;
};

std::unique_ptr<Module> create(HostServices& host) noexcept { return std::make_unique<ProxyModule>(host); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "proxy", "0.1.0",
                                  "The 'proxy' command: local kubectl endpoint for a connected cluster",
                                  capabilities, std::size(capabilities), &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::proxy

CLUSTERCONNECT_PLUGIN(clusterconnect::proxy::descriptor)
