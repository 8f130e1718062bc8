#include "jwks.hpp"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/param_build.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "encoding.hpp"

namespace clusterconnect::auth {
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

// A public key of `type` ("RSA", "EC") from the parameters in `bld`; null on failure.
PublicKey public_key_from(OSSL_PARAM_BLD* bld, const char* type) {
  std::unique_ptr<OSSL_PARAM, decltype(&OSSL_PARAM_free)> params(OSSL_PARAM_BLD_to_param(bld), &OSSL_PARAM_free);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr), &EVP_PKEY_CTX_free);
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0 || !pkey)
    return nullptr;
  return PublicKey(pkey, &EVP_PKEY_free);
}

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
  auto key = public_key_from(bld.get(), "RSA");
  if (!key) return fail("could not build an RSA key");
  return key;
}

Result<PublicKey> p256_key_from_jwk(std::string_view x64, std::string_view y64) {
  auto x = base64url_decode(x64);
  auto y = base64url_decode(y64);
  // RFC 7518 6.2.1.2: the coordinates are exactly the field size.
  if (!x || !y || x->size() != 32 || y->size() != 32) return fail("EC key has an invalid 'x' or 'y' for P-256");
  const std::string point = "\x04" + *x + *y;  // uncompressed SEC1 point
  std::unique_ptr<OSSL_PARAM_BLD, decltype(&OSSL_PARAM_BLD_free)> bld(OSSL_PARAM_BLD_new(), &OSSL_PARAM_BLD_free);
  if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()))
    return fail("could not build an EC key");
  auto key = public_key_from(bld.get(), "EC");
  if (!key) return fail("EC key is not a point on P-256");
  // fromdata does not check that the point is on the curve.
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr), &EVP_PKEY_CTX_free);
  if (!check || EVP_PKEY_public_check(check.get()) != 1) return fail("EC key is not a point on P-256");
  return key;
}

namespace {

bool digest_verify(EVP_PKEY* key, std::string_view signing_input, std::string_view signature) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!md || EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, key) != 1) return false;
  return EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                          reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size()) == 1;
}

bool is_p256(EVP_PKEY* key) {
  char group[32] = {0};
  std::size_t len = 0;
  return EVP_PKEY_get_base_id(key) == EVP_PKEY_EC &&
         EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len) == 1 &&
         std::string_view(group, len) == "prime256v1";
}

}  // namespace

bool verify_rs256(EVP_PKEY* key, std::string_view signing_input, std::string_view signature) {
  if (!key || EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) return false;
  if (signature.size() != static_cast<std::size_t>(EVP_PKEY_get_size(key))) return false;
  return digest_verify(key, signing_input, signature);
}

bool verify_es256(EVP_PKEY* key, std::string_view signing_input, std::string_view signature) {
  if (!key || !is_p256(key) || signature.size() != 64) return false;
  // OpenSSL verifies DER; JWS carries R || S (RFC 7518 3.4).
  std::unique_ptr<ECDSA_SIG, decltype(&ECDSA_SIG_free)> sig(ECDSA_SIG_new(), &ECDSA_SIG_free);
  BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(signature.data()), 32, nullptr);
  BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(signature.data()) + 32, 32, nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return false;
  }
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(sig.get(), &der);
  if (der_len <= 0) return false;
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> owned(der, [](unsigned char* p) { OPENSSL_free(p); });
  return digest_verify(key, signing_input, std::string_view(reinterpret_cast<const char*>(der), static_cast<std::size_t>(der_len)));
}

bool verify_signature(std::string_view alg, EVP_PKEY* key, std::string_view signing_input, std::string_view signature) {
  if (alg == "RS256") return verify_rs256(key, signing_input, signature);
  if (alg == "ES256") return verify_es256(key, signing_input, signature);
  return false;
}

