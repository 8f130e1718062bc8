#pragma once
// An authenticator capability made from a function: options in, an
// authenticator or the reason out, and no exception across the module
// boundary.

#include <exception>
#include <functional>
#include <memory>
#include <string>

#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/host.hpp"

namespace clusterconnect::auth {

class AuthenticatorFactory final : public AuthenticatorCapability {
 public:
  using Make = std::function<Result<std::shared_ptr<Authenticator>>(const nlohmann::json& options)>;

  // `name` ("authenticator:oidc") prefixes the message of an exception.
  AuthenticatorFactory(std::string name, Make make) : name_(std::move(name)), make_(std::move(make)) {}

  Result<std::shared_ptr<Authenticator>> create(const nlohmann::json& options) noexcept override {
    try {
      return make_(options);
    } catch (const std::exception& e) {
      return fail(name_ + ": " + e.what());
    }
  }

 private:
  std::string name_;
  Make make_;
};

// The factory of an authenticator `Impl` constructed as
// Impl(io_context, Config, fetch, logger) from `parse(options)` ->
// Result<Config>, on the host's io_context and logger.
template <class Impl, class Parse>
std::shared_ptr<AuthenticatorFactory> make_authenticator_factory(std::string name, HostServices& host, Parse parse) {
  return std::make_shared<AuthenticatorFactory>(
      std::move(name), [&host, parse](const nlohmann::json& options) -> Result<std::shared_ptr<Authenticator>> {
        auto config = parse(options);
        if (!config) return fail(config.error());
        return std::shared_ptr<Authenticator>(
            std::make_shared<Impl>(host.io_context(), std::move(*config), typename Impl::Fetch{}, host.logger()));
      });
}

}  // namespace clusterconnect::auth
