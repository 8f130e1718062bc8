#include "agent_policy.hpp"

#include <algorithm>
#include <array>
#include <mutex>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "impersonation.hpp"

namespace clusterconnect::agent {
namespace {

std::string base64url_decode(std::string_view in) {
  std::string out;
  unsigned buffer = 0;
  int bits = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '-' || c == '+') v = 62;
    else if (c == '_' || c == '/') v = 63;
    else if (c == '=') break;
    else return {};
    buffer = (buffer << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buffer >> bits) & 0xff);
    }
  }
  return out;
}

nlohmann::json jwt_payload(const std::string& token) {
  auto first = token.find('.');
  auto second = first == std::string::npos ? first : token.find('.', first + 1);
  if (second == std::string::npos || second - first - 1 > 16 * 1024) return {};
  auto payload = nlohmann::json::parse(base64url_decode(std::string_view(token).substr(first + 1, second - first - 1)), nullptr, false);
  return payload.is_object() ? payload : nlohmann::json();
}

// The `exp` of a token; read before verification, used only once the
// authenticator has verified this very token. Zero when there is none. For a
// proof-of-possession token (a signed request whose `at` is the access
// token), the `exp` of the access token inside.
struct TokenTimes {
  std::chrono::system_clock::time_point expiry;
  bool signed_request = false;  // proof-of-possession: single-use, never remembered
};

TokenTimes token_times(const std::string& token) {
  TokenTimes t;
  auto payload = jwt_payload(token);
  if (payload.is_object()) {
    if (auto at = payload.find("at"); at != payload.end() && at->is_string() && !payload.contains("exp")) {
      t.signed_request = true;
      payload = jwt_payload(at->get<std::string>());
    }
  }
  auto exp = payload.is_object() ? payload.find("exp") : payload.end();
  if (!payload.is_object() || exp == payload.end() || !exp->is_number()) return t;
  const double seconds = exp->get<double>();
  if (!(seconds > 0 && seconds < 1e11)) return t;
  t.expiry = std::chrono::system_clock::time_point(std::chrono::seconds(static_cast<long long>(seconds)));
  return t;
}

std::chrono::system_clock::time_point token_expiry(const std::string& token) { return token_times(token).expiry; }

// The `sub` a JWT names, read without verifying it (the API server does
// that): for the audit record only, and marked as unverified there.
std::string unverified_subject(const std::string& token) {
  auto payload = jwt_payload(token);
  if (!payload.is_object()) return {};
  auto sub = payload.find("sub");
  if (sub == payload.end() || !sub->is_string()) return {};
  std::string s = sub->get<std::string>();
  if (s.size() > 256 || !header_safe(s)) return {};
  return s;
}

}  // namespace

using TokenDigest = std::array<unsigned char, SHA256_DIGEST_LENGTH>;

static TokenDigest token_digest(std::string_view token) {
  TokenDigest d{};
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), d.data());
  return d;
}

// The last token verified on one connection, by its SHA-256: a held
// connection keeps 32 bytes instead of a ~1 KB JWT, and no copy of the
// credential. A connection's requests come one at a time, so the lock is
// uncontended; it is there because `done` may run on another thread.
struct AgentPolicy::TokenMemo {
  std::mutex mu;
  TokenDigest token{};
  std::chrono::system_clock::time_point expiry;       // the token's exp
  std::chrono::system_clock::time_point valid_until;  // min(exp, verified + memo_max_age)
  std::shared_ptr<const VerifiedCaller> caller;
};

namespace {

class ConnectionPolicy final : public http::ForwardPolicy {
 public:
  using Decide = std::function<void(http::RequestHead&, UniqueFunction<void(http::Decision)>)>;
  ConnectionPolicy(std::shared_ptr<AgentPolicy> shared, Decide decide)
      : shared_(std::move(shared)), decide_(std::move(decide)) {}
  void on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) override {
    decide_(head, std::move(done));
  }
  void on_complete(const http::ExchangeRecord& record) noexcept override { shared_->on_complete(record); }

 private:
  std::shared_ptr<AgentPolicy> shared_;
  Decide decide_;
};

