#pragma once
// Azure Relay shared access signatures:
//   SharedAccessSignature sr=<urlenc(resource)>&sig=<urlenc(base64(HMAC-SHA256))>&se=<unix expiry>&skn=<key name>
// The HMAC is keyed with the key string's bytes (not base64-decoded) over the
// still-encoded sr value, "\n" and se. No Asio here: used by the relay, the
// agent and the management API alike.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace clusterconnect {

std::string make_sas_token(std::string_view resource_uri, std::string_view key_name, std::string_view key,
                           std::chrono::system_clock::time_point expiry);

struct SasToken {
  std::string resource_raw;  // sr as sent (still percent-encoded): what is signed
  std::string resource;      // sr decoded
  std::string signature;     // sig decoded (base64)
  std::string expiry_raw;    // se as sent
  std::int64_t expiry = 0;   // unix seconds
  std::string key_name;      // skn
};

// Parses "SharedAccessSignature k=v&k=v..." (fields in any order). Returns
// nothing when the prefix or one of sr, sig, se, skn is missing or malformed.
std::optional<SasToken> parse_sas_token(std::string_view token);

enum class SasError { none, missing, malformed, unknown_key, bad_signature, expired, wrong_resource };

struct SasVerdict {
  SasError error = SasError::none;
  unsigned http_status = 200;  // 401 missing/invalid/expired, 403 wrong resource
  std::string reason;          // one line, never containing the token
  std::string key_name;
  std::chrono::system_clock::time_point expiry{};
  bool ok() const noexcept { return error == SasError::none; }
};

// The secret of the named key, or nothing when the key is unknown.
using SasKeyLookup = std::function<std::optional<std::string>(std::string_view key_name)>;

// Checks signature, expiry and that the token's resource covers
// `requested_resource` (see sas_resource_covers). Rights are the caller's
// business: it knows what the key may do.
SasVerdict verify_sas_token(std::string_view token, std::string_view requested_resource, const SasKeyLookup& keys,
                            std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

// Resource comparison after normalising both sides: scheme ignored, host
// case-insensitive, ":443" dropped, query dropped, a leading "/$hc" dropped,
// path a whole-segment, case-insensitive prefix of the requested path.
bool sas_resource_covers(std::string_view token_resource, std::string_view requested_resource);

}  // namespace clusterconnect
