// The OIDC authenticator against tokens and keys of a real OpenID provider
// (oidc-provider as a plain OIDC provider, RS256 and ES256 keys): identity
// mapping as kube-apiserver does it, and the attacks on issued tokens.

#include <catch2/catch.hpp>

#include <openssl/pem.h>

#include <atomic>
#include <fstream>

#include "../../support/authenticate.hpp"
#include "../../support/jwt_test_keys.hpp"
#include "jwks.hpp"
#include "oidc_authenticator.hpp"
#include "oidc_credential.hpp"
#include "test_oidc_idp.hpp"

using namespace clusterconnect;
using namespace clusterconnect::oidc;
using clusterconnect::oidc::test::TestOidcIdp;

namespace {

struct Validator {
  asio::io_context io;
  std::shared_ptr<OidcAuthenticator> auth;
  // The key cache's clock: real time plus what the test adds, so that the
  // refresh rate limit passes without sleeping.
  std::shared_ptr<std::atomic<long long>> advanced_s = std::make_shared<std::atomic<long long>>(0);

  explicit Validator(const TestOidcIdp& idp, nlohmann::json extra = nlohmann::json::object()) {
    nlohmann::json options = {{"issuer", idp.issuer()},
                              {"client_id", "kubernetes"},
                              {"allow_http_loopback", true},
                              {"groups_claim", "groups"},
                              {"groups_prefix", "oidc:"}};
    options.update(extra);
    auto config = parse_authenticator_options(options);
    REQUIRE(config);
    config->key_clock = [advanced = advanced_s] {
      return std::chrono::steady_clock::now() + std::chrono::seconds(advanced->load());
    };
    auth = std::make_shared<OidcAuthenticator>(io, std::move(*config));
  }

  AuthOutcome authenticate(const std::string& token) {
    return clusterconnect::test::authenticate_now(io, *auth, token);
  }
};

// One provider per test case, in its own directory; none (and the case
// skipped) when the fixtures' npm dependencies are missing.
struct WithIdp {
  clusterconnect::test::TempDir dir;
  std::unique_ptr<TestOidcIdp> idp;

  WithIdp() {
    if (!TestOidcIdp::unavailable()) idp = std::make_unique<TestOidcIdp>(dir.path());
  }
  bool skipped() const {
    if (idp) return false;
    WARN("skipped: " << *TestOidcIdp::unavailable());
    return true;
  }
};

struct Parts {
  std::string header, payload, signature;
};

Parts split(const std::string& token) {
  const auto d1 = token.find('.'), d2 = token.rfind('.');
  return {token.substr(0, d1), token.substr(d1 + 1, d2 - d1 - 1), token.substr(d2 + 1)};
}

nlohmann::json decode(const std::string& part) { return nlohmann::json::parse(*auth::base64url_decode(part)); }

// The PEM of the provider's RSA key, as an attacker would use it for an HS256 "signature".
std::string published_rsa_pem(const TestOidcIdp& idp) {
  const auto jwks = idp.jwks();  // kept: a temporary in the range would not live through the loop
  for (const auto& k : jwks["keys"]) {
    if (k["kty"] != "RSA") continue;
    auto key = auth::rsa_key_from_jwk(k["n"].get<std::string>(), k["e"].get<std::string>());
    REQUIRE(key);
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
    PEM_write_bio_PUBKEY(bio.get(), key->get());
    char* data = nullptr;
    const long len = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(len));
  }
  FAIL("the provider publishes no RSA key");
  return {};
}

}  // namespace

TEST_CASE_METHOD(WithIdp, "auth-oidc/idp: RS256 and ES256 tokens map to user and groups as kube-apiserver maps them",
                 "[auth-oidc][idp]") {
  if (skipped()) return;
  const TestOidcIdp& idp = *this->idp;
  Validator v(idp);

  const std::string rs = idp.token("rs256");
  REQUIRE(decode(split(rs).header)["alg"] == "RS256");
  auto out = v.authenticate(rs);
  INFO(out.message);
  REQUIRE(out.ok());
  CHECK(out.identity.user == idp.issuer() + "#jane");  // kube-apiserver's default prefix for `sub`
  CHECK(out.identity.groups == std::vector<std::string>{"oidc:dev", "oidc:ops"});

  const std::string es = idp.token("es256");
  REQUIRE(decode(split(es).header)["alg"] == "ES256");
  out = v.authenticate(es);
  INFO(out.message);
  REQUIRE(out.ok());
  CHECK(out.identity.user == idp.issuer() + "#jane");

  Validator by_email(idp, {{"username_claim", "email"}, {"username_prefix", ""}});
  out = by_email.authenticate(es);
  REQUIRE(out.ok());
  CHECK(out.identity.user == "jane@example.org");  // no prefix for email
  Validator prefixed(idp, {{"username_claim", "email"}, {"username_prefix", "corp:"}});
  CHECK(prefixed.authenticate(rs).identity.user == "corp:jane@example.org");
}

