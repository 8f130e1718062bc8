#pragma once
// Signing keys and issuers of OpenID providers: OIDC discovery -> issuers and
// jwks_uri -> keys by `kid`, cached per source (an Entra tenant, or an
// issuer) and refreshed on an unknown `kid` at a bounded rate, so a key
// rotation at the provider is picked up without a restart while a stream of
// forged `kid`s cannot turn into a stream of fetches.

#include <openssl/evp.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "clusterconnect/result.hpp"

namespace clusterconnect::auth {

using PublicKey = std::shared_ptr<EVP_PKEY>;
using KeyMap = std::map<std::string, PublicKey>;

// Signing keys for `algorithms` (RS256: RSA keys of 2048 bits or more;
// ES256: EC keys on P-256) from a JWKS document. Other key types, keys
// marked for encryption and keys whose `alg` is not accepted are skipped.
Result<KeyMap> parse_jwks(std::string_view document, const std::vector<std::string>& algorithms = {"RS256"});

// An RSA public key from the JWK members `n` and `e` (base64url).
Result<PublicKey> rsa_key_from_jwk(std::string_view n, std::string_view e);
// A P-256 public key from the JWK members `x` and `y` (base64url).
Result<PublicKey> p256_key_from_jwk(std::string_view x, std::string_view y);

// RSASSA-PKCS1-v1_5 with SHA-256 over `signing_input`; RSA keys only.
bool verify_rs256(EVP_PKEY* key, std::string_view signing_input, std::string_view signature);
// ECDSA P-256 with SHA-256, the signature as JWS writes it (R || S, 64
// bytes); P-256 keys only.
bool verify_es256(EVP_PKEY* key, std::string_view signing_input, std::string_view signature);
// verify_rs256 or verify_es256 by the token's `alg`; false for any other.
bool verify_signature(std::string_view alg, EVP_PKEY* key, std::string_view signing_input, std::string_view signature);

// The key cache's options as the authenticators take them:
// `key_refresh_min_interval_seconds` (1..3600, default 10) and
// `key_refresh_interval_seconds` (60..86400, default 3600).
Result<void> read_key_refresh_options(const nlohmann::json& options, std::chrono::seconds& min_interval,
                                      std::chrono::seconds& interval);

class JwksCache {
 public:
  // Blocking GET of a URL, returning the body of a 200 response.
  using Fetch = std::function<Result<std::string>(const std::string& url)>;

  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  // Where a source's discovery documents are. tenant_paths (Entra ID): the
  // source is a tenant, {authority}/{tenant}/v2.0/.well-known/openid-configuration
  // then, optional, the v1 document {authority}/{tenant}/.well-known/openid-configuration.
  // issuer (OpenID Connect Discovery 1.0): the source is the issuer URL,
  // {issuer}/.well-known/openid-configuration, whose `issuer` must be the
  // source exactly; `authority` is unused.
  enum class Layout { tenant_paths, issuer };

  struct Settings {
    std::string authority;  // no trailing '/'
    std::chrono::seconds min_refresh_interval{10};
    // Keys (and issuers) older than this are stale: refreshed in the
    // background, and before they are relied on again.
    std::chrono::seconds max_age{std::chrono::hours(1)};
    Clock now;  // default: std::chrono::steady_clock::now (tests inject one)
    Layout layout = Layout::tenant_paths;
    std::vector<std::string> algorithms{"RS256"};  // which keys are kept (parse_jwks)
  };

  JwksCache(Settings settings, Fetch fetch);

  // Non-blocking; null when the key is not (yet) known.
  PublicKey find(const std::string& tenant, const std::string& kid) const;
  // The issuers the tenant's discovery documents publish ({tenantid}
  // replaced by the tenant): the v2 one, then the v1 one when that document
  // could be read. Empty until loaded.
  std::vector<std::string> issuers(const std::string& tenant) const;
  // Whether a fetch for this tenant would happen now: never loaded, stale,
  // or the rate limit has passed since the last attempt.
  bool refresh_due(const std::string& tenant) const;
  bool loaded(const std::string& tenant) const;
  bool stale(const std::string& tenant) const;
  // Loaded tenants whose keys are stale, for the background refresh.
  std::vector<std::string> stale_tenants() const;
  // Blocking: discovery (v2 document, then the v1 document, which may be
  // missing: v1 tokens are then refused) then keys, unless the last attempt for this tenant
  // is more recent than the minimum interval. True when a new key set was
  // fetched, false when rate-limited. Fails with the reason when the keys
  // cannot be fetched; the previous key set then stays in use.
  Result<bool> refresh(const std::string& tenant);

  // The (first) discovery document of a source, by the layout.
  std::string discovery_url(const std::string& source) const;
  // tenant_paths: {authority}/{tenant}/.well-known/openid-configuration
  std::string v1_discovery_url(const std::string& tenant) const;

 private:
  struct TenantKeys {
    KeyMap keys;
    std::vector<std::string> issuers;
    bool loaded = false;
    bool attempted = false;
    std::chrono::steady_clock::time_point fetched_at;
    std::chrono::steady_clock::time_point attempted_at;
    std::string last_error;
  };

  std::chrono::steady_clock::time_point now() const { return settings_.now(); }

  Settings settings_;
  Fetch fetch_;
  mutable std::mutex mutex_;
  std::map<std::string, TenantKeys> tenants_;
  // One fetch at a time: concurrent misses for one rotation wait for the
  // first fetch instead of each starting their own.
  std::mutex fetch_mutex_;
};

}  // namespace clusterconnect::auth
