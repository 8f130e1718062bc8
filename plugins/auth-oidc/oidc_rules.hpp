#pragma once
// The checks an OpenID Connect token must pass, with kube-apiserver's OIDC
// semantics (--oidc-issuer-url, --oidc-client-id, --oidc-username-claim/
// -prefix, --oidc-groups-claim/-prefix, --oidc-required-claim,
// --oidc-signing-algs). Pure functions over a parsed JWS (jws.hpp); keys
// and discovery are in jwks.hpp.

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/result.hpp"
#include "jws.hpp"

namespace clusterconnect::oidc {

using namespace clusterconnect::auth;

// The algorithms this backend can verify; `signing_algs` picks among them.
inline const std::vector<std::string> supported_algorithms{"RS256", "ES256"};
inline constexpr int max_clock_skew_seconds = 300;

struct OidcRules {
  std::string issuer;     // exactly as tokens carry it in `iss`
  std::string client_id;  // must be one of the token's audiences
  std::string username_claim = "sub";
  // Already resolved (see resolve_username_prefix): what goes in front of
  // the claim's value, possibly nothing.
  std::string username_prefix;
  std::string groups_claim;  // empty: no groups taken from the token
  std::string groups_prefix;
  std::map<std::string, std::string> required_claims;
  std::vector<std::string> signing_algs{"RS256"};
  std::chrono::seconds clock_skew{60};
};

// kube-apiserver's rule for --oidc-username-prefix: unset means `issuer#`
// for every claim but `email`, which gets none; "-" means none.
std::string resolve_username_prefix(const std::string& configured, const std::string& username_claim,
                                    const std::string& issuer);

// `alg` must be one of `rules.signing_algs`: never `none`, never HS*.
AuthOutcome check_algorithm(const Jws& jws, const OidcRules& rules);

// `iss` must be the configured issuer exactly. Checked before any key is
// fetched, so tokens of other issuers (service-account tokens) never cause
// a fetch, and are refused as wrong_issuer.
AuthOutcome check_issuer(const Jws& jws, const OidcRules& rules);

// Time window (`exp` required, `nbf` and `iat` when present), audience,
// required claims, `email_verified`, and the identity mapping. Call only
// after the signature has been verified.
AuthOutcome check_claims(const Jws& jws, const OidcRules& rules, std::chrono::system_clock::time_point now);

}  // namespace clusterconnect::oidc
