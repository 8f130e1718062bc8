#pragma once
// JWS compact tokens (RFC 7515) and the claim checks every JWT-based
// authenticator shares: parsing with strict JSON, time window, audience,
// and the names that may never be impersonated. Pure functions: no I/O, no
// keys (see jwks.hpp); the issuer-specific rules live in each authenticator.

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "clusterconnect/authenticator.hpp"

namespace clusterconnect::auth {

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

// A refused token's outcome.
inline AuthOutcome reject(AuthFailure f, std::string message) {
  AuthOutcome o;
  o.failure = f;
  o.message = std::move(message);
  return o;
}

// Splits and decodes a compact JWS. Something that does not even start like
// a JWT (no JSON header with an `alg`) is not_applicable, so a host can hand
// it to another authenticator; a JWT that is broken is malformed.
ParsedJws parse_jws(std::string_view token);

// Printable, bounded rendering of an attacker-supplied value (an `alg`, a
// `kid`, an issuer) for messages.
std::string printable(std::string_view value, std::size_t max_length = 80);

// Why a user or group name (after its prefix) may not be impersonated, or
// empty: names in the reserved `system:` namespace, and names with
// whitespace or control characters (which could pass for another name).
std::string reserved_name_reason(std::string_view name);

// The member `name` of a JSON object, or null.
const nlohmann::json* claim(const nlohmann::json& object, const char* name);
// The member `name` when it is a string, else empty.
std::string string_claim(const nlohmann::json& object, const char* name);
// A NumericDate claim as seconds; false for non-numbers and absurd values.
bool numeric_date(const nlohmann::json& value, long long& seconds);

// `exp` (required) and `nbf` (when present) against `now`, `clock_skew`
// either way.
AuthOutcome check_time_window(const nlohmann::json& payload, std::chrono::system_clock::time_point now,
                              std::chrono::seconds clock_skew);

// The `aud` claim (a string or a list of strings) against the accepted
// audiences: `matched` when one of them is there; `first` is the first
// audience the token names, for messages.
struct AudienceMatch {
  bool present = false;
  bool matched = false;
  std::string first;
};
AudienceMatch match_audience(const nlohmann::json& payload, const std::vector<std::string>& audiences);

}  // namespace clusterconnect::auth
