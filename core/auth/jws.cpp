#include "jws.hpp"

#include <set>

#include "clusterconnect/ascii.hpp"
#include "encoding.hpp"

namespace clusterconnect::auth {
namespace {

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
        if (!seen.empty() && parsed.is_string() && !seen.back().insert(parsed.get<std::string>()).second)
          duplicate = true;
        break;
      default:
        break;
    }
    return true;
  };
  out = nlohmann::json::parse(text, cb, /*allow_exceptions=*/false);
  return !out.is_discarded() && out.is_object() && !duplicate;
}

}  // namespace

const nlohmann::json* claim(const nlohmann::json& obj, const char* name) {
  auto it = obj.find(name);
  return it == obj.end() ? nullptr : &*it;
}

std::string string_claim(const nlohmann::json& payload, const char* name) {
  const auto* v = claim(payload, name);
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
  if (second_dot == std::string_view::npos)
    return fail(AuthFailure::malformed, "JWT has no signature part (truncated?)");
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
std::string reserved_name_reason(std::string_view name) {
  if (name.empty()) return "it is empty";
  if (name.size() >= 7 && ascii_iequals(name.substr(0, 7), "system:"))
    return "names in the 'system:' namespace are reserved for Kubernetes";
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
AuthOutcome check_time_window(const nlohmann::json& p, std::chrono::system_clock::time_point now,
                              std::chrono::seconds clock_skew) {
  const long long now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  const long long skew = clock_skew.count();
  const auto* exp = claim(p, "exp");
  long long exp_s = 0;
  if (!exp || !numeric_date(*exp, exp_s)) return reject(AuthFailure::malformed, "token has no numeric 'exp' claim");
  if (now_s > exp_s + skew) {
    return reject(AuthFailure::expired, "token expired " + std::to_string(now_s - exp_s) + " s ago; get a new one");
  }
  if (const auto* nbf = claim(p, "nbf")) {
    long long nbf_s = 0;
    if (!numeric_date(*nbf, nbf_s)) return reject(AuthFailure::malformed, "token 'nbf' claim is not a number");
    if (now_s + skew < nbf_s) {
      return reject(AuthFailure::not_yet_valid,
                    "token is not valid for another " + std::to_string(nbf_s - now_s) + " s (check the clocks)");
    }
  }
  return {};
}

AudienceMatch match_audience(const nlohmann::json& p, const std::vector<std::string>& audiences) {
  AudienceMatch m;
  auto consider = [&](const std::string& a) {
    if (m.first.empty()) m.first = a;
    for (const auto& want : audiences)
      if (a == want) m.matched = true;
  };
  const auto* aud = claim(p, "aud");
  m.present = aud && (aud->is_string() || aud->is_array());
  if (aud && aud->is_string()) {
    consider(aud->get<std::string>());
  } else if (aud && aud->is_array()) {
    for (const auto& a : *aud)
      if (a.is_string()) consider(a.get<std::string>());
  }
  return m;
}

}  // namespace clusterconnect::auth
