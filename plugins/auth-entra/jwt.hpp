#pragma once
// The checks an Entra ID access token must pass before anyone trusts its
// claims (parsing and the generic checks are in jws.hpp). Pure functions: no
// I/O, no keys fetched here (see jwks.hpp), so the relay's management API and
// the agent share exactly the same rules.

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "clusterconnect/authenticator.hpp"
#include "jws.hpp"

namespace clusterconnect::entra {

// The JWS, key and HTTP pieces shared with other identity backends.
using namespace clusterconnect::auth;

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

}  // namespace clusterconnect::entra