std::shared_ptr<const VerifiedCaller> make_caller(Identity identity) {
  auto c = std::make_shared<VerifiedCaller>();
  c->refused = refused_identity(identity);
  c->headers = impersonation_headers(identity);
  auto subject = std::make_shared<http::Subject>();
  subject->user = identity.user;
  subject->groups = identity.groups;
  for (const char* key : {"oid", "tid"})
    if (auto it = identity.extra.find(key); it != identity.extra.end() && !it->second.empty())
      subject->notes.push_back({key, it->second.front()});
  c->subject = std::move(subject);
  c->identity = std::move(identity);
  return c;
}

}  // namespace

AgentPolicy::AgentPolicy(AuthMode mode, std::shared_ptr<Authenticator> authenticator, std::shared_ptr<ApiServer> api,
                         std::shared_ptr<AuditLog> audit, std::shared_ptr<AgentMetrics> metrics,
                         std::shared_ptr<spdlog::logger> logger, std::string backend)
    : mode_(mode),
      authenticator_(std::move(authenticator)),
      api_(std::move(api)),
      audit_(std::move(audit)),
      metrics_(std::move(metrics)),
      logger_(std::move(logger)),
      backend_(std::move(backend)) {}

void AgentPolicy::reject(AuthFailure failure, const std::string& why, UniqueFunction<void(http::Decision)>& done) {
  metrics_->auth_failure(to_string(failure));
  logger_->info("request rejected: {} ({})", why, to_string(failure));
  http::Decision d;
  d.forward = false;
  d.reply = http::status_reply(401, "Unauthorized", why);
  done(std::move(d));
}

void AgentPolicy::pass_through(const http::RequestHead& head, UniqueFunction<void(http::Decision)>& done) {
  http::Decision d;
  d.forward = true;
  // The caller's own credential goes to the API server unchanged; the audit
  // record says so, with the user a JWT names (unverified), never the token.
  auto subject = std::make_shared<http::Subject>();
  subject->notes.push_back({"identity", "passed through to the API server (unverified here)"});
  const std::string token = bearer_token(head);
  if (auto sub = unverified_subject(token); !sub.empty()) subject->notes.push_back({"claimed_user", sub});
  d.subject = std::move(subject);
  // The API server checks a JWT's exp when the connection opens; the agent
  // ends an upgraded connection there (a forged exp only harms its sender,
  // and a token the API server refuses opens nothing).
  d.pipe_deadline = token_expiry(token);
  d.pipe_deadline_reason = "the token that opened this connection expired; connect again with a fresh one";
  done(std::move(d));
}

std::shared_ptr<http::ForwardPolicy> AgentPolicy::for_connection() {
  auto memo = std::make_shared<TokenMemo>();
  return std::make_shared<ConnectionPolicy>(
      shared_from_this(), [this, memo](http::RequestHead& head, UniqueFunction<void(http::Decision)> done) {
        decide(head, std::move(done), memo);
      });
}

void AgentPolicy::impersonate(http::RequestHead& head, const VerifiedCaller& caller,
                              std::chrono::system_clock::time_point expiry,
                              UniqueFunction<void(http::Decision)>& done) {
  const Identity& id = caller.identity;
  if (has_caller_impersonation(head)) {
    metrics_->auth_failure("impersonation_refused");
    logger_->info("request from {} refused: it carries its own Impersonate-* headers", id.user);
    http::Decision d;
    d.forward = false;
    d.subject = caller.subject;
    d.reply = http::status_reply(403, "Forbidden", "impersonation through the cluster connection is not permitted");
    return done(std::move(d));
  }
  if (!caller.refused.empty()) {
    metrics_->auth_failure("identity_refused");
    logger_->info("request refused: {}", caller.refused);
    http::Decision d;
    d.forward = false;
    d.reply = http::status_reply(403, "Forbidden",
                                 "the cluster connection does not impersonate this identity: " + caller.refused);
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
  if (!caller.headers)
    return reject(AuthFailure::malformed, "identity claims contain characters that cannot be carried in HTTP headers", done);
  apply_impersonation(head, *caller.headers, agent_token.value());
  http::Decision d;
  d.forward = true;
  d.subject = caller.subject;
  // An exec, attach or port-forward lives no longer than the token that
  // opened it: the engine closes the upgraded connection at its expiry.
  d.pipe_deadline = expiry;
  d.pipe_deadline_reason = "the token that opened this connection expired; connect again with a fresh one";
  done(std::move(d));
}

namespace {

bool same_identity(const Identity& a, const Identity& b) {
  return a.user == b.user && a.uid == b.uid && a.groups == b.groups && a.extra == b.extra;
}

}  // namespace

std::shared_ptr<const VerifiedCaller> AgentPolicy::caller_for(Identity identity) {
  {
    std::lock_guard lock(callers_mu_);
    if (auto last = last_caller_.lock(); last && same_identity(last->identity, identity)) return last;
  }
  auto caller = make_caller(std::move(identity));
  std::lock_guard lock(callers_mu_);
  last_caller_ = caller;
  return caller;
}

void AgentPolicy::on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) {
  decide(head, std::move(done), nullptr);
}

