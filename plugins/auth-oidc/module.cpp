#include <memory>

#include "authenticator_factory.hpp"
#include "clusterconnect/plugin.hpp"
#include "oidc_authenticator.hpp"

namespace clusterconnect::oidc {
namespace {

const char* const capabilities[] = {"authenticator:oidc"};

class ThisModule final : public Module {
 public:
  explicit ThisModule(HostServices& host)
      : authenticator_(std::make_shared<auth::AuthenticatorFactory>(
            "authenticator:oidc", [&host](const nlohmann::json& options) -> Result<std::shared_ptr<Authenticator>> {
              auto config = parse_authenticator_options(options);
              if (!config) return fail(config.error());
              return std::shared_ptr<Authenticator>(
                  std::make_shared<OidcAuthenticator>(host.io_context(), std::move(*config), JwksCache::Fetch{}, host.logger()));
            })) {}

  std::shared_ptr<AuthenticatorCapability> authenticator(std::string_view name) noexcept override {
    return name == "oidc" ? authenticator_ : nullptr;
  }

 private:
  std::shared_ptr<auth::AuthenticatorFactory> authenticator_;
};

std::unique_ptr<Module> create(HostServices& host) noexcept try {
  return std::make_unique<ThisModule>(host);
} catch (...) {
  return nullptr;  // the host reports a module that could not be created
}

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "auth-oidc", "0.1.0", "Generic OpenID Connect token validation",
                                  capabilities, std::size(capabilities), &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::oidc

CLUSTERCONNECT_PLUGIN(clusterconnect::oidc::descriptor)
