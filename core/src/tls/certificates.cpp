#include "clusterconnect/certificates.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>

namespace clusterconnect::tls {
namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(ASN1_INTEGER* p) const { ASN1_INTEGER_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
};
template <class T>
using Ptr = std::unique_ptr<T, Free>;

std::string last_openssl_error() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

Ptr<EVP_PKEY> new_p256_key() { return Ptr<EVP_PKEY>(EVP_EC_gen("P-256")); }

std::string bio_string(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

Result<std::string> key_pem(EVP_PKEY* key) {
  Ptr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return fail("cannot encode private key: " + last_openssl_error());
  return bio_string(bio.get());
}

Result<std::string> cert_pem(X509* cert) {
  Ptr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1)
    return fail("cannot encode certificate: " + last_openssl_error());
  return bio_string(bio.get());
}

Ptr<X509> parse_cert(const std::string& pem) {
  Ptr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return Ptr<X509>(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

Ptr<EVP_PKEY> parse_key(const std::string& pem) {
  Ptr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return Ptr<EVP_PKEY>(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

// 128-bit positive random serial (RFC 5280: positive, at most 20 octets).
bool set_random_serial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) return false;
  bytes[0] &= 0x7f;
  bytes[0] |= 0x01;  // never zero, never a leading zero octet
  Ptr<BIGNUM> bn(BN_bin2bn(bytes, sizeof bytes, nullptr));
  if (!bn) return false;
  return BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) != nullptr;
}

bool add_ext(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  Ptr<X509_EXTENSION> ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  return ext && X509_add_ext(cert, ext.get(), -1) == 1;
}

// A certificate skeleton: v3, random serial, validity from an hour ago (clock
// skew between this machine and whoever checks) to `days` from now.
Result<Ptr<X509>> new_cert(EVP_PKEY* key, const std::string& common_name, int days) {
  if (days <= 0 || days > 36500) return fail("certificate lifetime must be between 1 and 36500 days");
  if (common_name.empty() || common_name.size() > 64) return fail("certificate common name must be 1 to 64 characters");
  Ptr<X509> cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1 || !set_random_serial(cert.get()) ||
      !X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert.get()), days, 0, nullptr) || X509_set_pubkey(cert.get(), key) != 1)
    return fail("cannot build certificate: " + last_openssl_error());
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("clusterconnect"), -1,
                                 -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0) != 1)
    return fail("cannot set certificate subject: " + last_openssl_error());
  return cert;
}

bool is_ip_literal(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

bool is_dns_name(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
              c == '*';
    if (!ok) return false;
  }
  return true;
}

// The only names the local CA may vouch for: RFC 5280 name constraints that
// OpenSSL and Go's crypto/x509 both enforce (IP ranges as address and mask).
constexpr const char* loopback_constraints =
    "critical,permitted;DNS:localhost,permitted;IP:127.0.0.0/255.0.0.0,"
    "permitted;IP:::1/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";

std::time_t asn1_seconds(const ASN1_TIME* t) {
  struct tm tm {};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return timegm(&tm);
}

bool has_loopback_constraints(X509* cert) {
  int at = X509_get_ext_by_NID(cert, NID_name_constraints, -1);
  if (at < 0) return false;
  X509_EXTENSION* ext = X509_get_ext(cert, at);
  if (!ext || X509_EXTENSION_get_critical(ext) != 1) return false;
  // Exactly the constraints this version writes.
  Ptr<X509_EXTENSION> want(X509V3_EXT_conf_nid(nullptr, nullptr, NID_name_constraints, loopback_constraints));
  if (!want) {
    ERR_clear_error();
    return false;
  }
  return ASN1_STRING_cmp(X509_EXTENSION_get_data(ext), X509_EXTENSION_get_data(want.get())) == 0;
}

Result<PemPair> make_ca(std::string common_name, int days, bool loopback_only) {
  Ptr<EVP_PKEY> key = new_p256_key();
  if (!key) return fail("cannot generate CA key: " + last_openssl_error());
  auto cert = new_cert(key.get(), common_name, days);
  if (!cert) return fail(cert.error());
  X509* c = cert->get();
  if (X509_set_issuer_name(c, X509_get_subject_name(c)) != 1) return fail("cannot set CA issuer: " + last_openssl_error());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, c, c, nullptr, nullptr, 0);
  if (!add_ext(c, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
      !add_ext(c, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature") ||
      !add_ext(c, &ctx, NID_subject_key_identifier, "hash") ||
      !add_ext(c, &ctx, NID_authority_key_identifier, "keyid:always") ||
      (loopback_only && !add_ext(c, &ctx, NID_name_constraints, loopback_constraints)))
    return fail("cannot add CA extensions: " + last_openssl_error());
  if (X509_sign(c, key.get(), EVP_sha256()) <= 0) return fail("cannot sign CA certificate: " + last_openssl_error());
  auto cpem = cert_pem(c);
  if (!cpem) return fail(cpem.error());
  auto kpem = key_pem(key.get());
  if (!kpem) return fail(kpem.error());
  return PemPair{std::move(*cpem), std::move(*kpem)};
}
}  // namespace

