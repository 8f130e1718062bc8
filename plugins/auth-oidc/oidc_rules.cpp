#include "oidc_rules.hpp"

#include <algorithm>

namespace clusterconnect::oidc {

std::string resolve_username_prefix(const std::string& configured, const std::string& username_claim,
                                    const std::string& issuer) {
  if (configured == "-") return {};
  if (!configured.empty()) return configured;
  return username_claim == "email" ? std::string() : issuer + "#";
}

AuthOutcome check_algorithm(const Jws& jws, const OidcRules& rules) {
  const auto* alg = claim(jws.header, "alg");
  if (!alg || !alg->is_string()) return reject(AuthFailure::malformed, "JWT header 'alg' is not a string");
  const auto& name = alg->get_ref<const std::string&>();
  if (std::find(rules.signing_algs.begin(), rules.signing_algs.end(), name) == rules.signing_algs.end()) {
    std::string accepted;
    for (const auto& a : rules.signing_algs) accepted += (accepted.empty() ? "" : ", ") + a;
    return reject(AuthFailure::disallowed_algorithm,
                  "signing algorithm '" + printable(name, 16) + "' is not accepted; only " + accepted + " are");
  }
  return {};
}

AuthOutcome check_issuer(const Jws& jws, const OidcRules& rules) {
  const auto* iss = claim(jws.payload, "iss");
  if (!iss || !iss->is_string()) return reject(AuthFailure::malformed, "token has no 'iss' claim");
  if (iss->get_ref<const std::string&>() != rules.issuer) {
    return reject(AuthFailure::wrong_issuer, "issuer '" + printable(iss->get_ref<const std::string&>()) +
                                                 "' is not this cluster's issuer (" + rules.issuer + ")");
  }
  return {};
}

namespace {

AuthOutcome check_issued_at(const nlohmann::json& p, std::chrono::system_clock::time_point now,
                            std::chrono::seconds skew) {
  const auto* iat = claim(p, "iat");
  if (!iat) return {};
  long long iat_s = 0;
  if (!numeric_date(*iat, iat_s)) return reject(AuthFailure::malformed, "token 'iat' claim is not a number");
  const long long now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  if (iat_s > now_s + skew.count()) {
    return reject(AuthFailure::not_yet_valid,
                  "token was issued " + std::to_string(iat_s - now_s) + " s in the future (check the clocks)");
  }
  return {};
}

// A name or group as it will be impersonated, or why not.
AuthOutcome accepted_name(const std::string& name, const char* what) {
  if (auto why = reserved_name_reason(name); !why.empty())
    return reject(AuthFailure::malformed,
                  std::string(what) + " '" + printable(name) + "' from the token is not accepted: " + why);
  return {};
}

}  // namespace

AuthOutcome check_claims(const Jws& jws, const OidcRules& rules, std::chrono::system_clock::time_point now) {
  const auto& p = jws.payload;
  if (auto window = check_time_window(p, now, rules.clock_skew); !window.ok()) return window;
  if (auto issued = check_issued_at(p, now, rules.clock_skew); !issued.ok()) return issued;

  const auto audience = match_audience(p, {rules.client_id});
  if (!audience.present) return reject(AuthFailure::malformed, "token has no 'aud' claim");
  if (!audience.matched) {
    return reject(AuthFailure::wrong_audience, "token audience '" + printable(audience.first) +
                                                   "' is not this cluster's client ID (" + rules.client_id + ")");
  }

  for (const auto& [name, value] : rules.required_claims) {
    const auto* v = claim(p, name.c_str());
    if (!v) return reject(AuthFailure::malformed, "token lacks the required claim '" + printable(name) + "'");
    if (!v->is_string() || v->get_ref<const std::string&>() != value) {
      return reject(AuthFailure::malformed, "token claim '" + printable(name) + "' does not have the required value");
    }
  }

  const auto* user_claim = claim(p, rules.username_claim.c_str());
  if (!user_claim) {
    return reject(AuthFailure::malformed, "token has no '" + printable(rules.username_claim) +
                                              "' claim, which this cluster takes the user name from");
  }
  if (!user_claim->is_string() || user_claim->get_ref<const std::string&>().empty()) {
    return reject(AuthFailure::malformed,
                  "token claim '" + printable(rules.username_claim) + "' is not a non-empty string");
  }
  if (rules.username_claim == "email") {
    // kube-apiserver: an `email_verified` that is present must be true; an
    // address the provider has not verified must not become a user name.
    if (const auto* verified = claim(p, "email_verified")) {
      if (!verified->is_boolean())
        return reject(AuthFailure::malformed, "token 'email_verified' claim is not a boolean");
      if (!verified->get<bool>()) {
        return reject(
            AuthFailure::malformed,
            "the token's email address is not verified (email_verified is false); verify it at the identity provider");
      }
    }
  }

  AuthOutcome ok;
  Identity& id = ok.identity;
  id.user = rules.username_prefix + user_claim->get<std::string>();
  if (auto named = accepted_name(id.user, "user name"); !named.ok()) return named;

  if (!rules.groups_claim.empty()) {
    if (const auto* groups = claim(p, rules.groups_claim.c_str())) {
      std::vector<std::string> names;
      if (groups->is_string()) {
        names.push_back(groups->get<std::string>());
      } else if (groups->is_array()) {
        for (const auto& g : *groups) {
          if (!g.is_string())
            return reject(AuthFailure::malformed,
                          "token '" + printable(rules.groups_claim) + "' claim holds a non-string");
          names.push_back(g.get<std::string>());
        }
      } else {
        return reject(AuthFailure::malformed,
                      "token '" + printable(rules.groups_claim) + "' claim is neither a string nor a list of strings");
      }
      for (auto& g : names) {
        std::string group = rules.groups_prefix + g;
        // A refused group refuses the request: dropping it silently could
        // change what a deny rule or an audit sees.
        if (auto named = accepted_name(group, "group"); !named.ok()) return named;
        id.groups.push_back(std::move(group));
      }
    }
  }
  return ok;
}

}  // namespace clusterconnect::oidc
