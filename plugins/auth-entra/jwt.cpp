#include "jwt.hpp"

#include <algorithm>
#include <cctype>
#include <set>

#include "encoding.hpp"

namespace clusterconnect::entra {
namespace {

AuthOutcome reject(AuthFailure f, std::string message) {
  AuthOutcome o;
  o.failure = f;
  o.message = std::move(message);
  return o;
}

// JSON with duplicate member names is refused: two parsers reading the same
// token must never disagree about which `aud` or `alg` it carries.
bool parse_strict_json_object(const std::string& text, nlohmann::json& out) {
  std::vector<std::set<std::string>> seen;
  bool duplicate = false;
  auto cb = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    switch (event) {
      case nlohmann::json::parse_event_t::object_start:
        seen.emplace_back();
        break;
      case nlohmann::json::parse_event_t::object_end:
        if (!seen.empty()) seen.pop_back();
        break;
      case nlohmann::json::parse_event_t::key:
        if (!seen.empty() && parsed.is_string() && !seen.back().insert(parsed.get<std::string>()).second) duplicate = true;
        break;
      default:
        break;
    }
    return true;
  };
  out = nlohmann::json::parse(text, cb, /*allow_exceptions=*/false);
  return !out.is_discarded() && out.is_object() && !duplicate;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y)); });
}

const nlohmann::json* member(const nlohmann::json& obj, const char* name) {
  auto it = obj.find(name);
  return it == obj.end() ? nullptr : &*it;
}

std::string string_claim(const nlohmann::json& payload, const char* name) {
  const auto* v = member(payload, name);
  return v && v->is_string() ? v->get<std::string>() : std::string();
}

// NumericDate as seconds; out-of-range or fractional-huge values are refused
// rather than converted with undefined behaviour.
bool numeric_date(const nlohmann::json& v, long long& out) {
  constexpr long long limit = 1'000'000'000'000'000LL;  // far beyond any real date, far from overflow
  if (v.is_number_unsigned()) {
    const auto u = v.get<unsigned long long>();
    if (u >= static_cast<unsigned long long>(limit)) return false;
    out = static_cast<long long>(u);
    return true;
  }
  if (v.is_number_integer()) {
    out = v.get<long long>();
    return out > -limit && out < limit;
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!(d > -1e15 && d < 1e15)) return false;
    out = static_cast<long long>(d);
    return true;
  }
  return false;
}

}  // namespace

