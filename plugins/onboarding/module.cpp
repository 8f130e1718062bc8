#include "cluster_commands.hpp"
#include "clusterconnect/command.hpp"
#include "clusterconnect/plugin.hpp"
#include "connect_command.hpp"

namespace clusterconnect::onboarding {
namespace {

const char* const capabilities[] = {"command:connect", "command:show", "command:list", "command:delete"};

class OnboardingModule final : public Module {
 public:
  explicit OnboardingModule(HostServices& host) : host_(host) {}
  std::shared_ptr<CommandCapability> command(std::string_view name) noexcept override {
    if (name == "connect") {
      if (!connect_) connect_ = std::make_shared<ConnectCommand>(host_);
      return connect_;
    }
    const ClusterCommand::Verb verb = name == "show"     ? ClusterCommand::Verb::show
                                      : name == "list"   ? ClusterCommand::Verb::list
                                      : name == "delete" ? ClusterCommand::Verb::remove
                                                         : ClusterCommand::Verb::show;
    if (name != "show" && name != "list" && name != "delete") return nullptr;
    auto& slot = others_[static_cast<int>(verb)];
    if (!slot) slot = std::make_shared<ClusterCommand>(host_, verb);
    return slot;
  }

 private:
  HostServices& host_;
  std::shared_ptr<ConnectCommand> connect_;
  std::shared_ptr<ClusterCommand> others_[3];
};

std::unique_ptr<Module> create(HostServices& host) noexcept { return std::make_unique<OnboardingModule>(host); }

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{
      CLUSTERCONNECT_ABI_STRING,
      "onboarding",
      "0.1.0",
      "connect, show, list, delete: onboarding clusters to the relay and installing their agent",
      capabilities,
      std::size(capabilities),
      &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::onboarding

CLUSTERCONNECT_PLUGIN(clusterconnect::onboarding::descriptor)
