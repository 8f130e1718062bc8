#include "agent_policy.hpp"

#include <spdlog/spdlog.h>

#include "impersonation.hpp"

namespace clusterconnect::agent {

AgentPolicy::AgentPolicy(AuthMode mode, std::shared_ptr<Authenticator> authenticator, std::shared_ptr<ApiServer> api,
                         std::shared_ptr<AuditLog> audit, std::shared_ptr<AgentMetrics> metrics,
                         std::shared_ptr<spdlog::logger> logger)
    : mode_(mode),
      authenticator_(std::move(authenticator)),
      api_(std::move(api)),
      audit_(std::move(audit)),
      metrics_(std::move(metrics)),
      logger_(std::move(logger)) {}

void AgentPolicy::reject(AuthFailure failure, const std::string& why, UniqueFunction<void(http::Decision)>& done) {
  metrics_->auth_failure(to_string(failure));
  logger_->info("request rejected: {} ({})", why, to_string(failure));
  http::Decision d;
  d.forward = false;
  d.reply = http::status_reply(401, "Unauthorized", why);
  done(std::move(d));
}

void AgentPolicy::pass_through(UniqueFunction<void(http::Decision)>& done) {
  http::Decision d;
  d.forward = true;
  d.user = "";
  done(std::move(d));
}

void AgentPolicy::impersonate(http::RequestHead& head, const Identity& id, UniqueFunction<void(http::Decision)>& done) {
  if (has_caller_impersonation(head)) {
    metrics_->auth_failure("impersonation_refused");
    logger_->info("request from {} refused: it carries its own Impersonate-* headers", id.user);
    http::Decision d;
    d.forward = false;
    d.user = id.user;
    d.groups = id.groups;
    d.reply = http::status_reply(403, "Forbidden", "impersonation through the cluster connection is not permitted");
    return done(std::move(d));
  }
  auto agent_token = api_->token().get();
  if (!agent_token) {
    logger_->error("{}", agent_token.error());
    http::Decision d;
    d.forward = false;
    d.reply = http::status_reply(503, "ServiceUnavailable", "the cluster connection agent has no API server credential");
    return done(std::move(d));
  }
  if (!apply_impersonation(head, id, agent_token.value()))
    return reject(AuthFailure::malformed, "identity claims contain characters that cannot be carried in HTTP headers", done);
  http::Decision d;
  d.forward = true;
  d.user = id.user;
  d.groups = id.groups;
  done(std::move(d));
}

void AgentPolicy::on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) {
  if (mode_ == AuthMode::token) return pass_through(done);
  std::string token = bearer_token(head);
  if (token.empty()) {
    if (mode_ == AuthMode::both) return pass_through(done);
    return reject(AuthFailure::malformed, "no bearer token in the request", done);
  }
  // `head` lives until `done` is called (the forwarding engine owns it).
  authenticator_->async_authenticate(
      std::move(token), [this, &head, done = std::move(done)](AuthOutcome outcome) mutable {
        if (outcome.ok()) return impersonate(head, outcome.identity, done);
        // In `both` mode a token that is not an Entra token for this cluster
        // (a service-account JWT has another issuer) goes to the API server
        // unchanged, which authenticates it itself.
        if (mode_ == AuthMode::both &&
            (outcome.failure == AuthFailure::not_applicable || outcome.failure == AuthFailure::wrong_issuer))
          return pass_through(done);
        reject(outcome.failure, "Entra ID token rejected: " + outcome.message, done);
      });
}

void AgentPolicy::on_complete(const http::ExchangeRecord& record) noexcept {
  try {
    metrics_->request_done(record.status, record.duration, record.upgraded);
    // A request answered 401/403 here never reached the API server with an
    // identity; one forwarded without a user was a pass-through token.
    const char* method = !record.user.empty() ? "entra" : record.status == 401 ? "rejected" : "token";
    if (audit_) audit_->write(record, method);
  } catch (...) {
    // Auditing must never take the data path down.
  }
}

}  // namespace clusterconnect::agent
