#pragma once
// Proof-of-possession tokens as Azure Arc uses them (Entra's PoP scheme,
// kubelogin --pop-enabled, verified by guard): the client holds an RSA key,
// asks Entra for an access token bound to it (`req_cnf` -> `cnf.kid`), and
// wraps that token in a Signed HTTP Request (SHR) per request:
//   header  {"typ":"pop","alg":"RS256","kid":"<thumbprint>"}
//   payload {"at":"<access token>","ts":<unix s>,"u":"<cluster resource ID>",
//            "cnf":{"jwk":{"kty":"RSA","e","n","alg":"RS256","kid"}},"nonce":"<hex>"}
// The client side (PopKey) and the pure checks of the server side are here;
// the authenticator validates the inner token and keeps the replay cache.

#include <openssl/evp.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/credential.hpp"
#include "clusterconnect/result.hpp"
#include "jwt.hpp"

namespace clusterconnect::entra {

// How old a Signed HTTP Request may be (guard's window), and how far ahead of
// the verifier's clock its `ts` may be.
inline constexpr std::chrono::seconds pop_max_age{15 * 60};
inline constexpr std::chrono::seconds pop_max_future{5 * 60};

// RFC 7638 SHA-256 thumbprint of an RSA public key, base64url: over
// {"e":"<e>","kty":"RSA","n":"<n>"} with the members as given (base64url).
std::string rsa_jwk_thumbprint(std::string_view n, std::string_view e);

// `req_cnf` of a PoP token request: base64url of {"kid":thumbprint,"xms_ksl":"sw"}.
std::string pop_req_cnf(const std::string& thumbprint);

// 128 random bits, hex.
std::string random_nonce();

// An RSA-2048 key made for this process and kept in memory only.
class PopKey final : public PopSigner {
 public:
  static Result<std::shared_ptr<PopKey>> generate();

  std::string thumbprint() const override { return thumbprint_; }
  Result<std::string> sign_request(const std::string& access_token, const std::string& target) noexcept override;

  // The SHR with a given time and nonce (tests).
  Result<std::string> sign_request_at(const std::string& access_token, const std::string& target, long long ts,
                                      const std::string& nonce) const;
  // The public key as a JWK: kty, e, n, alg RS256, kid = thumbprint.
  const nlohmann::json& jwk() const { return jwk_; }
  EVP_PKEY* get() const { return key_.get(); }

 private:
  explicit PopKey(std::shared_ptr<EVP_PKEY> key);
  std::shared_ptr<EVP_PKEY> key_;
  nlohmann::json jwk_;
  std::string thumbprint_;
};

// What check_signed_request found in a Signed HTTP Request whose own
// signature, key, time, target and form are good.
struct SignedRequest {
  std::string access_token;  // `at`, still to be validated in full
  std::string thumbprint;    // of `cnf.jwk`, computed here
  std::string nonce;
  long long ts = 0;
};

struct SignedRequestCheck {
  AuthOutcome outcome;
  SignedRequest request;
  bool ok() const noexcept { return outcome.ok(); }
};

// Whether a parsed JWS is a Signed HTTP Request at all (`typ` "pop").
bool is_signed_request(const Jws& jws);

// The outer token: `typ` pop, `alg` exactly RS256; `cnf.jwk` an RSA key of at
// least 2048 bits whose thumbprint equals `cnf.jwk.kid` and the header `kid`
// when they are present; the signature verifies with it; `ts` no older than
// pop_max_age and no more than pop_max_future ahead of `now`; `u` equals
// `resource_id` (case-insensitive); `at` and `nonce` present.
SignedRequestCheck check_signed_request(const Jws& jws, const std::string& resource_id,
                                        std::chrono::system_clock::time_point now);

// The inner access token is bound to the key that signed the request: its
// `cnf.kid` equals `thumbprint`. A token without `cnf` is a bearer token.
AuthOutcome check_pop_binding(const Jws& access_token, const std::string& thumbprint);

// Nonces of accepted Signed HTTP Requests, each kept until its `ts` is older
// than pop_max_age (after that the time check refuses the request anyway).
// At `capacity` entries after pruning, new requests are refused (fail
// closed) until old ones age out; the refusal says so.
class NonceCache {
 public:
  explicit NonceCache(std::size_t capacity) : capacity_(capacity) {}
  // Records the nonce, or refuses it (replayed, or the cache is full).
  AuthOutcome use(const std::string& nonce, long long ts, std::chrono::system_clock::time_point now);
  std::size_t size() const;

 private:
  std::size_t capacity_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, long long> seen_;  // nonce -> ts
  long long next_prune_ = 0;
};

// A connected cluster's ARM resource ID, lower case, when `id` is one:
// /subscriptions/S/resourceGroups/G/providers/Microsoft.Kubernetes/connectedClusters/N.
Result<std::string> normalize_cluster_resource_id(std::string_view id);

}  // namespace clusterconnect::entra
