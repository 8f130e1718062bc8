#pragma once
// The agent's decision for every request that arrives through the tunnel:
// authenticate the caller, then forward with impersonation (entra), forward
// the caller's own token unchanged (token), or either (both).

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "agent_metrics.hpp"
#include "api_server.hpp"
#include "audit_log.hpp"
#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/http/forward.hpp"
#include "impersonation.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::agent {

enum class AuthMode { entra, token, both };

// A caller the authenticator accepted, with what the agent does with it
// worked out once: whether it may be impersonated and the headers that do it.
struct VerifiedCaller {
  Identity identity;
  std::string refused;                          // refused_identity(), empty when it may be impersonated
  std::optional<ImpersonationHeaders> headers;  // empty: a claim cannot be carried
  std::shared_ptr<const http::Subject> subject;  // for the records of its requests
};

class AgentPolicy final : public http::ForwardPolicy, public std::enable_shared_from_this<AgentPolicy> {
 public:
  AgentPolicy(AuthMode mode, std::shared_ptr<Authenticator> authenticator, std::shared_ptr<ApiServer> api,
              std::shared_ptr<AuditLog> audit, std::shared_ptr<AgentMetrics> metrics,
              std::shared_ptr<spdlog::logger> logger, std::string backend = "entra");

  // Every request verified by the authenticator.
  void on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) override;
  void on_complete(const http::ExchangeRecord& record) noexcept override;

  // The policy for one connection (one tunnel stream): kubectl sends the same
  // token on every request of a connection, so the last token verified on it
  // is remembered (its SHA-256, compared in constant time) with its caller, until the
  // token's exp or for at most memo_max_age, whichever comes first; a request
  // with that token skips the authenticator. The cap keeps a signing key
  // rotated out from being honoured for long on a connection that stays open.
  // Proof-of-possession tokens are single-use and always verified.
  std::shared_ptr<http::ForwardPolicy> for_connection();
  static constexpr std::chrono::seconds memo_max_age{30};

  // The wall clock token expiry is compared with (tests move it).
  void set_clock(std::function<std::chrono::system_clock::time_point()> now) { now_ = std::move(now); }

  struct TokenMemo;

 private:
  void decide(http::RequestHead& head, UniqueFunction<void(http::Decision)> done,
              const std::shared_ptr<TokenMemo>& memo);
  void reject(AuthFailure failure, const std::string& why, UniqueFunction<void(http::Decision)>& done);
  void impersonate(http::RequestHead& head, const VerifiedCaller& caller, std::chrono::system_clock::time_point expiry,
                   UniqueFunction<void(http::Decision)>& done);
  static void pass_through(const http::RequestHead& head, UniqueFunction<void(http::Decision)>& done);
  // The caller for a verified identity: the one already built when it is the
  // same identity as the last one (many connections of one user, e.g. its
  // watches, then share one instead of holding a copy each).
  std::shared_ptr<const VerifiedCaller> caller_for(Identity identity);

  AuthMode mode_;
  std::shared_ptr<Authenticator> authenticator_;
  std::shared_ptr<ApiServer> api_;
  std::shared_ptr<AuditLog> audit_;
  std::shared_ptr<AgentMetrics> metrics_;
  std::shared_ptr<spdlog::logger> logger_;
  std::string backend_;  // the authenticator's name ("entra", "oidc"): in messages and the audit log
  std::function<std::chrono::system_clock::time_point()> now_ = [] { return std::chrono::system_clock::now(); };
  std::mutex callers_mu_;
  std::weak_ptr<const VerifiedCaller> last_caller_;
};

}  // namespace clusterconnect::agent