TEST_CASE_METHOD(WithIdp, "auth-oidc/idp: attacks on tokens the provider issued are refused", "[auth-oidc][idp]") {
  if (skipped()) return;
  const TestOidcIdp& idp = *this->idp;
  Validator v(idp);
  const std::string good = idp.token("rs256");
  REQUIRE(v.authenticate(good).ok());
  const Parts p = split(good);

  SECTION("expired") {
    const long long exp = decode(p.payload)["exp"].get<long long>();
    v.auth->set_clock([exp] { return std::chrono::system_clock::time_point(std::chrono::seconds(exp + 3600)); });
    auto out = v.authenticate(good);
    CHECK(out.failure == AuthFailure::expired);
    CHECK(out.message.find("expired") != std::string::npos);
    CHECK(v.authenticate(idp.token("es256")).failure == AuthFailure::expired);
  }
  SECTION("wrong audience") {
    auto out = v.authenticate(idp.token("rs256", "another-cluster"));
    CHECK(out.failure == AuthFailure::wrong_audience);
    CHECK(out.message.find("another-cluster") != std::string::npos);
  }
  SECTION("wrong issuer") {
    Validator elsewhere(idp, {{"issuer", idp.issuer() + "/realms/other"}});
    auto out = elsewhere.authenticate(good);
    CHECK(out.failure == AuthFailure::wrong_issuer);
  }
  SECTION("alg none") {
    auto header = decode(p.header);
    header["alg"] = "none";
    auto out = v.authenticate(auth::test::encode_part(header) + "." + p.payload + ".");
    CHECK(out.failure == AuthFailure::disallowed_algorithm);
  }
  SECTION("HS256 signed with the provider's public key") {
    auto header = decode(p.header);
    header["alg"] = "HS256";
    auto out = v.authenticate(auth::test::hs256_token(published_rsa_pem(idp), header, decode(p.payload)));
    CHECK(out.failure == AuthFailure::disallowed_algorithm);
  }
  SECTION("unknown kid") {
    auth::test::TestKey stranger("not-published");
    auto out = v.authenticate(auth::test::rs256_token(stranger, decode(p.payload)));
    CHECK(out.failure == AuthFailure::unknown_key);
    CHECK(out.message.find("not-published") != std::string::npos);
  }
  SECTION("tampered payload") {
    auto claims = decode(p.payload);
    claims["sub"] = "admin";
    claims["groups"] = {"system:masters"};
    auto out = v.authenticate(p.header + "." + auth::test::encode_part(claims) + "." + p.signature);
    CHECK(out.failure == AuthFailure::bad_signature);
    // ES256 as well.
    const Parts e = split(idp.token("es256"));
    out = v.authenticate(e.header + "." + auth::test::encode_part(claims) + "." + e.signature);
    CHECK(out.failure == AuthFailure::bad_signature);
  }
  SECTION("a required claim missing") {
    Validator strict(idp, {{"required_claims", {"hd=example.org"}}});
    auto out = strict.authenticate(good);
    CHECK(out.failure == AuthFailure::malformed);
    CHECK(out.message.find("required claim 'hd'") != std::string::npos);
  }
  SECTION("email unverified") {
    Validator by_email(idp, {{"username_claim", "email"}});
    auto out = by_email.authenticate(idp.token("unverified"));
    CHECK(out.failure == AuthFailure::malformed);
    CHECK(out.message.find("not verified") != std::string::npos);
    CHECK(by_email.authenticate(good).ok());
  }
}

