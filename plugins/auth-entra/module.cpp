#include <exception>
#include <memory>
#include <string>

#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/credential.hpp"
#include "authenticator_factory.hpp"
#include "clusterconnect/plugin.hpp"
#include "entra_authenticator.hpp"
#include "entra_credential.hpp"

namespace clusterconnect::entra {
namespace {

const char* const capabilities[] = {"credential:entra", "authenticator:entra"};

class CredentialFactory final : public CredentialCapability {
 public:
  explicit CredentialFactory(HostServices& host) : host_(host) {}

  Result<std::shared_ptr<TokenCredential>> create(const nlohmann::json& options) noexcept override {
    try {
      auto config = parse_credential_options(options, host_.cache_dir());
      if (!config) return fail(config.error());
      return std::shared_ptr<TokenCredential>(std::make_shared<EntraCredential>(std::move(*config)));
    } catch (const std::exception& e) {
      return fail(std::string("credential:entra: ") + e.what());
    }
  }

 private:
  HostServices& host_;
};

class ThisModule final : public Module {
 public:
  explicit ThisModule(HostServices& host)
      : authenticator_(auth::make_authenticator_factory<EntraAuthenticator>("authenticator:entra", host, parse_authenticator_options)),
        credential_(std::make_shared<CredentialFactory>(host)) {}

  std::shared_ptr<CredentialCapability> credential(std::string_view name) noexcept override { return name == "entra" ? credential_ : nullptr; }

  std::shared_ptr<AuthenticatorCapability> authenticator(std::string_view name) noexcept override {
    return name == "entra" ? authenticator_ : nullptr;
  }

 private:
  std::shared_ptr<auth::AuthenticatorFactory> authenticator_;
  std::shared_ptr<CredentialFactory> credential_;
};

std::unique_ptr<Module> create(HostServices& host) noexcept {
  try {
    return std::make_unique<ThisModule>(host);
  } catch (...) {
    return nullptr;
  }
}

const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "auth-entra", "0.1.0", "Microsoft Entra ID sign-in and token validation", capabilities,
                                  std::size(capabilities), &create};
  return d;
}

}  // namespace
}  // namespace clusterconnect::entra

CLUSTERCONNECT_PLUGIN(clusterconnect::entra::descriptor)
