#include "clusterconnect/sas_token.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <vector>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "clusterconnect/url.hpp"

namespace clusterconnect {

namespace {

constexpr std::string_view prefix = "SharedAccessSignature ";
constexpr std::size_t max_token_size = 4096;
constexpr std::int64_t max_expiry = 9'000'000'000;

std::string sign(std::string_view key, std::string_view resource_raw, std::string_view expiry_raw) {
  std::string to_sign;
  to_sign.reserve(resource_raw.size() + 1 + expiry_raw.size());
  to_sign.append(resource_raw).append("\n").append(expiry_raw);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(to_sign.data()),
       to_sign.size(), mac, &mac_len);
  std::string b64(4 * ((mac_len + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), mac, static_cast<int>(mac_len));
  b64.resize(static_cast<std::size_t>(n));
  return b64;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

struct NormalisedResource {
  std::string host;
  std::vector<std::string> segments;  // lower-cased path segments
};

NormalisedResource normalise(std::string_view r) {
  NormalisedResource n;
  if (auto p = r.find("://"); p != std::string_view::npos) r.remove_prefix(p + 3);
  if (auto q = r.find_first_of("?#"); q != std::string_view::npos) r = r.substr(0, q);
  auto slash = r.find('/');
  std::string_view authority = r.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view{} : r.substr(slash);
  n.host = lower(authority);
  if (n.host.size() > 4 && n.host.ends_with(":443")) n.host.resize(n.host.size() - 4);
  std::size_t i = 0;
  while (i < path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) n.segments.push_back(lower(path.substr(i, j - i)));
    i = j + 1;
  }
  if (!n.segments.empty() && n.segments.front() == "$hc") n.segments.erase(n.segments.begin());
  return n;
}

}  // namespace

std::string make_sas_token(std::string_view resource_uri, std::string_view key_name, std::string_view key,
                           std::chrono::system_clock::time_point expiry) {
  const std::string sr = percent_encode(resource_uri);
  const std::string se =
      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(expiry.time_since_epoch()).count());
  return std::string(prefix) + "sr=" + sr + "&sig=" + percent_encode(sign(key, sr, se)) + "&se=" + se +
         "&skn=" + percent_encode(key_name);
}

std::optional<SasToken> parse_sas_token(std::string_view token) {
  if (token.size() > max_token_size || !token.starts_with(prefix)) return std::nullopt;
  token.remove_prefix(prefix.size());
  SasToken t;
  bool have_sr = false, have_sig = false, have_se = false, have_skn = false;
  while (!token.empty()) {
    auto amp = token.find('&');
    std::string_view field = token.substr(0, amp);
    token = amp == std::string_view::npos ? std::string_view{} : token.substr(amp + 1);
    auto eq = field.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    std::string_view k = field.substr(0, eq), v = field.substr(eq + 1);
    std::string decoded;
    if (!percent_decode(v, decoded)) return std::nullopt;
    if (k == "sr") {
      t.resource_raw = std::string(v);
      t.resource = std::move(decoded);
      have_sr = true;
    } else if (k == "sig") {
      t.signature = std::move(decoded);
      have_sig = true;
    } else if (k == "se") {
      t.expiry_raw = std::string(v);
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), t.expiry);
      // Beyond ~2255 the expiry would overflow system_clock's nanoseconds.
      if (ec != std::errc{} || p != v.data() + v.size() || t.expiry < 0 || t.expiry > max_expiry) return std::nullopt;
      have_se = true;
    } else if (k == "skn") {
      t.key_name = std::move(decoded);
      have_skn = true;
    }
    // Unknown fields are ignored, as Azure Relay does.
  }
  if (!have_sr || !have_sig || !have_se || !have_skn || t.resource.empty() || t.signature.empty()) return std::nullopt;
  return t;
}

namespace {

// A token's resource grants a path prefix, so it must name one plainly: a
// host, at least one path segment, no query or fragment (which would cut the
// path short when normalised), no dot segments, no empty segments, no
// userinfo.
bool plain_resource(std::string_view r) {
  if (r.find_first_of("?#@\\") != std::string_view::npos) return false;
  auto p = r.find("://");
  if (p == std::string_view::npos) return false;
  r.remove_prefix(p + 3);
  auto slash = r.find('/');
  if (slash == 0 || slash == std::string_view::npos) return false;
  std::string_view path = r.substr(slash + 1);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  if (path.empty()) return false;
  std::size_t i = 0;
  while (i <= path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string segment;
    if (j == i || !percent_decode(path.substr(i, j - i), segment)) return false;
    if (segment == "." || segment == ".." || segment.find('/') != std::string::npos) return false;
    i = j + 1;
  }
  return true;
}

}  // namespace

bool sas_resource_covers(std::string_view token_resource, std::string_view requested_resource) {
  if (!plain_resource(token_resource)) return false;
  NormalisedResource have = normalise(token_resource), want = normalise(requested_resource);
  if (have.host.empty() || have.host != want.host) return false;
  if (have.segments.size() > want.segments.size()) return false;
  return std::equal(have.segments.begin(), have.segments.end(), want.segments.begin());
}

SasVerdict verify_sas_token(std::string_view token, std::string_view requested_resource, const SasKeyLookup& keys,
                            std::chrono::system_clock::time_point now) {
  SasVerdict v;
  auto reject = [&](SasError e, unsigned status, std::string reason) {
    v.error = e;
    v.http_status = status;
    v.reason = std::move(reason);
    return v;
  };
  if (token.empty()) return reject(SasError::missing, 401, "missing token");
  auto t = parse_sas_token(token);
  if (!t) return reject(SasError::malformed, 401, "malformed token");
  v.key_name = t->key_name;
  v.expiry = std::chrono::system_clock::time_point(std::chrono::seconds(t->expiry));
  auto key = keys ? keys(t->key_name) : std::nullopt;
  if (!key) return reject(SasError::unknown_key, 401, "unknown key name '" + t->key_name + "'");
  const std::string expected = sign(*key, t->resource_raw, t->expiry_raw);
  if (expected.size() != t->signature.size() ||
      CRYPTO_memcmp(expected.data(), t->signature.data(), expected.size()) != 0)
    return reject(SasError::bad_signature, 401, "invalid token signature");
  if (v.expiry <= now) return reject(SasError::expired, 401, "token expired");
  if (!sas_resource_covers(t->resource, requested_resource))
    return reject(SasError::wrong_resource, 403, "token is not valid for this path");
  return v;
}

}  // namespace clusterconnect
