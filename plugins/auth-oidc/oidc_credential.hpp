#pragma once
// Capability "credential:oidc": access tokens from an OpenID provider for
// the proxy, by the client credentials grant (a confidential client's ID
// and secret) or from a token file that something else keeps fresh (a CI
// runner's OIDC token, a projected service-account token).
// Control plane: get_token blocks on HTTP; never call it on an io thread.

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "clusterconnect/credential.hpp"
#include "clusterconnect/result.hpp"
#include "http_client.hpp"

namespace clusterconnect::oidc {

struct CredentialConfig {
  std::string method;  // client-credentials, token-file
  std::string issuer;
  std::string client_id;
  std::string client_secret;
  std::string scope;  // optional, space-separated
  std::string token_file;
  auth::HttpPolicy http;
  // Decides whether a cached or file token is still fresh; tests replace it.
  std::function<std::chrono::system_clock::time_point()> clock = [] { return std::chrono::system_clock::now(); };
};

// Options JSON:
//   {"method": "client-credentials", "issuer": URL, "client_id": "...", "client_secret": "...", "scope": "",
//    "allow_http_loopback": false, "ca_file": ""}
//   {"method": "token-file", "token_file": PATH}
// `client_secret` defaults to $OIDC_CLIENT_SECRET, `token_file` to $OIDC_TOKEN_FILE.
Result<CredentialConfig> parse_credential_options(const nlohmann::json& options);

class OidcCredential final : public TokenCredential {
 public:
  explicit OidcCredential(CredentialConfig config);

  // client-credentials: `resource`, when not empty, is sent as the RFC 8707
  // `resource` parameter (the audience the token is for); tokens are cached
  // per resource until a minute before they expire. token-file: the file is
  // read on every call (it rotates) and `resource` is not used.
  Result<AccessToken> get_token(const std::string& resource) noexcept override;
  std::string method() const override { return config_.method; }

 private:
  Result<AccessToken> client_credentials(const std::string& resource);
  Result<AccessToken> from_file();
  Result<std::string> token_endpoint();

  CredentialConfig config_;
  auth::HttpClient http_;
  std::mutex mutex_;
  std::string token_endpoint_;
  std::map<std::string, AccessToken> cache_;
};

// The `exp` of a JWT, read without verifying it (the client only needs to
// know when to ask again); fails for anything that is not a JWT with `exp`.
Result<std::chrono::system_clock::time_point> unverified_expiry(const std::string& jwt);

}  // namespace clusterconnect::oidc
