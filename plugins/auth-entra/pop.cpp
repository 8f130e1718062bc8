#include "pop.hpp"

#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <vector>

#include "encoding.hpp"
#include "jwks.hpp"

namespace clusterconnect::entra {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

const nlohmann::json* member(const nlohmann::json& obj, const char* name) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(name);
  return it == obj.end() ? nullptr : &*it;
}

const std::string* string_member(const nlohmann::json& obj, const char* name) {
  const auto* v = member(obj, name);
  return v && v->is_string() ? &v->get_ref<const std::string&>() : nullptr;
}

Result<std::string> bn_param(EVP_PKEY* key, const char* name) {
  BIGNUM* b = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &b) != 1 || !b) return fail("cannot read the RSA key");
  std::string bytes(static_cast<std::size_t>(BN_num_bytes(b)), '\0');
  BN_bn2bin(b, reinterpret_cast<unsigned char*>(bytes.data()));
  BN_free(b);
  return base64url_encode(bytes);
}

}  // namespace

std::string rsa_jwk_thumbprint(std::string_view n, std::string_view e) {
  // RFC 7638 3.2: the required members in lexicographic order, no whitespace.
  const std::string canonical = "{\"e\":\"" + std::string(e) + "\",\"kty\":\"RSA\",\"n\":\"" + std::string(n) + "\"}";
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(canonical.data()), canonical.size(), md);
  return base64url_encode(std::string_view(reinterpret_cast<const char*>(md), sizeof md));
}

std::string pop_req_cnf(const std::string& thumbprint) {
  return base64url_encode(nlohmann::json{{"kid", thumbprint}, {"xms_ksl", "sw"}}.dump());
}

std::string random_nonce() {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) return {};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

Result<std::shared_ptr<PopKey>> PopKey::generate() {
  std::shared_ptr<EVP_PKEY> key(EVP_RSA_gen(2048), &EVP_PKEY_free);
  if (!key) return fail("cannot generate an RSA key for proof-of-possession tokens");
  auto made = std::shared_ptr<PopKey>(new PopKey(std::move(key)));
  if (made->thumbprint_.empty()) return fail("cannot read the generated RSA key");
  return made;
}

PopKey::PopKey(std::shared_ptr<EVP_PKEY> key) : key_(std::move(key)) {
  auto n = bn_param(key_.get(), OSSL_PKEY_PARAM_RSA_N);
  auto e = bn_param(key_.get(), OSSL_PKEY_PARAM_RSA_E);
  if (!n || !e) return;
  thumbprint_ = rsa_jwk_thumbprint(*n, *e);
  jwk_ = {{"kty", "RSA"}, {"e", *e}, {"n", *n}, {"alg", "RS256"}, {"kid", thumbprint_}};
}

Result<std::string> PopKey::sign_request_at(const std::string& access_token, const std::string& target, long long ts,
                                            const std::string& nonce) const {
  const nlohmann::json header = {{"typ", "pop"}, {"alg", "RS256"}, {"kid", thumbprint_}};
  const nlohmann::json payload = {
      {"at", access_token}, {"ts", ts}, {"u", target}, {"cnf", {{"jwk", jwk_}}}, {"nonce", nonce}};
  const std::string input = base64url_encode(header.dump()) + "." + base64url_encode(payload.dump());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  std::size_t len = 0;
  if (!md || EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key_.get()) != 1 ||
      EVP_DigestSign(md.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1)
    return fail("cannot sign the proof-of-possession request");
  std::string sig(len, '\0');
  if (EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1)
    return fail("cannot sign the proof-of-possession request");
  sig.resize(len);
  return input + "." + base64url_encode(sig);
}

Result<std::string> PopKey::sign_request(const std::string& access_token, const std::string& target) noexcept {
  try {
    const std::string nonce = random_nonce();
    if (nonce.empty()) return fail("the system random generator failed");
    const long long now =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    return sign_request_at(access_token, target, now, nonce);
  } catch (const std::exception& e) {
    return fail(std::string("cannot sign the proof-of-possession request: ") + e.what());
  }
}

bool is_signed_request(const Jws& jws) {
  const auto* typ = string_member(jws.header, "typ");
  return typ && iequals(*typ, "pop");
}

