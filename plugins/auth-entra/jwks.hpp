#pragma once
// Signing keys and issuers of Entra ID tenants: OIDC discovery (the v2 and
// the v1 document) -> issuers and jwks_uri -> RSA keys by `kid`, cached per
// tenant and refreshed on an unknown `kid` at a bounded rate, so a key
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

#include "clusterconnect/result.hpp"

namespace clusterconnect::entra {

using PublicKey = std::shared_ptr<EVP_PKEY>;
using KeyMap = std::map<std::string, PublicKey>;

// RSA signing keys from a JWKS document; other key types and keys marked
// for encryption are skipped, RSA keys under 2048 bits are refused.
Result<KeyMap> parse_jwks(std::string_view document);

// An RSA public key from the JWK members `n` and `e` (base64url).
Result<PublicKey> rsa_key_from_jwk(std::string_view n, std::string_view e);

// RSASSA-PKCS1-v1_5 with SHA-256 over `signing_input`.
bool verify_rs256(EVP_PKEY* key, std::string_view signing_input, std::string_view signature);

class JwksCache {
 public:
  // Blocking GET of a URL, returning the body of a 200 response.
  using Fetch = std::function<Result<std::string>(const std::string& url)>;

  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  struct Settings {
    std::string authority;  // no trailing '/'
    std::chrono::seconds min_refresh_interval{10};
    // Keys (and issuers) older than this are stale: refreshed in the
    // background, and before they are relied on again.
    std::chrono::seconds max_age{std::chrono::hours(1)};
    Clock now;  // default: std::chrono::steady_clock::now (tests inject one)
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

  // {authority}/{tenant}/v2.0/.well-known/openid-configuration
  std::string discovery_url(const std::string& tenant) const;
  // {authority}/{tenant}/.well-known/openid-configuration
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

}  // namespace clusterconnect::entra
