#pragma once
// Keys and signed tokens made in the test, for the JWT attack matrices of
// the identity backends.

#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <memory>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "encoding.hpp"  // auth_common

namespace clusterconnect::auth::test {

// A SHA-256 signature over `input` as OpenSSL writes it (DER for ECDSA).
inline std::string sha256_sign(EVP_PKEY* key, const std::string& input) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  std::size_t len = 0;
  EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key);
  EVP_DigestSign(md.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size());
  std::string sig(len, '\0');
  EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, reinterpret_cast<const unsigned char*>(input.data()),
                 input.size());
  sig.resize(len);
  return sig;
}

class TestKey {
 public:
  explicit TestKey(std::string kid, unsigned bits = 2048) : kid_(std::move(kid)), key_(EVP_RSA_gen(bits), &EVP_PKEY_free) {
    if (!key_) throw std::runtime_error("EVP_RSA_gen failed");
  }

  const std::string& kid() const { return kid_; }
  EVP_PKEY* get() const { return key_.get(); }

  nlohmann::json jwk() const {
    return {{"kty", "RSA"}, {"use", "sig"}, {"kid", kid_}, {"n", bn(OSSL_PKEY_PARAM_RSA_N)}, {"e", bn(OSSL_PKEY_PARAM_RSA_E)}};
  }

  std::string public_pem() const {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
    PEM_write_bio_PUBKEY(bio.get(), key_.get());
    char* data = nullptr;
    long len = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(len));
  }

  std::string sign(const std::string& input) const { return sha256_sign(key_.get(), input); }

 private:
  std::string bn(const char* name) const {
    BIGNUM* b = nullptr;
    EVP_PKEY_get_bn_param(key_.get(), name, &b);
    std::string bytes(static_cast<std::size_t>(BN_num_bytes(b)), '\0');
    BN_bn2bin(b, reinterpret_cast<unsigned char*>(bytes.data()));
    BN_free(b);
    return base64url_encode(bytes);
  }

  std::string kid_;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key_;
};

// A P-256 key; signatures as JWS writes them (R || S, 64 bytes).
class TestEcKey {
 public:
  explicit TestEcKey(std::string kid) : kid_(std::move(kid)), key_(EVP_EC_gen("P-256"), &EVP_PKEY_free) {
    if (!key_) throw std::runtime_error("EVP_EC_gen failed");
  }

  const std::string& kid() const { return kid_; }

  nlohmann::json jwk() const {
    unsigned char point[65];
    std::size_t len = 0;
    EVP_PKEY_get_octet_string_param(key_.get(), OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point, &len);
    if (len != 65) throw std::runtime_error("unexpected P-256 point size");
    return {{"kty", "EC"},
            {"crv", "P-256"},
            {"use", "sig"},
            {"kid", kid_},
            {"x", base64url_encode(std::string(reinterpret_cast<char*>(point) + 1, 32))},
            {"y", base64url_encode(std::string(reinterpret_cast<char*>(point) + 33, 32))}};
  }

  std::string sign(const std::string& input) const {
    const std::string der = sha256_sign(key_.get(), input);
    const auto* p = reinterpret_cast<const unsigned char*>(der.data());
    std::unique_ptr<ECDSA_SIG, decltype(&ECDSA_SIG_free)> sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())), &ECDSA_SIG_free);
    std::string raw(64, '\0');
    BN_bn2binpad(ECDSA_SIG_get0_r(sig.get()), reinterpret_cast<unsigned char*>(raw.data()), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig.get()), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
    return raw;
  }

 private:
  std::string kid_;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key_;
};

inline std::string encode_part(const nlohmann::json& j) { return base64url_encode(j.dump()); }

inline std::string rs256_token(const TestKey& key, const nlohmann::json& payload, nlohmann::json header = nullptr) {
  if (header.is_null()) header = {{"alg", "RS256"}, {"typ", "JWT"}, {"kid", key.kid()}};
  const std::string input = encode_part(header) + "." + encode_part(payload);
  return input + "." + base64url_encode(key.sign(input));
}

inline std::string es256_token(const TestEcKey& key, const nlohmann::json& payload, nlohmann::json header = nullptr) {
  if (header.is_null()) header = {{"alg", "ES256"}, {"typ", "JWT"}, {"kid", key.kid()}};
  const std::string input = encode_part(header) + "." + encode_part(payload);
  return input + "." + base64url_encode(key.sign(input));
}

inline std::string hs256_token(const std::string& secret, const nlohmann::json& header, const nlohmann::json& payload) {
  const std::string input = encode_part(header) + "." + encode_part(payload);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac,
       &len);
  return input + "." + base64url_encode(std::string(reinterpret_cast<char*>(mac), len));
}

}  // namespace clusterconnect::auth::test
