#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "clusterconnect/certificates.hpp"
#include "test_env.hpp"

using namespace clusterconnect;

namespace {

X509* parse(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return x;
}

// Verifies `leaf` against `ca` the way a TLS client does: chain, purpose,
// and the host name or IP.
int verify(const std::string& ca, const std::string& leaf, const char* host, const char* ip) {
  X509* cax = parse(ca);
  X509* lx = parse(leaf);
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, cax);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, lx, nullptr);
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx);
  X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER);
  if (host) X509_VERIFY_PARAM_set1_host(param, host, 0);
  if (ip) X509_VERIFY_PARAM_set1_ip_asc(param, ip);
  int ok = X509_verify_cert(ctx);
  int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_free(lx);
  X509_free(cax);
  return err;
}

unsigned mode_of(const std::filesystem::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("issued server certificates verify against their CA for their names only", "[tls][certificates]") {
  auto ca = tls::create_ca("clusterconnect test CA", 30);
  REQUIRE(ca.ok());
  auto leaf = tls::issue_server_cert(*ca, {"localhost"}, {"127.0.0.1", "::1"}, 7);
  REQUIRE(leaf.ok());
  CHECK(verify(ca->cert, leaf->cert, "localhost", nullptr) == X509_V_OK);
  CHECK(verify(ca->cert, leaf->cert, nullptr, "127.0.0.1") == X509_V_OK);
  CHECK(verify(ca->cert, leaf->cert, nullptr, "::1") == X509_V_OK);
  CHECK(verify(ca->cert, leaf->cert, "example.com", nullptr) == X509_V_ERR_HOSTNAME_MISMATCH);
  CHECK(verify(ca->cert, leaf->cert, nullptr, "127.0.0.2") == X509_V_ERR_IP_ADDRESS_MISMATCH);

  auto other_ca = tls::create_ca("another CA", 30);
  REQUIRE(other_ca.ok());
  CHECK(verify(other_ca->cert, leaf->cert, "localhost", nullptr) != X509_V_OK);

  // The CA itself must not be usable as a server certificate for a name.
  CHECK(verify(ca->cert, ca->cert, "localhost", nullptr) != X509_V_OK);
}

TEST_CASE("certificate extensions are the ones Go's crypto/x509 expects", "[tls][certificates]") {
  auto ca = tls::create_ca("test CA", 30);
  REQUIRE(ca.ok());
  auto leaf = tls::issue_server_cert(*ca, {"localhost"}, {}, 7);
  REQUIRE(leaf.ok());
  X509* cax = parse(ca->cert);
  X509* lx = parse(leaf->cert);
  CHECK(X509_check_ca(cax) == 1);
  CHECK(X509_check_ca(lx) == 0);
  CHECK((X509_get_key_usage(cax) & KU_KEY_CERT_SIGN) != 0);
  CHECK((X509_get_extended_key_usage(lx) & XKU_SSL_SERVER) != 0);
  CHECK(X509_get0_subject_key_id(lx) != nullptr);
  CHECK(X509_get0_authority_key_id(lx) != nullptr);
  CHECK(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(lx), X509_get0_subject_key_id(cax)) == 0);
  CHECK(X509_get_version(lx) == 2);
  X509_free(lx);
  X509_free(cax);
}

TEST_CASE("issue_server_cert rejects bad input", "[tls][certificates]") {
  auto ca = tls::create_ca("test CA", 30);
  REQUIRE(ca.ok());
  CHECK_FALSE(tls::issue_server_cert(*ca, {}, {}, 7).ok());
  CHECK_FALSE(tls::issue_server_cert(*ca, {"bad name/x"}, {}, 7).ok());
  CHECK_FALSE(tls::issue_server_cert(*ca, {}, {"300.1.1.1"}, 7).ok());
  auto other = tls::create_ca("other", 30);
  REQUIRE(other.ok());
  CHECK_FALSE(tls::issue_server_cert({ca->cert, other->key}, {"localhost"}, {}, 7).ok());
}

TEST_CASE("write_private_file creates 0600 files in 0700 directories and replaces atomically", "[tls][files]") {
  test::TempDir tmp;
  auto path = tmp.path() / "a" / "b" / "secret.key";
  auto r = tls::write_private_file(path, "one");
  REQUIRE(r.ok());
  CHECK(mode_of(path) == 0600);
  CHECK(mode_of(tmp.path() / "a") == 0700);
  CHECK(mode_of(tmp.path() / "a" / "b") == 0700);
  REQUIRE(tls::write_private_file(path, "two").ok());
  CHECK(*tls::read_small_file(path) == "two");
  // No temporary files left behind.
  std::size_t entries = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(path.parent_path())) ++entries;
  CHECK(entries == 1);
  // A directory in the way fails cleanly.
  std::filesystem::create_directories(tmp.path() / "dir");
  auto bad = tls::write_private_file(tmp.path() / "dir", "x");
  CHECK_FALSE(bad.ok());
}

TEST_CASE("load_or_create_ca reuses the CA across runs and refuses an exposed key", "[tls][files]") {
  test::TempDir tmp;
  auto dir = tmp.path() / "ca";
  auto first = tls::load_or_create_ca(dir, "local CA");
  REQUIRE(first.ok());
  CHECK(mode_of(dir / "ca.key") == 0600);
  auto second = tls::load_or_create_ca(dir, "local CA");
  REQUIRE(second.ok());
  CHECK(second->cert == first->cert);
  CHECK(second->key == first->key);

  ::chmod((dir / "ca.key").c_str(), 0644);
  auto exposed = tls::load_or_create_ca(dir, "local CA");
  REQUIRE_FALSE(exposed.ok());
  CHECK_THAT(exposed.error(), Catch::Contains("ca.key") && Catch::Contains("0644"));
  CHECK(*tls::read_small_file(dir / "ca.key") == first->key);  // untouched

  ::chmod((dir / "ca.key").c_str(), 0600);
  REQUIRE(tls::write_private_file(dir / "ca.crt", "garbage").ok());
  auto broken = tls::load_or_create_ca(dir, "local CA");
  REQUIRE_FALSE(broken.ok());
  CHECK_THAT(broken.error(), Catch::Contains("ca.crt"));
}