std::string printable(std::string_view value, std::size_t max_length) {
  std::string out;
  for (char c : value.substr(0, max_length)) out += (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? c : '?';
  if (value.size() > max_length) out += "...";
  return out;
}

ParsedJws parse_jws(std::string_view token) {
  ParsedJws r;
  auto fail = [&](AuthFailure f, std::string message) {
    r.failure = f;
    r.message = std::move(message);
    return r;
  };
  if (token.size() > max_token_size) {
    return fail(AuthFailure::malformed, "token is " + std::to_string(token.size()) + " bytes, more than the " +
                                            std::to_string(max_token_size) + " accepted");
  }
  auto first_dot = token.find('.');
  auto header_text = base64url_decode(token.substr(0, first_dot));
  nlohmann::json header;
  if (!header_text || !parse_strict_json_object(*header_text, header) || !header.contains("alg")) {
    // Not a JOSE object at all: perhaps an opaque or service-account token.
    return fail(AuthFailure::not_applicable, "not a JWT");
  }
  if (first_dot == std::string_view::npos) return fail(AuthFailure::malformed, "JWT has only a header (truncated?)");
  auto second_dot = token.find('.', first_dot + 1);
  if (second_dot == std::string_view::npos) return fail(AuthFailure::malformed, "JWT has no signature part (truncated?)");
  if (token.find('.', second_dot + 1) != std::string_view::npos) {
    return fail(AuthFailure::malformed, "token has more than three parts (an encrypted JWE is not accepted)");
  }
  auto payload_text = base64url_decode(token.substr(first_dot + 1, second_dot - first_dot - 1));
  if (!payload_text) return fail(AuthFailure::malformed, "JWT payload is not valid base64url");
  nlohmann::json payload;
  if (!parse_strict_json_object(*payload_text, payload)) {
    return fail(AuthFailure::malformed, "JWT payload is not a JSON object with unique member names");
  }
  auto signature = base64url_decode(token.substr(second_dot + 1));
  if (!signature) return fail(AuthFailure::malformed, "JWT signature is not valid base64url");
  if (header.contains("crit")) {
    // RFC 7515 4.1.11: extensions we do not implement must make us refuse.
    return fail(AuthFailure::malformed, "JWT header has critical extensions ('crit'), which are not supported");
  }
  r.jws.header = std::move(header);
  r.jws.payload = std::move(payload);
  r.jws.signing_input = std::string(token.substr(0, second_dot));
  r.jws.signature = std::move(*signature);
  return r;
}

AuthOutcome check_algorithm(const Jws& jws) {
  const auto* alg = member(jws.header, "alg");
  if (!alg || !alg->is_string()) return reject(AuthFailure::malformed, "JWT header 'alg' is not a string");
  const auto& name = alg->get_ref<const std::string&>();
  if (name != "RS256") {
    return reject(AuthFailure::disallowed_algorithm, "signing algorithm '" + printable(name, 16) + "' is not accepted; only RS256 is");
  }
  return {};
}

AuthOutcome select_tenant(const Jws& jws, const ValidationRules& rules, std::string& tenant) {
  const auto* iss = member(jws.payload, "iss");
  if (!iss || !iss->is_string()) return reject(AuthFailure::malformed, "token has no 'iss' claim");
  const auto& issuer = iss->get_ref<const std::string&>();
  const std::string tid = string_claim(jws.payload, "tid");
  if (!tid.empty()) {
    for (const auto& t : rules.tenants)
      if (iequals(tid, t)) {
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
      if (iequals(segment, t)) {
        tenant = t;
        return {};
      }
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  return reject(AuthFailure::wrong_issuer, "issuer '" + printable(issuer) + "' is not an accepted Entra ID tenant");
}

AuthOutcome check_issuer(const Jws& jws, const std::string& tenant, const std::vector<std::string>& issuers) {
  const auto* iss = member(jws.payload, "iss");
  if (!iss || !iss->is_string()) return reject(AuthFailure::malformed, "token has no 'iss' claim");
  const auto& issuer = iss->get_ref<const std::string&>();
  // A token from tenant A never carries tenant B's issuer, but a mismatching
  // `tid` means something assembled this token by hand.
  const std::string tid = string_claim(jws.payload, "tid");
  if (!tid.empty() && !iequals(tid, tenant)) {
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

std::string reserved_name_reason(std::string_view name) {
  if (name.empty()) return "it is empty";
  if (name.size() >= 7 && iequals(name.substr(0, 7), "system:")) return "names in the 'system:' namespace are reserved for Kubernetes";
  for (std::size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c <= 0x20 || c == 0x7f) return "it contains whitespace or a control character";
    // UTF-8 whitespace and invisible separators: U+0085, U+00A0, U+1680,
    // U+2000..U+200B, U+2028, U+2029, U+202F, U+205F, U+3000, U+FEFF.
    const auto next = [&](std::size_t k) { return i + k < name.size() ? static_cast<unsigned char>(name[i + k]) : 0; };
    if (c == 0xc2 && (next(1) == 0x85 || next(1) == 0xa0)) return "it contains whitespace";
    if (c == 0xe1 && next(1) == 0x9a && next(2) == 0x80) return "it contains whitespace";
    if (c == 0xe2 && next(1) == 0x80 && (next(2) <= 0x8b || next(2) == 0xa8 || next(2) == 0xa9 || next(2) == 0xaf))
      return "it contains whitespace";
    if (c == 0xe2 && next(1) == 0x81 && next(2) == 0x9f) return "it contains whitespace";
    if (c == 0xe3 && next(1) == 0x80 && next(2) == 0x80) return "it contains whitespace";
    if (c == 0xef && next(1) == 0xbb && next(2) == 0xbf) return "it contains an invisible character";
  }
  return {};
}

AuthOutcome check_claims(const Jws& jws, const ValidationRules& rules, std::chrono::system_clock::time_point now) {
  const auto& p = jws.payload;
  const long long now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  const long long skew = rules.clock_skew.count();

  const auto* exp = member(p, "exp");
  long long exp_s = 0;
  if (!exp || !numeric_date(*exp, exp_s)) return reject(AuthFailure::malformed, "token has no numeric 'exp' claim");
  if (now_s > exp_s + skew) {
    return reject(AuthFailure::expired, "token expired " + std::to_string(now_s - exp_s) + " s ago; get a new one");
  }
  if (const auto* nbf = member(p, "nbf")) {
    long long nbf_s = 0;
    if (!numeric_date(*nbf, nbf_s)) return reject(AuthFailure::malformed, "token 'nbf' claim is not a number");
    if (now_s + skew < nbf_s) {
      return reject(AuthFailure::not_yet_valid, "token is not valid for another " + std::to_string(nbf_s - now_s) + " s (check the clocks)");
    }
  }

  const auto* aud = member(p, "aud");
  bool aud_ok = false;
  std::string aud_seen;
  auto accept = [&](const std::string& a) {
    if (aud_seen.empty()) aud_seen = a;
    for (const auto& want : rules.audiences)
      if (a == want) aud_ok = true;
  };
  if (aud && aud->is_string()) {
    accept(aud->get<std::string>());
  } else if (aud && aud->is_array()) {
    for (const auto& a : *aud)
      if (a.is_string()) accept(a.get<std::string>());
  } else {
    return reject(AuthFailure::malformed, "token has no 'aud' claim");
  }
  if (!aud_ok) {
    return reject(AuthFailure::wrong_audience, "token audience '" + printable(aud_seen) + "' is not this cluster's server application (" +
                                                   (rules.audiences.empty() ? std::string("none configured") : rules.audiences.front()) + ")");
  }

  const std::string oid = string_claim(p, "oid");
  if (oid.empty()) return reject(AuthFailure::malformed, "token has no 'oid' claim (not an Entra ID access token?)");

  // Group overage: Entra leaves `groups` out and points at Graph instead.
  const auto* claim_names = member(p, "_claim_names");
  const bool overage = (claim_names && claim_names->is_object() && claim_names->contains("groups")) ||
                       (member(p, "hasgroups") && p["hasgroups"] == true);
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
  if (const auto* groups = member(p, "groups")) {
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