void AgentPolicy::decide(http::RequestHead& head, UniqueFunction<void(http::Decision)> done,
                         const std::shared_ptr<TokenMemo>& memo) {
  if (mode_ == AuthMode::token) return pass_through(head, done);
  std::string token = bearer_token(head);
  if (token.empty()) {
    if (mode_ == AuthMode::both) return pass_through(head, done);
    return reject(AuthFailure::malformed, "no bearer token in the request", done);
  }
  const TokenDigest digest = memo ? token_digest(token) : TokenDigest{};
  if (memo) {
    std::shared_ptr<const VerifiedCaller> caller;
    std::chrono::system_clock::time_point expiry;
    {
      std::lock_guard lock(memo->mu);
      if (memo->caller && CRYPTO_memcmp(digest.data(), memo->token.data(), digest.size()) == 0 &&
          now_() < memo->valid_until) {
        caller = memo->caller;
        expiry = memo->expiry;
      }
    }
    if (caller) return impersonate(head, *caller, expiry, done);
  }
  const TokenTimes times = token_times(token);
  // Only a token with an exp is remembered, and never a single-use one.
  std::shared_ptr<TokenMemo> keep =
      times.signed_request || times.expiry == std::chrono::system_clock::time_point{} ? nullptr : memo;
  // `head` lives until `done` is called (the forwarding engine owns it).
  authenticator_->async_authenticate(
      std::move(token), [this, &head, expiry = times.expiry, keep = std::move(keep), digest, done = std::move(done)](AuthOutcome outcome) mutable {
        if (outcome.ok()) {
          auto caller = caller_for(std::move(outcome.identity));
          if (keep) {
            const auto until = std::min(expiry, now_() + memo_max_age);
            std::lock_guard lock(keep->mu);
            keep->token = digest;
            keep->expiry = expiry;
            keep->valid_until = until;
            keep->caller = caller;
          }
          return impersonate(head, *caller, expiry, done);
        }
        // In `both` mode a token that is not this backend's token for this cluster
        // (a service-account JWT has another issuer) goes to the API server
        // unchanged, which authenticates it itself.
        if (mode_ == AuthMode::both &&
            (outcome.failure == AuthFailure::not_applicable || outcome.failure == AuthFailure::wrong_issuer))
          return pass_through(head, done);
        reject(outcome.failure, (backend_ == "entra" ? "Entra ID" : "OpenID Connect") + std::string(" token rejected: ") + outcome.message,
               done);
      });
}

void AgentPolicy::on_complete(const http::ExchangeRecord& record) noexcept {
  try {
    metrics_->request_done(record.status, record.duration, record.upgraded);
    // A request answered 401/403 here never reached the API server with an
    // identity; one forwarded without a user was a pass-through token.
    const char* method = record.subject && !record.subject->user.empty() ? backend_.c_str()
                         : record.status == 401                          ? "rejected"
                                                                         : "token";
    if (audit_ && !audit_->write(record, method)) metrics_->audit_dropped();
  } catch (...) {
    // Auditing must never take the data path down.
  }
}

}  // namespace clusterconnect::agent
