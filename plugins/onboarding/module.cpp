#include "clusterconnect/command.hpp"
#include "clusterconnect/plugin.hpp"
#include "connect_command.hpp"

namespace clusterconnect::onboarding {
namespace {

const char* const capabilities[] = {"command:connect"};

class OnboardingModule final : public Module {
 public:
  explicit OnboardingModule(HostServices& host) : host_(host) {}
  std::shared_ptr<CommandCapability> command(std::string_view name) noexcept override {
    if (name != "connect") return nullptr;
    if (!command_) command_ = std::make_shared<ConnectCommand>(host_);
    return command_;
  }

 private:
  HostServices& host_;
  std::shared_ptr<ConnectCommand> command_;
};

std::unique_ptr<Module> create(HostServices& host) noexcept { return std::make_unique<OnboardingModule>(host); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "onboarding", "0.1.0",
                                  "The 'connect' command: registers a cluster with the relay and installs its agent",
                                  capabilities, std::size(capabilities), &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::onboarding

CLUSTERCONNECT_PLUGIN(clusterconnect::onboarding::descriptor)
