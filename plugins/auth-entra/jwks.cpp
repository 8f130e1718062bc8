#include "jwks.hpp"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>

#include <nlohmann/json.hpp>

#include "encoding.hpp"

namespace clusterconnect::entra {
namespace {

using BnPtr = std::unique_ptr<BIGNUM, decltype(&BN_free)>;

BnPtr bignum(const std::string& bytes) {
  return BnPtr(BN_bin2bn(reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()), nullptr), &BN_free);
}

constexpr int min_rsa_bits = 2048;

// Entra's multi-tenant documents write the issuer with a `{tenantid}`
// placeholder; a tenant's own document has its ID there already.
std::string substitute_tenant(std::string issuer, const std::string& tenant) {
  const std::string placeholder = "{tenantid}";
  for (auto at = issuer.find(placeholder); at != std::string::npos; at = issuer.find(placeholder, at + tenant.size()))
    issuer.replace(at, placeholder.size(), tenant);
  return issuer;
}

std::string string_member(const nlohmann::json& doc, const char* name) {
  auto it = doc.find(name);
  return it != doc.end() && it->is_string() ? it->get<std::string>() : std::string();
}
constexpr std::size_t max_keys = 64;

}  // namespace

Result<PublicKey> rsa_key_from_jwk(std::string_view n64, std::string_view e64) {
  auto n = base64url_decode(n64);
  auto e = base64url_decode(e64);
  if (!n || !e || n->empty() || e->empty()) return fail("RSA key has an invalid 'n' or 'e'");
  if (n->size() > 1024 || e->size() > 8) return fail("RSA key is larger than supported");
  auto bn_n = bignum(*n);
  auto bn_e = bignum(*e);
  if (!bn_n || !bn_e) return fail("out of memory reading an RSA key");
  if (BN_num_bits(bn_n.get()) < min_rsa_bits) return fail("RSA key is shorter than 2048 bits");

  std::unique_ptr<OSSL_PARAM_BLD, decltype(&OSSL_PARAM_BLD_free)> bld(OSSL_PARAM_BLD_new(), &OSSL_PARAM_BLD_free);
  if (!bld || !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()))
    return fail("could not build an RSA key");
  std::unique_ptr<OSSL_PARAM, decltype(&OSSL_PARAM_free)> params(OSSL_PARAM_BLD_to_param(bld.get()), &OSSL_PARAM_free);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr), &EVP_PKEY_CTX_free);
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0 || !pkey)
    return fail("could not build an RSA key");
  return PublicKey(pkey, &EVP_PKEY_free);
}

bool verify_rs256(EVP_PKEY* key, std::string_view signing_input, std::string_view signature) {
  if (!key || signature.size() != static_cast<std::size_t>(EVP_PKEY_get_size(key))) return false;
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!md || EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, key) != 1) return false;
  return EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                          reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size()) == 1;
}

Result<KeyMap> parse_jwks(std::string_view document) {
  auto doc = nlohmann::json::parse(document, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("keys") || !doc["keys"].is_array()) {
    return fail("key set is not a JWKS document (no 'keys' array)");
  }
  KeyMap keys;
  for (const auto& k : doc["keys"]) {
    if (keys.size() >= max_keys) break;
    if (!k.is_object()) continue;
    auto str = [&](const char* name) { return k.contains(name) && k[name].is_string() ? k[name].get<std::string>() : std::string(); };
    if (str("kty") != "RSA") continue;
    const std::string use = str("use");
    if (!use.empty() && use != "sig") continue;
    const std::string alg = str("alg");
    if (!alg.empty() && alg != "RS256") continue;
    const std::string kid = str("kid");
    if (kid.empty()) continue;
    auto key = rsa_key_from_jwk(str("n"), str("e"));
    if (!key) continue;  // one bad entry must not take the tenant's other keys down
    keys.emplace(kid, std::move(*key));
  }
  if (keys.empty()) return fail("key set holds no usable RSA signing key");
  return keys;
}

JwksCache::JwksCache(Settings settings, Fetch fetch) : settings_(std::move(settings)), fetch_(std::move(fetch)) {
  if (!settings_.now) settings_.now = [] { return std::chrono::steady_clock::now(); };
}

std::string JwksCache::discovery_url(const std::string& tenant) const {
  return settings_.authority + "/" + tenant + "/v2.0/.well-known/openid-configuration";
}