SignedRequestCheck check_signed_request(const Jws& jws, const std::string& resource_id,
                                        std::chrono::system_clock::time_point now) {
  SignedRequestCheck r;
  auto refuse = [&](AuthFailure f, std::string message) {
    r.outcome = reject(f, std::move(message));
    return r;
  };
  const auto* typ = string_member(jws.header, "typ");
  if (!typ || *typ != "pop")
    return refuse(AuthFailure::pop_required, "token header 'typ' is not \"pop\": not a proof-of-possession token");
  const auto* alg = string_member(jws.header, "alg");
  if (!alg) return refuse(AuthFailure::malformed, "proof-of-possession token header 'alg' is not a string");
  if (*alg != "RS256")
    return refuse(AuthFailure::disallowed_algorithm,
                  "proof-of-possession token signed with '" + printable(*alg, 16) + "'; only RS256 is accepted");

  const auto& p = jws.payload;
  const auto* cnf = member(p, "cnf");
  const auto* jwk = cnf ? member(*cnf, "jwk") : nullptr;
  if (!jwk || !jwk->is_object())
    return refuse(AuthFailure::malformed, "proof-of-possession token has no 'cnf.jwk' (the key it was signed with)");
  const auto* kty = string_member(*jwk, "kty");
  if (!kty || *kty != "RSA")
    return refuse(AuthFailure::disallowed_algorithm, "proof-of-possession key 'cnf.jwk' is not an RSA key");
  if (const auto* jalg = member(*jwk, "alg"); jalg && !(jalg->is_string() && jalg->get<std::string>() == "RS256"))
    return refuse(AuthFailure::disallowed_algorithm, "proof-of-possession key 'cnf.jwk' is not for RS256");
  const auto* n = string_member(*jwk, "n");
  const auto* e = string_member(*jwk, "e");
  if (!n || !e) return refuse(AuthFailure::malformed, "proof-of-possession key 'cnf.jwk' has no 'n' or 'e'");
  // One encoding per key (RFC 7518 6.3.1: no leading zero octets), so one thumbprint per key.
  auto n_bytes = base64url_decode(*n);
  auto e_bytes = base64url_decode(*e);
  if (!n_bytes || !e_bytes || n_bytes->empty() || e_bytes->empty() || (*n_bytes)[0] == '\0' || (*e_bytes)[0] == '\0')
    return refuse(AuthFailure::malformed, "proof-of-possession key 'cnf.jwk' has an invalid 'n' or 'e'");
  auto key = rsa_key_from_jwk(*n, *e);
  if (!key)
    return refuse(AuthFailure::disallowed_algorithm,
                  "proof-of-possession key 'cnf.jwk' is not accepted: " + key.error());
  const std::string thumbprint = rsa_jwk_thumbprint(*n, *e);
  if (const auto* kid = member(*jwk, "kid"); kid && !(kid->is_string() && kid->get<std::string>() == thumbprint))
    return refuse(AuthFailure::bad_signature, "proof-of-possession key 'cnf.jwk.kid' is not the key's thumbprint");
  if (const auto* kid = member(jws.header, "kid"); kid && !(kid->is_string() && kid->get<std::string>() == thumbprint))
    return refuse(AuthFailure::bad_signature,
                  "proof-of-possession token header 'kid' is not the thumbprint of its 'cnf.jwk'");
  if (!verify_rs256(key->get(), jws.signing_input, jws.signature))
    return refuse(AuthFailure::bad_signature, "proof-of-possession token signature does not verify with its 'cnf.jwk'");

  const auto* ts = member(p, "ts");
  if (!ts || !ts->is_number_integer())
    return refuse(AuthFailure::malformed, "proof-of-possession token has no integer 'ts'");
  const long long ts_s =
      ts->is_number_unsigned()
          ? static_cast<long long>(std::min<unsigned long long>(ts->get<unsigned long long>(), 1ULL << 62))
          : ts->get<long long>();
  const long long now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  if (now_s - ts_s > pop_max_age.count())
    return refuse(AuthFailure::expired, "proof-of-possession token was signed " + std::to_string(now_s - ts_s) +
                                            " s ago, more than the " + std::to_string(pop_max_age.count()) +
                                            " s accepted");
  if (ts_s - now_s > pop_max_future.count())
    return refuse(AuthFailure::not_yet_valid, "proof-of-possession token is signed " + std::to_string(ts_s - now_s) +
                                                  " s in the future (check the clocks)");
  const auto* u = string_member(p, "u");
  if (!u) return refuse(AuthFailure::malformed, "proof-of-possession token has no 'u' (the cluster it is for)");
  if (!iequals(*u, resource_id))
    return refuse(AuthFailure::wrong_cluster, "proof-of-possession token is for '" + printable(*u, 200) +
                                                  "', not this cluster (" + resource_id + ")");
  const auto* nonce = string_member(p, "nonce");
  if (!nonce || nonce->empty() || nonce->size() > 128)
    return refuse(AuthFailure::malformed, "proof-of-possession token has no 'nonce' of at most 128 characters");
  const auto* at = string_member(p, "at");
  if (!at || at->empty()) return refuse(AuthFailure::malformed, "proof-of-possession token has no access token ('at')");

  r.request.access_token = *at;
  r.request.thumbprint = thumbprint;
  r.request.nonce = *nonce;
  r.request.ts = ts_s;
  return r;
}

