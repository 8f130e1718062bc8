#pragma once
// An authenticator capability made from a function: options in, an
// authenticator or the reason out, and no exception across the module
// boundary.

#include <exception>
#include <functional>
#include <memory>
#include <string>

#include "clusterconnect/authenticator.hpp"

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

}  // namespace clusterconnect::auth
