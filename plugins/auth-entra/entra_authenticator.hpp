#pragma once
// Capability "authenticator:entra": Entra ID access tokens -> Identity.
// Parsing and claim rules are in jwt.hpp, keys in jwks.hpp; this file wires
// them to the host's io_context and a fetch thread.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/result.hpp"
#include "http_client.hpp"
#include "jwks.hpp"
#include "jwt.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::auth {
class FetchWorker;
}

namespace clusterconnect::entra {

inline constexpr const char* arc_server_app_id = "6256c85f-0aad-4d50-b960-e6e9b21efe35";
inline constexpr const char* default_authority = "https://login.microsoftonline.com";
inline constexpr int max_clock_skew_seconds = 600;

struct AuthenticatorConfig {
  ValidationRules rules;
  HttpPolicy http;
  std::chrono::seconds key_refresh_min_interval{10};
  // Keys and issuers are re-fetched in the background once they are this old,
  // and neither they nor tokens verified with them are relied on past it
  // without a refresh attempt.
  std::chrono::seconds key_refresh_interval{std::chrono::hours(1)};
  // How often the background refresh looks for stale keys (not an option).
  std::chrono::milliseconds key_check_period{std::chrono::seconds(30)};
  // The clock of the key cache (not an option; tests inject one).
  JwksCache::Clock key_clock;
  // Proof-of-possession mode: only Signed HTTP Requests (pop.hpp) signed for
  // `cluster_resource_id` (lower case) are accepted, whose inner access token
  // passes every check above and is bound to the signing key; bearer tokens
  // are refused. Nonces are remembered for 15 minutes, at most
  // `pop_replay_cache_size` of them.
  bool pop = false;
  std::string cluster_resource_id;
  std::size_t pop_replay_cache_size = 200000;
};

// Options JSON (all optional but `tenants`):
//   {"tenants": [tid...], "audiences": [...], "authority": URL,
//    "allow_http_loopback": false, "clock_skew_seconds": 300,
//    "username_claim": "upn"|"oid"|<claim>, "username_prefix": "", "groups_prefix": "", "ca_file": "",
//    "key_refresh_min_interval_seconds": 10, "key_refresh_interval_seconds": 3600, "pop": false, "cluster_resource_id":
//    "/subscriptions/…/connectedClusters/NAME", "pop_replay_cache_size": 200000}
// `pop` needs `cluster_resource_id`.
// `authority` defaults to $AZURE_AUTHORITY_HOST, then login.microsoftonline.com.
Result<AuthenticatorConfig> parse_authenticator_options(const nlohmann::json& options);

class EntraAuthenticator final : public Authenticator {
 public:
  using Fetch = JwksCache::Fetch;
  // `fetch` serves URLs in tests; by default HTTPS through libcurl. Key
  // fetches and their failures go to `logger` when there is one.
  EntraAuthenticator(asio::io_context& io, AuthenticatorConfig config, JwksCache::Fetch fetch = {},
                     std::shared_ptr<spdlog::logger> logger = nullptr);
  ~EntraAuthenticator() override;

  void async_authenticate(std::string bearer_token, UniqueFunction<void(AuthOutcome)> handler) noexcept override;

  // Test seam: the time the claim checks use.
  void set_clock(std::function<std::chrono::system_clock::time_point()> now);

 private:
  struct Shared;
  void authenticate_bearer(std::string token, UniqueFunction<void(AuthOutcome)> handler) noexcept;
  void authenticate_pop(std::string token, UniqueFunction<void(AuthOutcome)> handler) noexcept;
  std::shared_ptr<Shared> shared_;  // also held by queued fetch jobs
  std::unique_ptr<FetchWorker> worker_;
};

// The tenant's name as it appears in issuers and URLs: tenant IDs and
// verified domain names only.
bool valid_tenant(const std::string& tenant);

}  // namespace clusterconnect::entra
