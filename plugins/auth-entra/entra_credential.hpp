#pragma once
// Capability "credential:entra": access tokens from Microsoft Entra ID for a
// resource, by the methods the Azure SDK's default chain knows (client
// secret, client certificate, workload identity federation from a token
// file or from the GitHub Actions runner, Azure CLI hand-off) plus the
// device-code sign-in for people on a terminal.
// Control plane: get_token blocks on HTTP; never call it on an io thread.

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "actions_id_token.hpp"
#include "clusterconnect/credential.hpp"
#include "clusterconnect/result.hpp"
#include "encoding.hpp"
#include "http_client.hpp"
#include "pop.hpp"
#include "token_cache.hpp"

namespace clusterconnect::entra {

// Azure CLI's public client, which Entra ID tenants already trust for
// device-code sign-in.
inline constexpr const char* azure_cli_client_id = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";

struct DeviceCodePrompt {
  std::string verification_uri;
  std::string user_code;
  std::string message;  // Entra's ready-made sentence; composed when the provider sends none
  std::chrono::seconds expires_in{0};
};

struct CredentialConfig {
  std::string method;  // resolved: client-secret, client-certificate, workload-identity, github-actions, azure-cli, device-code
  std::string authority;
  std::string tenant_id;
  std::string client_id;
  std::string client_secret;
  std::string certificate_path;
  std::string federated_token_file;
  ActionsIdTokenRequest actions_id_token;  // github-actions: the runner's token endpoint and request token
  std::string federated_audience = entra_token_exchange_audience;  // `aud` asked of the runner
  HttpPolicy http;
  std::filesystem::path cache_file;  // empty: in-memory cache only
  std::function<void(const DeviceCodePrompt&)> device_code_prompt;
  std::chrono::seconds default_poll_interval{5};  // when the provider sends no `interval`
  std::string az_command = "az";
  std::chrono::seconds az_timeout{60};
  // The clock that decides whether a cached token is still fresh, and the
  // wait between device-code polls; tests replace them.
  std::function<std::chrono::system_clock::time_point()> clock = [] { return std::chrono::system_clock::now(); };
  std::function<void(std::chrono::seconds)> sleep = [](std::chrono::seconds d) { std::this_thread::sleep_for(d); };
};

// Options JSON: {"method": "auto"|..., "tenant_id", "client_id", "client_secret",
//   "certificate_path", "federated_token_file", "federated_audience", "authority", "ca_file",
//   "allow_http_loopback", "cache": true, "device_code_prompt": "text"|"json"}; unset fields come from AZURE_TENANT_ID,
// AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH,
// AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST; the GitHub Actions
// runner's endpoint always from ACTIONS_ID_TOKEN_REQUEST_URL and
// ACTIONS_ID_TOKEN_REQUEST_TOKEN. "auto" picks, in order: client secret,
// certificate, workload identity from a token file, GitHub Actions (when
// their settings are present), Azure CLI (when `az` is on PATH), device code
// (on a terminal): explicit settings before ambient ones, as the Azure SDK's
// environment and workload identity credentials come before its CLI one.
// The token cache file lives in `cache_dir` (when given and "cache" is true).
Result<CredentialConfig> parse_credential_options(const nlohmann::json& options, const std::filesystem::path& cache_dir);

class EntraCredential final : public TokenCredential {
 public:
  explicit EntraCredential(CredentialConfig config);

  Result<AccessToken> get_token(const std::string& resource) noexcept override;
  std::string method() const override { return config_.method; }
  // Proof-of-possession: the token request carries token_type=pop and
  // req_cnf naming pop_signer()'s key (an RSA-2048 key made on first use,
  // kept in this process's memory only). PoP access tokens are cached in
  // memory only, keyed by the key's thumbprint, so a cached one is never
  // used with another key; refresh tokens are shared with bearer sign-in.
  // The Azure CLI method cannot obtain them.
  Result<AccessToken> get_pop_token(const std::string& resource) noexcept override;
  std::shared_ptr<PopSigner> pop_signer() noexcept override;

 private:
  struct Endpoints {
    std::string token;
    std::string device_authorization;
  };
  struct Acquired {
    std::string access_token;
    std::string refresh_token;
    std::string token_type;
    long long expires_in = 0;
  };

  Result<Endpoints> endpoints();
  Result<AccessToken> get(const std::string& resource, bool pop);
  Result<Acquired> client_credentials(const std::string& resource, const Endpoints& ep);
  Result<std::string> federated_assertion(const char*& what);
  Result<Acquired> device_code(const std::string& resource, const Endpoints& ep);
  Result<Acquired> refresh(const std::string& resource, const std::string& refresh_token, const Endpoints& ep);
  Result<Acquired> azure_cli(const std::string& resource, long long& expires_on);
  Result<Acquired> token_request(const std::string& url, const std::string& body, const char* what);
  Result<Acquired> check_token_type(Result<Acquired> got, const char* what);
  void add_pop_fields(FormFields& f) const;
  long long now() const;

  CredentialConfig config_;
  HttpClient http_;
  std::optional<TokenCache> disk_;
  std::mutex mutex_;
  std::optional<Endpoints> endpoints_;
  std::map<std::string, CachedToken> memory_;
  std::string last_oauth_error_;  // `error` of the last refused token request
  std::shared_ptr<PopKey> pop_key_;  // made on first use
  bool requesting_pop_ = false;      // the token requests of the current get() ask for PoP
};

// Seconds before expiry at which a cached token is replaced: five minutes,
// or half the token's lifetime when it lives shorter than ten.
long long refresh_margin(const CachedToken& t);

}  // namespace clusterconnect::entra