std::string JwksCache::v1_discovery_url(const std::string& tenant) const {
  return settings_.authority + "/" + tenant + "/.well-known/openid-configuration";
}

std::vector<std::string> JwksCache::issuers(const std::string& tenant) const {
  std::lock_guard lock(mutex_);
  auto t = tenants_.find(tenant);
  return t == tenants_.end() ? std::vector<std::string>() : t->second.issuers;
}

PublicKey JwksCache::find(const std::string& tenant, const std::string& kid) const {
  std::lock_guard lock(mutex_);
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return nullptr;
  auto k = t->second.keys.find(kid);
  return k == t->second.keys.end() ? nullptr : k->second;
}

bool JwksCache::loaded(const std::string& tenant) const {
  std::lock_guard lock(mutex_);
  auto t = tenants_.find(tenant);
  return t != tenants_.end() && t->second.loaded;
}

bool JwksCache::stale(const std::string& tenant) const {
  std::lock_guard lock(mutex_);
  auto t = tenants_.find(tenant);
  return t == tenants_.end() || !t->second.loaded || now() - t->second.fetched_at > settings_.max_age;
}

std::vector<std::string> JwksCache::stale_tenants() const {
  std::vector<std::string> out;
  const auto at = now();
  std::lock_guard lock(mutex_);
  for (const auto& [name, t] : tenants_)
    if (t.loaded && at - t.fetched_at > settings_.max_age) out.push_back(name);
  return out;
}

bool JwksCache::refresh_due(const std::string& tenant) const {
  std::lock_guard lock(mutex_);
  auto t = tenants_.find(tenant);
  if (t == tenants_.end() || !t->second.attempted) return true;
  return now() - t->second.attempted_at >= settings_.min_refresh_interval;
}

Result<bool> JwksCache::refresh(const std::string& tenant) {
  std::lock_guard fetching(fetch_mutex_);
  {
    std::lock_guard lock(mutex_);
    auto& t = tenants_[tenant];
    if (t.attempted && now() - t.attempted_at < settings_.min_refresh_interval) {
      if (t.loaded) return false;
      return fail(t.last_error);
    }
    t.attempted = true;
    t.attempted_at = now();
  }
  auto record_failure = [&](std::string why) -> Result<bool> {
    std::lock_guard lock(mutex_);
    tenants_[tenant].last_error = why;
    return fail(std::move(why));
  };

  const std::string discovery = discovery_url(tenant);
  auto doc_text = fetch_(discovery);
  if (!doc_text) return record_failure("cannot read the tenant's OpenID configuration: " + doc_text.error());
  auto doc = nlohmann::json::parse(*doc_text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || string_member(doc, "jwks_uri").empty()) {
    return record_failure("OpenID configuration at " + discovery + " has no jwks_uri");
  }
  const std::string v2_issuer = substitute_tenant(string_member(doc, "issuer"), tenant);
  if (v2_issuer.empty()) return record_failure("OpenID configuration at " + discovery + " has no issuer");
  std::vector<std::string> issuers{v2_issuer};
  // The v1 document names the issuer of v1 tokens (sts.windows.net for the
  // public cloud, another host in sovereign clouds). Optional: an authority
  // without one issues v2 tokens only.
  if (auto v1_text = fetch_(v1_discovery_url(tenant))) {
    auto v1 = nlohmann::json::parse(*v1_text, nullptr, false);
    if (!v1.is_discarded() && v1.is_object()) {
      auto v1_issuer = substitute_tenant(string_member(v1, "issuer"), tenant);
      if (!v1_issuer.empty() && v1_issuer != v2_issuer) issuers.push_back(std::move(v1_issuer));
    }
  }
  const std::string jwks_uri = string_member(doc, "jwks_uri");
  auto jwks_text = fetch_(jwks_uri);
  if (!jwks_text) return record_failure("cannot read the tenant's signing keys: " + jwks_text.error());
  auto keys = parse_jwks(*jwks_text);
  if (!keys) return record_failure("signing keys at " + jwks_uri + ": " + keys.error());

  std::lock_guard lock(mutex_);
  auto& t = tenants_[tenant];
  t.keys = std::move(*keys);
  t.issuers = std::move(issuers);
  t.loaded = true;
  t.fetched_at = now();
  t.last_error.clear();
  return true;
}

}  // namespace clusterconnect::entra
