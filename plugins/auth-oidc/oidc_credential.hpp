#pragma once
// Capability "credential:oidc": access tokens from an OpenID provider for
// the proxy, by the client credentials grant (a confidential client's ID
// and secret), the device authorization grant with PKCE (a person on a
// terminal), from a token file that something else keeps fresh (a projected
// service-account token), or the GitHub Actions runner's own OIDC token
// (for clusters whose agent trusts GitHub's issuer).
// Control plane: get_token blocks on HTTP; never call it on an io thread.

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "clusterconnect/credential.hpp"
#include "clusterconnect/result.hpp"
#include "actions_id_token.hpp"
#include "http_client.hpp"

namespace clusterconnect::oidc {

struct DeviceCodePrompt {
  std::string verification_uri;
  std::string verification_uri_complete;
  std::string user_code;
  std::chrono::seconds expires_in{0};
};

struct CredentialConfig {
  std::string method;  // client-credentials, device-code, token-file, github-actions
  std::string issuer;
  std::string client_id;
  std::string client_secret;
  std::string scope;  // optional, space-separated
  std::string token_file;
  std::string audience;  // github-actions: `aud` asked of the runner when get_token names no resource
  auth::ActionsIdTokenRequest actions_id_token;
  auth::HttpPolicy http;
  std::function<void(const DeviceCodePrompt&)> device_code_prompt;  // default: a sentence on stderr
  std::chrono::seconds default_poll_interval{5};                    // when the provider sends no `interval`
  std::function<void(std::chrono::seconds)> sleep;                 // between polls; tests replace it
  // Decides whether a cached or file token is still fresh; tests replace it.
  std::function<std::chrono::system_clock::time_point()> clock = [] { return std::chrono::system_clock::now(); };
};

// Options JSON:
//   {"method": "client-credentials", "issuer": URL, "client_id": "...", "client_secret": "...", "scope": "",
//    "allow_http_loopback": false, "ca_file": ""}
//   {"method": "device-code", "issuer": URL, "client_id": "...", "scope": "openid offline_access", ...}
//   {"method": "token-file", "token_file": PATH}
//   {"method": "github-actions", "audience": "..."}
// `client_secret` defaults to $OIDC_CLIENT_SECRET, `token_file` to $OIDC_TOKEN_FILE;
// github-actions reads ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN.
Result<CredentialConfig> parse_credential_options(const nlohmann::json& options);

class OidcCredential final : public TokenCredential {
 public:
  explicit OidcCredential(CredentialConfig config);

  // client-credentials: `resource`, when not empty, is sent as the RFC 8707
  // `resource` parameter (the audience the token is for); tokens are cached
  // per resource until a minute before they expire. token-file: the file is
  // read on every call (it rotates) and `resource` is not used.
  // device-code: `resource` as for client credentials; the person is asked
  // once, then the refresh token (when the provider gives one) renews.
  // github-actions: the runner's token for audience `resource` (else the
  // configured audience), cached until a minute before it expires.
  Result<AccessToken> get_token(const std::string& resource) noexcept override;
  std::string method() const override { return config_.method; }

 private:
  Result<AccessToken> client_credentials(const std::string& resource);
  Result<AccessToken> from_file();
  Result<AccessToken> device_code(const std::string& resource);
  Result<AccessToken> from_runner(const std::string& resource);
  Result<AccessToken> token_response(const auth::HttpResponse& r, const std::string& what);
  Result<std::string> token_endpoint();

  CredentialConfig config_;
  auth::HttpClient http_;
  std::mutex mutex_;
  std::string token_endpoint_;
  std::string device_authorization_endpoint_;
  std::map<std::string, std::string> refresh_tokens_;
  std::map<std::string, AccessToken> cache_;
};

// The `exp` of a JWT, read without verifying it (the client only needs to
// know when to ask again); fails for anything that is not a JWT with `exp`.
Result<std::chrono::system_clock::time_point> unverified_expiry(const std::string& jwt);

// RFC 7636 S256: a fresh random code_verifier (43 base64url characters) and
// its code_challenge.
struct Pkce {
  std::string verifier;
  std::string challenge;
};
Pkce make_pkce();
std::string pkce_challenge(const std::string& verifier);

}  // namespace clusterconnect::oidc