TEST_CASE_METHOD(WithIdp, "auth-oidc/idp: a key rotated at the provider is survived without restart",
                 "[auth-oidc][idp]") {
  if (skipped()) return;
  const TestOidcIdp& idp = *this->idp;
  Validator v(idp);
  const std::string before = idp.token("rs256");
  REQUIRE(v.authenticate(before).ok());

  const auto rotated = idp.admin("rotate-rsa-key");
  const std::string after = idp.token("rs256");
  REQUIRE(decode(split(after).header)["kid"] == rotated["kid"]);
  *v.advanced_s += 11;  // past the minimum interval between key fetches
  auto out = v.authenticate(after);
  INFO(out.message);
  CHECK(out.ok());
  // The old key left the set: its tokens stop at once.
  CHECK(v.authenticate(before).failure == AuthFailure::unknown_key);
  // The ES256 key was not rotated.
  CHECK(v.authenticate(idp.token("es256")).ok());
}

TEST_CASE_METHOD(WithIdp,
                 "auth-oidc/idp: the credential's client credentials grant yields tokens the authenticator accepts",
                 "[auth-oidc][idp][credential]") {
  if (skipped()) return;
  const TestOidcIdp& idp = *this->idp;
  const auto& client = idp.state()["clients"]["es256"];
  auto config = parse_credential_options({{"method", "client-credentials"},
                                          {"issuer", idp.issuer()},
                                          {"client_id", client["client_id"]},
                                          {"client_secret", client["client_secret"]},
                                          {"allow_http_loopback", true}});
  REQUIRE(config);
  OidcCredential credential(std::move(*config));
  const std::string resource = idp.state()["audience_prefix"].get<std::string>() + "kubernetes";
  auto t = credential.get_token(resource);
  INFO((t ? std::string() : t.error()));
  REQUIRE(t);
  CHECK(t->expires_on > std::chrono::system_clock::now() + std::chrono::minutes(5));
  auto again = credential.get_token(resource);
  REQUIRE(again);
  CHECK(again->token == t->token);  // served from the cache

  Validator v(idp);
  auto out = v.authenticate(t->token);
  INFO(out.message);
  CHECK(out.ok());
  CHECK(out.identity.user == idp.issuer() + "#jane");

  // A wrong secret is refused with the provider's reason, never echoing the secret.
  const std::string wrong_secret = "not-the-secret-0123456789abcdef";
  auto bad = parse_credential_options({{"method", "client-credentials"},
                                       {"issuer", idp.issuer()},
                                       {"client_id", client["client_id"]},
                                       {"client_secret", wrong_secret},
                                       {"allow_http_loopback", true}});
  REQUIRE(bad);
  auto refused = OidcCredential(std::move(*bad)).get_token(resource);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("invalid_client") != std::string::npos);
  CHECK(refused.error().find(wrong_secret) == std::string::npos);
}

TEST_CASE_METHOD(WithIdp, "auth-oidc/idp: the credential reads a token file on every call and refuses an expired one",
                 "[auth-oidc][idp][credential]") {
  if (skipped()) return;
  const TestOidcIdp& idp = *this->idp;
  const auto file = dir.path() / "token";
  const std::string first = idp.token("rs256");
  std::ofstream(file) << first << "\n";
  auto config = parse_credential_options({{"method", "token-file"}, {"token_file", file.string()}});
  REQUIRE(config);
  auto now = std::make_shared<std::chrono::system_clock::time_point>(std::chrono::system_clock::now());
  config->clock = [now] { return *now; };
  OidcCredential credential(std::move(*config));
  auto t = credential.get_token("");
  REQUIRE(t);
  CHECK(t->token == first);
  CHECK(Validator(idp).authenticate(t->token).ok());

  const std::string second = idp.token("es256");
  std::ofstream(file) << second;
  t = credential.get_token("");
  REQUIRE(t);
  CHECK(t->token == second);  // rotated on disk, picked up at once

  *now = t->expires_on + std::chrono::seconds(1);
  auto expired = credential.get_token("");
  REQUIRE_FALSE(expired);
  CHECK(expired.error().find("expired") != std::string::npos);
  std::ofstream(file) << "not a token";
  *now = std::chrono::system_clock::now();
  CHECK_FALSE(credential.get_token(""));
}
