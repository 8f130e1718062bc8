#include "client_assertion.hpp"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "encoding.hpp"

namespace clusterconnect::entra {

using auth::base64url_encode;
using auth::random_uuid;
namespace {

constexpr std::size_t max_pem_size = 256 * 1024;

using BioPtr = std::unique_ptr<BIO, decltype(&BIO_free)>;
BioPtr memory_bio(const std::string& text) { return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())), &BIO_free); }

}  // namespace

Result<ClientCertificate> load_client_certificate(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail("cannot read the client certificate file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string pem = ss.str();
  if (pem.size() > max_pem_size) return fail("client certificate file " + path + " is larger than expected for a PEM certificate");

  auto cert_bio = memory_bio(pem);
  std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (!cert) return fail("client certificate file " + path + " holds no PEM certificate");
  auto key_bio = memory_bio(pem);
  // No passphrase callback: an encrypted key fails here instead of prompting.
  static char empty[] = "";
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, empty);
  if (!key) return fail("client certificate file " + path + " holds no unencrypted PEM private key");
  ClientCertificate out;
  out.private_key = std::shared_ptr<EVP_PKEY>(key, &EVP_PKEY_free);
  if (X509_check_private_key(cert.get(), key) != 1) return fail("the private key in " + path + " does not belong to its certificate");
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) return fail("the key in " + path + " is not an RSA key (Entra ID needs RS256)");

  unsigned char* der = nullptr;
  int der_len = i2d_X509(cert.get(), &der);
  if (der_len <= 0) return fail("cannot encode the certificate in " + path);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned digest_len = 0;
  const bool hashed = EVP_Digest(der, static_cast<size_t>(der_len), digest, &digest_len, EVP_sha1(), nullptr) == 1;
  OPENSSL_free(der);
  if (!hashed) return fail("cannot compute the thumbprint of the certificate in " + path);
  out.x5t = base64url_encode(std::string(reinterpret_cast<char*>(digest), digest_len));
  return out;
}

Result<std::string> sign_rs256(EVP_PKEY* key, const std::string& input) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  std::size_t len = 0;
  if (!md || EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key) != 1 ||
      EVP_DigestSign(md.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1)
    return fail("cannot sign the client assertion");
  std::string sig(len, '\0');
  if (EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, reinterpret_cast<const unsigned char*>(input.data()),
                     input.size()) != 1)
    return fail("cannot sign the client assertion");
  sig.resize(len);
  return sig;
}

Result<std::string> make_client_assertion(const ClientCertificate& cert, const std::string& client_id, const std::string& token_endpoint,
                                          std::chrono::system_clock::time_point now) {
  const long long t = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  const nlohmann::json header = {{"alg", "RS256"}, {"typ", "JWT"}, {"x5t", cert.x5t}};
  // Ten minutes, like MSAL; a fresh jti each time since the provider may
  // refuse a replayed one.
  const nlohmann::json payload = {{"aud", token_endpoint}, {"iss", client_id}, {"sub", client_id}, {"jti", random_uuid()},
                                  {"nbf", t},              {"iat", t},         {"exp", t + 600}};
  const std::string input = base64url_encode(header.dump()) + "." + base64url_encode(payload.dump());
  auto sig = sign_rs256(cert.private_key.get(), input);
  if (!sig) return fail(sig.error());
  return input + "." + base64url_encode(*sig);
}

}  // namespace clusterconnect::entra