AuthOutcome check_pop_binding(const Jws& access_token, const std::string& thumbprint) {
  const auto* cnf = member(access_token.payload, "cnf");
  if (!cnf || !cnf->is_object())
    return reject(AuthFailure::pop_required,
                  "the access token in the proof-of-possession token has no 'cnf' claim: it is a bearer token, not "
                  "bound to a key");
  const auto* kid = string_member(*cnf, "kid");
  if (!kid) return reject(AuthFailure::malformed, "the access token's 'cnf' claim names no key ('kid')");
  if (*kid != thumbprint)
    return reject(AuthFailure::bad_signature,
                  "the access token is bound to another key than the one that signed the proof-of-possession token");
  return {};
}

AuthOutcome NonceCache::use(const std::string& nonce, long long ts, std::chrono::system_clock::time_point now) {
  const long long now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  const long long window = pop_max_age.count();
  std::lock_guard lock(mutex_);
  auto prune = [&] {
    for (auto it = seen_.begin(); it != seen_.end();)
      it = now_s - it->second > window ? seen_.erase(it) : std::next(it);
    next_prune_ = now_s + 10;
  };
  if (seen_.size() >= capacity_ || now_s >= next_prune_) prune();
  if (seen_.count(nonce))
    return reject(AuthFailure::replayed,
                  "proof-of-possession token was used before (its nonce was seen within the last " +
                      std::to_string(window / 60) + " minutes): each request must be signed anew");
  if (seen_.size() >= capacity_)
    return reject(AuthFailure::replayed, "too many proof-of-possession requests within " + std::to_string(window / 60) +
                                             " minutes to remember their nonces (" + std::to_string(capacity_) +
                                             "); refused so none can be replayed; try again shortly");
  seen_.emplace(nonce, ts);
  return {};
}

std::size_t NonceCache::size() const {
  std::lock_guard lock(mutex_);
  return seen_.size();
}

Result<std::string> normalize_cluster_resource_id(std::string_view id) {
  static const char* const fixed[] = {"",
                                      "subscriptions",
                                      nullptr,
                                      "resourceGroups",
                                      nullptr,
                                      "providers",
                                      "Microsoft.Kubernetes",
                                      "connectedClusters",
                                      nullptr};
  std::vector<std::string_view> parts;
  std::string_view rest = id;
  for (;;) {
    auto slash = rest.find('/');
    parts.push_back(rest.substr(0, slash));
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  bool ok = parts.size() == std::size(fixed);
  for (std::size_t i = 0; ok && i < parts.size(); ++i) {
    if (fixed[i]) {
      ok = iequals(parts[i], fixed[i]);
    } else {
      ok = !parts[i].empty() && parts[i].size() <= 256;
      for (unsigned char c : parts[i])
        if (c <= 0x20 || c == 0x7f || c == '?' || c == '#') ok = false;
    }
  }
  if (!ok)
    return fail(
        "'" + printable(id, 200) +
        "' is not a connected cluster's resource ID "
        "(/subscriptions/SUBSCRIPTION/resourceGroups/GROUP/providers/Microsoft.Kubernetes/connectedClusters/NAME)");
  return lower(id);
}

}  // namespace clusterconnect::entra
