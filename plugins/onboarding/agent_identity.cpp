#include "agent_identity.hpp"

#include <memory>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

namespace clusterconnect::onboarding {
namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
};
template <class T>
using Owned = std::unique_ptr<T, Free>;

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

Result<std::string> spki_base64(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(key, &der);
  if (n <= 0) return fail("cannot encode the agent's public key");
  std::string out(4 * ((static_cast<std::size_t>(n) + 2) / 3), '\0');
  int m = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), der, n);
  OPENSSL_free(der);
  out.resize(static_cast<std::size_t>(m));
  return out;
}

}  // namespace

Result<AgentIdentity> create_agent_identity(const std::string& common_name, int days) {
  Owned<EVP_PKEY> key(EVP_EC_gen("P-256"));
  if (!key) return fail("cannot generate the agent's EC P-256 key");
  Owned<X509> cert(X509_new());
  if (!cert) return fail("cannot create the agent's certificate");
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof serial) != 1) return fail("no randomness for the certificate's serial number");
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 86400);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                             -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), key.get());
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) return fail("cannot sign the agent's certificate");
  Owned<BIO> cert_bio(BIO_new(BIO_s_mem())), key_bio(BIO_new(BIO_s_mem()));
  if (!cert_bio || !key_bio || PEM_write_bio_X509(cert_bio.get(), cert.get()) != 1 ||
      PEM_write_bio_PrivateKey(key_bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return fail("cannot encode the agent's certificate and key");
  auto spki = spki_base64(key.get());
  if (!spki) return fail(spki.error());
  return AgentIdentity{bio_text(cert_bio.get()), bio_text(key_bio.get()), spki.value()};
}

Result<AgentIdentity> load_agent_identity(const std::string& cert_pem, const std::string& key_pem) {
  Owned<BIO> cb(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
  Owned<BIO> kb(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  Owned<X509> cert(cb ? PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr) : nullptr);
  Owned<EVP_PKEY> key(kb ? PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!cert || !key) return fail("the agent's identity is not a PEM certificate and private key");
  if (X509_check_private_key(cert.get(), key.get()) != 1)
    return fail("the agent's private key does not match its certificate");
  auto spki = spki_base64(key.get());
  if (!spki) return fail(spki.error());
  return AgentIdentity{cert_pem, key_pem, spki.value()};
}

}  // namespace clusterconnect::onboarding
