#pragma once
// The agent's decision for every request that arrives through the tunnel:
// authenticate the caller, then forward with impersonation (entra), forward
// the caller's own token unchanged (token), or either (both).

#include <chrono>
#include <memory>
#include <string>

#include "agent_metrics.hpp"
#include "api_server.hpp"
#include "audit_log.hpp"
#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/http/forward.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::agent {

enum class AuthMode { entra, token, both };

class AgentPolicy final : public http::ForwardPolicy {
 public:
  AgentPolicy(AuthMode mode, std::shared_ptr<Authenticator> authenticator, std::shared_ptr<ApiServer> api,
              std::shared_ptr<AuditLog> audit, std::shared_ptr<AgentMetrics> metrics,
              std::shared_ptr<spdlog::logger> logger, std::string backend = "entra");

  void on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) override;
  void on_complete(const http::ExchangeRecord& record) noexcept override;

 private:
  void reject(AuthFailure failure, const std::string& why, UniqueFunction<void(http::Decision)>& done);
  void impersonate(http::RequestHead& head, const Identity& id, std::chrono::system_clock::time_point expiry,
                   UniqueFunction<void(http::Decision)>& done);
  static void pass_through(const http::RequestHead& head, UniqueFunction<void(http::Decision)>& done);

  AuthMode mode_;
  std::shared_ptr<Authenticator> authenticator_;
  std::shared_ptr<ApiServer> api_;
  std::shared_ptr<AuditLog> audit_;
  std::shared_ptr<AgentMetrics> metrics_;
  std::shared_ptr<spdlog::logger> logger_;
  std::string backend_;  // the authenticator's name ("entra", "oidc"): in messages and the audit log
};

}  // namespace clusterconnect::agent