Result<PemPair> create_ca(std::string common_name, int days) { return make_ca(std::move(common_name), days, false); }

Result<PemPair> create_loopback_ca(std::string common_name, int days) {
  return make_ca(std::move(common_name), days, true);
}

Result<PemPair> issue_server_cert(const PemPair& ca, std::vector<std::string> dns_names,
                                  std::vector<std::string> ip_addresses, int days) {
  if (dns_names.empty() && ip_addresses.empty()) return fail("a server certificate needs a DNS name or an IP address");
  if (dns_names.size() + ip_addresses.size() > 100) return fail("too many names for one certificate (at most 100)");
  Ptr<X509> ca_cert = parse_cert(ca.cert);
  if (!ca_cert) return fail("cannot parse CA certificate: " + last_openssl_error());
  Ptr<EVP_PKEY> ca_key = parse_key(ca.key);
  if (!ca_key) return fail("cannot parse CA key: " + last_openssl_error());
  if (X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
    ERR_clear_error();
    return fail("the CA key does not match the CA certificate");
  }
  std::string san;
  for (const auto& d : dns_names) {
    if (!is_dns_name(d)) return fail("not a DNS name: " + d);
    san += (san.empty() ? "" : ",") + std::string("DNS:") + d;
  }
  for (const auto& ip : ip_addresses) {
    if (!is_ip_literal(ip)) return fail("not an IP address: " + ip);
    san += (san.empty() ? "" : ",") + std::string("IP:") + ip;
  }
  Ptr<EVP_PKEY> key = new_p256_key();
  if (!key) return fail("cannot generate server key: " + last_openssl_error());
  // Without a DNS name the subject is not an address: OpenSSL checks a
  // host-like common name against a CA's DNS name constraints.
  auto cert = new_cert(key.get(), dns_names.empty() ? "clusterconnect server" : dns_names.front(), days);
  if (!cert) return fail(cert.error());
  X509* c = cert->get();
  if (X509_set_issuer_name(c, X509_get_subject_name(ca_cert.get())) != 1)
    return fail("cannot set issuer: " + last_openssl_error());
  // Never outlive the CA: a chain is only as valid as its shortest link.
  if (ASN1_TIME_compare(X509_get0_notAfter(c), X509_get0_notAfter(ca_cert.get())) > 0 &&
      X509_set1_notAfter(c, X509_get0_notAfter(ca_cert.get())) != 1)
    return fail("cannot set the certificate's expiry: " + last_openssl_error());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca_cert.get(), c, nullptr, nullptr, 0);
  if (!add_ext(c, &ctx, NID_basic_constraints, "critical,CA:FALSE") ||
      !add_ext(c, &ctx, NID_key_usage, "critical,digitalSignature") ||
      !add_ext(c, &ctx, NID_ext_key_usage, "serverAuth") || !add_ext(c, &ctx, NID_subject_alt_name, san) ||
      !add_ext(c, &ctx, NID_subject_key_identifier, "hash") ||
      !add_ext(c, &ctx, NID_authority_key_identifier, "keyid:always"))
    return fail("cannot add server certificate extensions: " + last_openssl_error());
  if (X509_sign(c, ca_key.get(), EVP_sha256()) <= 0)
    return fail("cannot sign server certificate: " + last_openssl_error());
  auto cpem = cert_pem(c);
  if (!cpem) return fail(cpem.error());
  auto kpem = key_pem(key.get());
  if (!kpem) return fail(kpem.error());
  return PemPair{std::move(*cpem), std::move(*kpem)};
}

