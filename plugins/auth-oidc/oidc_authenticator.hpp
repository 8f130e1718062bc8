#pragma once
// Capability "authenticator:oidc": tokens of one OpenID provider -> Identity,
// with kube-apiserver's OIDC semantics (oidc_rules.hpp). Keys come from the
// issuer's discovery document and are fetched on their own thread.

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
#include "oidc_rules.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::auth {
class FetchWorker;
}

namespace clusterconnect::oidc {

struct AuthenticatorConfig {
  OidcRules rules;
  HttpPolicy http;
  std::chrono::seconds key_refresh_min_interval{10};
  // Keys are re-fetched in the background once they are this old, and not
  // relied on past it without a refresh attempt.
  std::chrono::seconds key_refresh_interval{std::chrono::hours(1)};
  std::chrono::milliseconds key_check_period{std::chrono::seconds(30)};  // not an option
  JwksCache::Clock key_clock;                                            // not an option; tests inject one
};

// Options JSON (`issuer` and `client_id` required):
//   {"issuer": URL, "client_id": "...", "username_claim": "sub", "username_prefix": "" | "-" | "...",
//    "groups_claim": "", "groups_prefix": "", "required_claims": {"claim": "value"},
//    "signing_algs": ["RS256"], "allow_http_loopback": false, "ca_file": "", "clock_skew_seconds": 60,
//    "key_refresh_min_interval_seconds": 10, "key_refresh_interval_seconds": 3600}
Result<AuthenticatorConfig> parse_authenticator_options(const nlohmann::json& options);

class OidcAuthenticator final : public Authenticator {
 public:
  using Fetch = JwksCache::Fetch;
  // `fetch` serves URLs in tests; by default HTTPS through libcurl.
  OidcAuthenticator(asio::io_context& io, AuthenticatorConfig config, JwksCache::Fetch fetch = {},
                    std::shared_ptr<spdlog::logger> logger = nullptr);
  ~OidcAuthenticator() override;

  void async_authenticate(std::string bearer_token, UniqueFunction<void(AuthOutcome)> handler) noexcept override;

  // Test seam: the time the claim checks use.
  void set_clock(std::function<std::chrono::system_clock::time_point()> now);

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;  // also held by queued fetch jobs
  std::unique_ptr<FetchWorker> worker_;
};

}  // namespace clusterconnect::oidc
