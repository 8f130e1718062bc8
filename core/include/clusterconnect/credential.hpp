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

// Proof-of-possession (Entra's PoP scheme, as kubelogin --pop-enabled uses
// it for Azure Arc): a key pair the credential holds in memory only. Tokens
// from get_pop_token() carry `cnf.kid` = thumbprint(), and a resource server
// accepts them only inside a Signed HTTP Request made with this key.
class PopSigner {
 public:
  virtual ~PopSigner() = default;
  // RFC 7638 SHA-256 thumbprint of the public key (JWK), base64url.
  virtual std::string thumbprint() const = 0;
  // A Signed HTTP Request for one request: a JWT with header
  // {"typ":"pop","alg":"RS256","kid":thumbprint} and payload {"at": access
  // token, "ts": now, "u": target, "cnf": {"jwk": public key}, "nonce": 128
  // random bits}, signed with the key. One RSA signature; any thread.
  virtual Result<std::string> sign_request(const std::string& access_token, const std::string& target) noexcept = 0;
};

class TokenCredential {
 public:
  virtual ~TokenCredential() = default;
  // `resource` is an application ID URI or GUID; the request uses
  // scope=<resource>/.default. Served from the cache while valid.
  virtual Result<AccessToken> get_token(const std::string& resource) noexcept = 0;
  // Which method was chosen ("client-secret", "device-code", ...), for reports.
  virtual std::string method() const = 0;
  // A proof-of-possession token for `resource`, bound to pop_signer()'s key.
  // Fails when the method or the identity provider cannot issue one.
  virtual Result<AccessToken> get_pop_token(const std::string& resource) noexcept {
    return fail("the '" + method() + "' credential cannot obtain proof-of-possession tokens for " + resource);
  }
  // The key get_pop_token() binds tokens to; null without PoP support.
  virtual std::shared_ptr<PopSigner> pop_signer() noexcept { return nullptr; }
};

class CredentialCapability {
 public:
  virtual ~CredentialCapability() = default;
  // `options`: {"method": "auto"|"client-secret"|"client-certificate"|
  //   "workload-identity"|"github-actions"|"azure-cli"|"device-code",
  //   "tenant_id", "client_id", "authority", "ca_file", ...} for Entra ID
  //   (unset fields come from AZURE_* variables); each credential module
  //   documents its own methods (OpenID Connect: client-credentials,
  //   token-file, github-actions, device-code).
  virtual Result<std::shared_ptr<TokenCredential>> create(const nlohmann::json& options) noexcept = 0;
};

}  // namespace clusterconnect
