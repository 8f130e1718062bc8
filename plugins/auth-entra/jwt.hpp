#pragma once
// JWS compact tokens as Entra ID issues them, and the checks an access token
// must pass before anyone trusts its claims. Pure functions: no I/O, no keys
// fetched here (see jwks.hpp), so the relay's management API and the agent
// share exactly the same rules.

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "clusterconnect/authenticator.hpp"

namespace clusterconnect::entra {

// Entra access tokens with many groups approach 8 KiB; twice that is the most
// a legitimate one needs, and nothing larger is parsed.
constexpr std::size_t max_token_size = 16 * 1024;

struct Jws {
  nlohmann::json header;
  nlohmann::json payload;
  std::string signing_input;  // "<header>.<payload>" exactly as received
  std::string signature;      // decoded bytes
};

struct ParsedJws {
  AuthFailure failure = AuthFailure::none;  // not_applicable, malformed
  std::string message;
  Jws jws;
  bool ok() const noexcept { return failure == AuthFailure::none; }
};

// Splits and decodes a compact JWS. Something that does not even start like
// a JWT (no JSON header with an `alg`) is not_applicable, so a host can hand
// it to another authenticator; a JWT that is broken is malformed.
ParsedJws parse_jws(std::string_view token);

// What an accepted token must look like.
struct ValidationRules {
  std::vector<std::string> tenants;    // tenant IDs whose tokens are accepted
  std::vector<std::string> audiences;  // accepted `aud` values
  std::string authority;               // e.g. https://login.microsoftonline.com (no trailing '/')
  std::chrono::seconds clock_skew{300};
  // As kube-apiserver's --oidc-username-claim/-prefix and --oidc-groups-prefix.
  // "upn" (the default, Arc's): upn, else oid (applications have no upn);
  // "oid": always oid; any other claim: that claim, which must be present.
  std::string username_claim = "upn";
  std::string username_prefix;
  std::string groups_prefix;
};

// Why a user or group name (after its prefix) may not be impersonated, or
// empty: names in the reserved `system:` namespace, and names with
// whitespace or control characters (which could pass for another name).
std::string reserved_name_reason(std::string_view name);

// The `alg` check: RS256 only.
AuthOutcome check_algorithm(const Jws& jws);

// The configured tenant a token claims to come from, before any key or
// discovery document is fetched: its `tid` (or, without one, a path segment
// of its `iss`) must be one of `rules.tenants`. Tokens of other tenants are
// refused here (wrong_issuer), so they never cause a fetch.
AuthOutcome select_tenant(const Jws& jws, const ValidationRules& rules, std::string& tenant);

// `iss` must be exactly one of the issuers the tenant's discovery documents
// publish (v2 and v1 forms; see JwksCache::issuers).
AuthOutcome check_issuer(const Jws& jws, const std::string& tenant, const std::vector<std::string>& issuers);

// Time window, audience, group overage and the identity mapping. Call only
// after the signature has been verified.
AuthOutcome check_claims(const Jws& jws, const ValidationRules& rules, std::chrono::system_clock::time_point now);

// Printable, bounded rendering of an attacker-supplied value (an `alg`, a
// `kid`, an issuer) for messages.
std::string printable(std::string_view value, std::size_t max_length = 80);

}  // namespace clusterconnect::entra