Result<KeyMap> parse_jwks(std::string_view document, const std::vector<std::string>& algorithms) {
  auto accepts = [&](const char* alg) { return std::find(algorithms.begin(), algorithms.end(), alg) != algorithms.end(); };
  auto doc = nlohmann::json::parse(document, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("keys") || !doc["keys"].is_array()) {
    return fail("key set is not a JWKS document (no 'keys' array)");
  }
  KeyMap keys;
  for (const auto& k : doc["keys"]) {
    if (keys.size() >= max_keys) break;
    if (!k.is_object()) continue;
    auto str = [&](const char* name) { return k.contains(name) && k[name].is_string() ? k[name].get<std::string>() : std::string(); };
    const std::string kty = str("kty");
    // The algorithm a key serves follows from its type: RSA keys RS256, P-256 keys ES256.
    const char* key_alg = kty == "RSA" ? "RS256" : kty == "EC" && str("crv") == "P-256" ? "ES256" : nullptr;
    if (!key_alg || !accepts(key_alg)) continue;
    const std::string use = str("use");
    if (!use.empty() && use != "sig") continue;
    const std::string alg = str("alg");
    if (!alg.empty() && alg != key_alg) continue;
    const std::string kid = str("kid");
    if (kid.empty()) continue;
    auto key = kty == "RSA" ? rsa_key_from_jwk(str("n"), str("e")) : p256_key_from_jwk(str("x"), str("y"));
    if (!key) continue;  // one bad entry must not take the provider's other keys down
    keys.emplace(kid, std::move(*key));
  }
  if (keys.empty()) return fail(accepts("ES256") ? "key set holds no usable signing key" : "key set holds no usable RSA signing key");
  return keys;
}

Result<void> read_key_refresh_options(const nlohmann::json& o, std::chrono::seconds& min_interval, std::chrono::seconds& interval) {
  const int least = o.value("key_refresh_min_interval_seconds", 10);
  if (least < 1 || least > 3600) return fail("key_refresh_min_interval_seconds must be between 1 and 3600");
  const int every = o.value("key_refresh_interval_seconds", 3600);
  if (every < 60 || every > 86400) return fail("key_refresh_interval_seconds must be between 60 and 86400");
  min_interval = std::chrono::seconds(least);
  interval = std::chrono::seconds(every);
  return {};
}

JwksCache::JwksCache(Settings settings, Fetch fetch) : settings_(std::move(settings)), fetch_(std::move(fetch)) {
  if (!settings_.now) settings_.now = [] { return std::chrono::steady_clock::now(); };
}

std::string JwksCache::discovery_url(const std::string& source) const {
  if (settings_.layout == Layout::issuer) {
    std::string base = source;
    while (!base.empty() && base.back() == '/') base.pop_back();
    return base + "/.well-known/openid-configuration";
  }
  return settings_.authority + "/" + source + "/v2.0/.well-known/openid-configuration";
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
  // OpenID Connect Discovery 1.0, 4.3: the document must be the issuer's own.
  if (settings_.layout == Layout::issuer && v2_issuer != tenant)
    return record_failure("OpenID configuration at " + discovery + " names issuer '" + v2_issuer + "', not '" + tenant + "'");
  // The v1 document names the issuer of v1 tokens (sts.windows.net for the
  // public cloud, another host in sovereign clouds). Optional: an authority
  // without one issues v2 tokens only.
  if (settings_.layout == Layout::tenant_paths) {
    if (auto v1_text = fetch_(v1_discovery_url(tenant))) {
      auto v1 = nlohmann::json::parse(*v1_text, nullptr, false);
      if (!v1.is_discarded() && v1.is_object()) {
        auto v1_issuer = substitute_tenant(string_member(v1, "issuer"), tenant);
        if (!v1_issuer.empty() && v1_issuer != v2_issuer) issuers.push_back(std::move(v1_issuer));
      }
    }
  }

  const std::string jwks_uri = string_member(doc, "jwks_uri");
  auto jwks_text = fetch_(jwks_uri);
  if (!jwks_text) return record_failure("cannot read the tenant's signing keys: " + jwks_text.error());
  auto keys = parse_jwks(*jwks_text, settings_.algorithms);
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

}  // namespace clusterconnect::auth
