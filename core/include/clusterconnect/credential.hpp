#pragma once
// Capability kind "credential": obtains and refreshes access tokens.
// Control plane: calls may block (HTTP to the identity provider); never call
// them on an io thread.

#include <chrono>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "clusterconnect/result.hpp"

namespace clusterconnect {

struct AccessToken {
  std::string token;
  std::chrono::system_clock::time_point expires_on;
};

class TokenCredential {
 public:
  virtual ~TokenCredential() = default;
  // `resource` is an application ID URI or GUID; the request uses
  // scope=<resource>/.default. Served from the cache while valid.
  virtual Result<AccessToken> get_token(const std::string& resource) noexcept = 0;
  // Which method was chosen ("client-secret", "device-code", ...), for reports.
  virtual std::string method() const = 0;
};

class CredentialCapability {
 public:
  virtual ~CredentialCapability() = default;
  // `options`: {"method": "auto"|"client-secret"|"client-certificate"|
  //   "workload-identity"|"azure-cli"|"device-code", "tenant_id", "client_id",
  //   "authority", "ca_file", ...}; unset fields come from AZURE_* variables.
  virtual Result<std::shared_ptr<TokenCredential>> create(const nlohmann::json& options) noexcept = 0;
};

}  // namespace clusterconnect