std::string public_key_pin_of(const void* x509) {
  auto* cert = static_cast<X509*>(const_cast<void*>(x509));
  if (!cert) return {};
  unsigned char* der = nullptr;
  const int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
  if (n <= 0) return {};
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  const bool ok = EVP_Digest(der, static_cast<std::size_t>(n), md, &len, EVP_sha256(), nullptr) == 1;
  OPENSSL_free(der);
  if (!ok) return {};
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

Result<std::string> public_key_pin(const std::string& pem) {
  Ptr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return fail("out of memory");
  Ptr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return fail("not a PEM certificate: " + last_openssl_error());
  auto pin = public_key_pin_of(cert.get());
  if (pin.empty()) return fail("cannot hash the certificate's public key");
  return pin;
}

bool is_public_key_pin(std::string_view s) noexcept {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

Result<void> write_private_file(const std::filesystem::path& path, const std::string& content) {
  namespace fs = std::filesystem;
  const fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code fec;
  if (!fs::exists(parent, fec)) {
    // Create missing ancestors with 0700 too: they hold keys.
    fs::path built;
    for (const auto& part : parent) {
      built /= part;
      if (fs::exists(built, fec)) continue;
      if (::mkdir(built.c_str(), 0700) != 0 && errno != EEXIST)
        return fail("cannot create directory " + built.string() + ": " + std::strerror(errno));
    }
  }
  std::string tmpl = (parent / ("." + path.filename().string() + ".tmp-XXXXXX")).string();
  int fd = ::mkstemp(tmpl.data());  // mode 0600
  if (fd < 0) return fail("cannot create a file in " + parent.string() + ": " + std::strerror(errno));
  auto cleanup = [&](const std::string& what) {
    int err = errno;
    ::close(fd);
    ::unlink(tmpl.c_str());
    return fail(what + " " + path.string() + ": " + std::strerror(err));
  };
  if (::fchmod(fd, 0600) != 0) return cleanup("cannot set mode of");
  std::size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return cleanup("cannot write");
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) return cleanup("cannot sync");
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmpl.c_str());
    return fail("cannot write " + path.string() + ": " + std::strerror(err));
  }
  if (::rename(tmpl.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmpl.c_str());
    return fail("cannot replace " + path.string() + ": " + std::strerror(err));
  }
  // Make the rename itself durable.
  if (int dfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

Result<std::string> read_small_file(const std::filesystem::path& path, std::size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail("cannot read " + path.string() + ": " + std::strerror(errno));
  std::string out;
  char buf[8192];
  while (in) {
    in.read(buf, sizeof buf);
    out.append(buf, static_cast<std::size_t>(in.gcount()));
    if (out.size() > max_bytes)
      return fail(path.string() + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  if (in.bad()) return fail("cannot read " + path.string());
  return out;
}

Result<PemPair> load_or_create_ca(const std::filesystem::path& dir, std::string common_name, std::time_t now) {
  namespace fs = std::filesystem;
  const fs::path cert_path = dir / "ca.crt";
  const fs::path key_path = dir / "ca.key";
  std::error_code ec;
  const bool have_cert = fs::exists(cert_path, ec);
  const bool have_key = fs::exists(key_path, ec);
  if (have_cert && have_key) {
    struct stat st {};
    if (::stat(key_path.c_str(), &st) != 0) return fail("cannot stat " + key_path.string() + ": " + std::strerror(errno));
    if ((st.st_mode & 077) != 0) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
      return fail(key_path.string() + " is readable by other users (mode " + mode +
                  "); remove it to create a new CA, or chmod 600 it if it was never exposed");
    }
    auto cert = read_small_file(cert_path, 64 * 1024);
    if (!cert) return fail(cert.error());
    auto key = read_small_file(key_path, 64 * 1024);
    if (!key) return fail(key.error());
    Ptr<X509> x = parse_cert(*cert);
    if (!x) {
      ERR_clear_error();
      return fail(cert_path.string() + " is not a PEM certificate; remove " + dir.string() + " to create a new CA");
    }
    Ptr<EVP_PKEY> k = parse_key(*key);
    if (!k) {
      ERR_clear_error();
      return fail(key_path.string() + " is not a PEM private key; remove " + dir.string() + " to create a new CA");
    }
    if (X509_check_private_key(x.get(), k.get()) != 1) {
      ERR_clear_error();
      return fail(key_path.string() + " does not match " + cert_path.string() + "; remove both to create a new CA");
    }
    // Reused while it carries the loopback constraints and less than half of
    // its lifetime has passed; otherwise replaced. A new CA is harmless: the
    // kubeconfig is rewritten with it on the next start.
    const std::time_t not_before = asn1_seconds(X509_get0_notBefore(x.get()));
    const std::time_t not_after = asn1_seconds(X509_get0_notAfter(x.get()));
    if (has_loopback_constraints(x.get()) && not_after > not_before && now >= not_before &&
        now < not_before + (not_after - not_before) / 2)
      return PemPair{std::move(*cert), std::move(*key)};
  } else if (have_cert != have_key) {
    // Half a CA is useless; it is replaced below (nothing secret is lost: a
    // certificate without its key, or a key without its certificate).
  }
  auto ca = create_loopback_ca(std::move(common_name), local_ca_days);
  if (!ca) return ca;
  // A crash between the two writes leaves a mismatched pair, which the next
  // start reports with its remedy instead of silently replacing a CA that a
  // kubeconfig may trust.
  if (auto r = write_private_file(key_path, ca->key); !r) return fail(r.error());
  if (auto r = write_private_file(cert_path, ca->cert); !r) return fail(r.error());
  return ca;
}

}  // namespace clusterconnect::tls
