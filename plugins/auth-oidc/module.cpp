#include <exception>
#include <memory>
#include <string>

#include "authenticator_factory.hpp"
#include "clusterconnect/plugin.hpp"
#include "oidc_authenticator.hpp"
#include "oidc_credential.hpp"

namespace clusterconnect::oidc {
namespace {

const char* const capabilities[] = {"credential:oidc", "authenticator:oidc"};

class CredentialFactory final : public CredentialCapability {
 public:
  Result<std::shared_ptr<TokenCredential>> create(const nlohmann::json& options) noexcept override try {
    auto config = parse_credential_options(options);
    if (!config) return fail(config.error());
    return std::shared_ptr<TokenCredential>(std::make_shared<OidcCredential>(std::move(*config)));
  } catch (const std::exception& e) {
    return fail(std::string("credential:oidc: ") + e.what());
  }
};

// Both capabilities of the module, made once; the host asks by name.
class ThisModule final : public Module {
 public:
  explicit ThisModule(HostServices& host)
      : credential_(std::make_shared<CredentialFactory>()),
        authenticator_(auth::make_authenticator_factory<OidcAuthenticator>("authenticator:oidc", host,
                                                                           parse_authenticator_options)) {}

  std::shared_ptr<CredentialCapability> credential(std::string_view name) noexcept override {
    return name == "oidc" ? credential_ : nullptr;
  }
  std::shared_ptr<AuthenticatorCapability> authenticator(std::string_view name) noexcept override {
    return name == "oidc" ? authenticator_ : nullptr;
  }

 private:
  const std::shared_ptr<CredentialCapability> credential_;
  const std::shared_ptr<AuthenticatorCapability> authenticator_;
};

std::unique_ptr<Module> create(HostServices& host) noexcept try {
  return std::make_unique<ThisModule>(host);
} catch (...) {
  return nullptr;  // the host reports a module that could not be created
}

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING,
                                  "auth-oidc",
                                  "0.1.0",
                                  "Generic OpenID Connect: tokens for the proxy, token validation for the agent",
                                  capabilities,
                                  std::size(capabilities),
                                  &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::oidc

CLUSTERCONNECT_PLUGIN(clusterconnect::oidc::descriptor)
