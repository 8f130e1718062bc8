#include "jwt.hpp"

#include "clusterconnect/ascii.hpp"

namespace clusterconnect::entra {

AuthOutcome check_algorithm(const Jws& jws) {
  const auto* alg = claim(jws.header, "alg");
  if (!alg || !alg->is_string()) return reject(AuthFailure::malformed, "JWT header 'alg' is not a string");
  const auto& name = alg->get_ref<const std::string&>();
  if (name != "RS256") {
    return reject(AuthFailure::disallowed_algorithm, "signing algorithm '" + printable(name, 16) + "' is not accepted; only RS256 is");
  }
  return {};
}

AuthOutcome select_tenant(const Jws& jws, const ValidationRules& rules, std::string& tenant) {
  const auto* iss = claim(jws.payload, "iss");
  if (!iss || !iss->is_string()) return reject(AuthFailure::malformed, "token has no 'iss' claim");
  const auto& issuer = iss->get_ref<const std::string&>();
  const std::string tid = string_claim(jws.payload, "tid");
  if (!tid.empty()) {
    for (const auto& t : rules.tenants)
      if (ascii_iequals(tid, t)) {
        tenant = t;
        return {};
      }
    return reject(AuthFailure::wrong_issuer, "token is from tenant '" + printable(tid) + "', which this cluster does not accept (issuer '" +
                                                 printable(issuer) + "')");
  }
  // No `tid`: the tenant must be a whole path segment of the issuer.
  std::string_view rest(issuer);
  while (!rest.empty()) {
    auto slash = rest.find('/');
    auto segment = rest.substr(0, slash);
    for (const auto& t : rules.tenants)
      if (ascii_iequals(segment, t)) {
        tenant = t;
        return {};
      }
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  return reject(AuthFailure::wrong_issuer, "issuer '" + printable(issuer) + "' is not an accepted Entra ID tenant");
}

AuthOutcome check_issuer(const Jws& jws, const std::string& tenant, const std::vector<std::string>& issuers) {
  const auto* iss = claim(jws.payload, "iss");
  if (!iss || !iss->is_string()) return reject(AuthFailure::malformed, "token has no 'iss' claim");
  const auto& issuer = iss->get_ref<const std::string&>();
  // A token from tenant A never carries tenant B's issuer, but a mismatching
  // `tid` means something assembled this token by hand.
  const std::string tid = string_claim(jws.payload, "tid");
  if (!tid.empty() && !ascii_iequals(tid, tenant)) {
    return reject(AuthFailure::wrong_issuer, "token 'tid' " + printable(tid) + " does not match its issuer's tenant");
  }
  for (const auto& i : issuers)
    if (issuer == i) return {};
  std::string expected;
  for (const auto& i : issuers) expected += (expected.empty() ? "" : " or ") + i;
  return reject(AuthFailure::wrong_issuer, "issuer '" + printable(issuer) + "' is not one tenant " + tenant +
                                               "'s discovery documents publish (expected " +
                                               (expected.empty() ? std::string("none known") : expected) + ")");
}

AuthOutcome check_claims(const Jws& jws, const ValidationRules& rules, std::chrono::system_clock::time_point now) {
  const auto& p = jws.payload;
  if (auto window = check_time_window(p, now, rules.clock_skew); !window.ok()) return window;

  const auto audience = match_audience(p, rules.audiences);
  if (!audience.present) return reject(AuthFailure::malformed, "token has no 'aud' claim");
  if (!audience.matched) {
    return reject(AuthFailure::wrong_audience, "token audience '" + printable(audience.first) + "' is not this cluster's server application (" +
                                                   (rules.audiences.empty() ? std::string("none configured") : rules.audiences.front()) + ")");
  }

  const std::string oid = string_claim(p, "oid");
  if (oid.empty()) return reject(AuthFailure::malformed, "token has no 'oid' claim (not an Entra ID access token?)");

  // Group overage: Entra leaves `groups` out and points at Graph instead.
  const auto* claim_names = claim(p, "_claim_names");
  const bool overage = (claim_names && claim_names->is_object() && claim_names->contains("groups")) ||
                       (claim(p, "hasgroups") && p["hasgroups"] == true);
  if (overage) {
    return reject(AuthFailure::group_overage,
                  "the caller is in too many groups for Entra ID to list them in the token (group overage), and no group source "
                  "is configured; reduce the groups assigned to the user or to the application's token configuration");
  }

  AuthOutcome ok;
  Identity& id = ok.identity;
  std::string name;
  if (rules.username_claim == "oid") {
    name = oid;
  } else if (rules.username_claim == "upn") {
    // Arc's mapping: applications have no upn and are known by their oid.
    // preferred_username is never used unless configured as the claim: it is
    // not a verified, unique name.
    name = string_claim(p, "upn");
    if (name.empty()) name = oid;
  } else {
    name = string_claim(p, rules.username_claim.c_str());
    if (name.empty()) {
      return reject(AuthFailure::malformed, "token has no '" + printable(rules.username_claim) +
                                                "' claim, which this cluster takes the user name from");
    }
  }
  id.user = rules.username_prefix + name;
  if (auto why = reserved_name_reason(id.user); !why.empty()) {
    return reject(AuthFailure::malformed, "user name '" + printable(id.user) + "' from the token is not accepted: " + why);
  }
  id.uid = oid;
  if (const auto* groups = claim(p, "groups")) {
    if (!groups->is_array()) return reject(AuthFailure::malformed, "token 'groups' claim is not an array");
    for (const auto& g : *groups) {
      if (!g.is_string()) return reject(AuthFailure::malformed, "token 'groups' claim holds a non-string");
      std::string group = rules.groups_prefix + g.get<std::string>();
      // A refused group refuses the request: dropping it silently could
      // change what a deny rule or an audit sees.
      if (auto why = reserved_name_reason(group); !why.empty()) {
        return reject(AuthFailure::malformed, "group '" + printable(group) + "' in the token is not accepted: " + why);
      }
      id.groups.push_back(std::move(group));
    }
  }
  id.extra["oid"] = {oid};
  const std::string tid = string_claim(p, "tid");
  if (!tid.empty()) id.extra["tid"] = {tid};
  return ok;
}

}  // namespace clusterconnect::entra
