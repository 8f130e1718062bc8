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

// The local CA: loopback names only, short-lived, rotated.
namespace {

X509* read_cert_file(const std::filesystem::path& p) {
  auto pem = tls::read_small_file(p);
  REQUIRE(pem.ok());
  return parse(*pem);
}

}  // namespace

TEST_CASE("the local CA may only vouch for loopback names, and verifiers enforce it", "[tls][certificates][ca]") {
  test::TempDir tmp;
  auto ca = tls::load_or_create_ca(tmp.path() / "ca", "local CA");
  REQUIRE(ca.ok());
  X509* cax = parse(ca->cert);
  REQUIRE(cax != nullptr);
  int at = X509_get_ext_by_NID(cax, NID_name_constraints, -1);
  REQUIRE(at >= 0);
  CHECK(X509_EXTENSION_get_critical(X509_get_ext(cax, at)) == 1);
  auto* nc = static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(cax, NID_name_constraints, nullptr, nullptr));
  REQUIRE(nc != nullptr);
  CHECK(sk_GENERAL_SUBTREE_num(nc->permittedSubtrees) == 3);
  CHECK(nc->excludedSubtrees == nullptr);
  NAME_CONSTRAINTS_free(nc);
  // Thirty days (plus the hour of clock skew allowed before now).
  int days = 0, secs = 0;
  REQUIRE(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cax), X509_get0_notAfter(cax)) == 1);
  CHECK(days == tls::local_ca_days);
  X509_free(cax);

  // What the proxy and the relay issue stays inside the constraints.
  auto leaf = tls::issue_server_cert(*ca, {"localhost"}, {"127.0.0.1", "::1"}, 30);
  REQUIRE(leaf.ok());
  CHECK(verify(ca->cert, leaf->cert, "localhost", nullptr) == X509_V_OK);
  CHECK(verify(ca->cert, leaf->cert, nullptr, "127.0.0.1") == X509_V_OK);
  CHECK(verify(ca->cert, leaf->cert, nullptr, "::1") == X509_V_OK);
  auto ip_only = tls::issue_server_cert(*ca, {}, {"127.0.0.2"}, 1);
  REQUIRE(ip_only.ok());
  CHECK(verify(ca->cert, ip_only->cert, nullptr, "127.0.0.2") == X509_V_OK);

  // Whoever steals the CA key cannot make a certificate for any other name
  // that OpenSSL accepts.
  auto by_name = tls::issue_server_cert(*ca, {"login.microsoftonline.com"}, {}, 1);
  REQUIRE(by_name.ok());
  CHECK(verify(ca->cert, by_name->cert, "login.microsoftonline.com", nullptr) == X509_V_ERR_PERMITTED_VIOLATION);
  auto by_ip = tls::issue_server_cert(*ca, {}, {"10.1.2.3"}, 1);
  REQUIRE(by_ip.ok());
  CHECK(verify(ca->cert, by_ip->cert, nullptr, "10.1.2.3") == X509_V_ERR_PERMITTED_VIOLATION);
  auto by_v6 = tls::issue_server_cert(*ca, {}, {"2001:db8::1"}, 1);
  REQUIRE(by_v6.ok());
  CHECK(verify(ca->cert, by_v6->cert, nullptr, "2001:db8::1") == X509_V_ERR_PERMITTED_VIOLATION);
}

TEST_CASE("a certificate never outlives the CA that issued it", "[tls][certificates][ca]") {
  auto ca = tls::create_loopback_ca("short CA", 2);
  REQUIRE(ca.ok());
  auto leaf = tls::issue_server_cert(*ca, {"localhost"}, {}, 365);
  REQUIRE(leaf.ok());
  X509* cax = parse(ca->cert);
  X509* lx = parse(leaf->cert);
  CHECK(ASN1_TIME_compare(X509_get0_notAfter(lx), X509_get0_notAfter(cax)) == 0);
  X509_free(lx);
  X509_free(cax);
}

TEST_CASE("the local CA is reused in the first half of its life and replaced after", "[tls][files][ca]") {
  test::TempDir tmp;
  auto dir = tmp.path() / "ca";
  const std::time_t now = std::time(nullptr);
  auto first = tls::load_or_create_ca(dir, "local CA", now);
  REQUIRE(first.ok());
  auto next_day = tls::load_or_create_ca(dir, "local CA", now + 86400);
  REQUIRE(next_day.ok());
  CHECK(next_day->cert == first->cert);
  CHECK(next_day->key == first->key);

  const std::time_t past_half = now + std::time_t(tls::local_ca_days) * 86400 / 2 + 3600;
  auto rotated = tls::load_or_create_ca(dir, "local CA", past_half);
  REQUIRE(rotated.ok());
  CHECK(rotated->cert != first->cert);
  CHECK(rotated->key != first->key);
  CHECK(*tls::read_small_file(dir / "ca.crt") == rotated->cert);
  CHECK(*tls::read_small_file(dir / "ca.key") == rotated->key);
  CHECK(mode_of(dir / "ca.key") == 0600);
  CHECK(mode_of(dir / "ca.crt") == 0600);
  // The new one is reused from then on.
  auto again = tls::load_or_create_ca(dir, "local CA");
  REQUIRE(again.ok());
  CHECK(again->cert == rotated->cert);
  X509* x = read_cert_file(dir / "ca.crt");
  CHECK(X509_get_ext_by_NID(x, NID_name_constraints, -1) >= 0);
  X509_free(x);
}

TEST_CASE("a local CA without the loopback constraints is replaced", "[tls][files][ca]") {
  test::TempDir tmp;
  auto dir = tmp.path() / "ca";
  auto old = tls::create_ca("local CA", 3650);  // what earlier versions wrote
  REQUIRE(old.ok());
  REQUIRE(tls::write_private_file(dir / "ca.key", old->key).ok());
  REQUIRE(tls::write_private_file(dir / "ca.crt", old->cert).ok());
  auto ca = tls::load_or_create_ca(dir, "local CA");
  REQUIRE(ca.ok());
  CHECK(ca->cert != old->cert);
  CHECK(ca->key != old->key);
  X509* x = read_cert_file(dir / "ca.crt");
  CHECK(X509_get_ext_by_NID(x, NID_name_constraints, -1) >= 0);
  X509_free(x);
}
