#pragma once
// Capability kind "authenticator": turns a bearer credential into an identity
// or a precise rejection.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "clusterconnect/result.hpp"
#include "clusterconnect/unique_function.hpp"

namespace clusterconnect {

struct Identity {
  std::string user;
  std::string uid;
  std::vector<std::string> groups;
  std::map<std::string, std::vector<std::string>> extra;
};

enum class AuthFailure {
  none,
  not_applicable,  // not a token this authenticator understands (e.g. not a JWT)
  malformed,
  disallowed_algorithm,
  unknown_key,
  bad_signature,
  expired,
  not_yet_valid,
  wrong_audience,
  wrong_issuer,
  group_overage,
  keys_unavailable,
  pop_required,   // a bearer token where only proof-of-possession tokens are accepted
  wrong_cluster,  // a proof-of-possession token signed for another cluster
  replayed,       // a proof-of-possession token whose nonce was seen before
};

const char* to_string(AuthFailure f) noexcept;

struct AuthOutcome {
  AuthFailure failure = AuthFailure::none;
  std::string message;  // why, for the log and the Status body; never the token
  Identity identity;
  bool ok() const noexcept { return failure == AuthFailure::none; }
};

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // May complete inline (cached keys) or later (key fetch); the handler runs
  // on an io thread.
  virtual void async_authenticate(std::string bearer_token, UniqueFunction<void(AuthOutcome)> handler) noexcept = 0;
};

class AuthenticatorCapability {
 public:
  virtual ~AuthenticatorCapability() = default;
  // `options`: {"tenants": [...], "audiences": [...], "authority": URL,
  //   "allow_http_loopback": bool, "clock_skew_seconds": N, "username_claim": "upn"|"oid", ...}
  virtual Result<std::shared_ptr<Authenticator>> create(const nlohmann::json& options) noexcept = 0;
};

}  // namespace clusterconnect
