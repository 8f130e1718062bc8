#include <catch2/catch.hpp>

#include "jwt.hpp"
#include "../../support/jwt_test_keys.hpp"

using namespace clusterconnect;
using namespace clusterconnect::entra;

TEST_CASE("auth-entra: compact JWS parsing", "[auth-entra][jwt]") {
  test::TestKey key("k");
  auto t = test::rs256_token(key, {{"iss", "x"}});
  auto p = parse_jws(t);
  REQUIRE(p.ok());
  CHECK(p.jws.header["kid"] == "k");
  CHECK(p.jws.payload["iss"] == "x");
  CHECK(p.jws.signing_input == t.substr(0, t.rfind('.')));
  CHECK(p.jws.signature.size() == 256);

  CHECK(parse_jws("opaque-token").failure == AuthFailure::not_applicable);
  CHECK(parse_jws(test::encode_part({{"typ", "JWT"}}) + ".e30.c2ln").failure == AuthFailure::not_applicable);  // no alg
  CHECK(parse_jws(t + ".extra.parts").failure == AuthFailure::malformed);
  CHECK(parse_jws(test::encode_part({{"alg", "RS256"}, {"crit", {"exp"}}}) + ".e30.c2ln").failure == AuthFailure::malformed);
  CHECK(parse_jws(test::encode_part({{"alg", "RS256"}}) + ".W10.c2ln").failure == AuthFailure::malformed);  // payload is an array
  CHECK(parse_jws(test::encode_part({{"alg", "RS256"}}) + ".e30=.c2ln").failure == AuthFailure::malformed);  // padded
}

TEST_CASE("auth-entra: claim rules on their own", "[auth-entra][jwt]") {
  ValidationRules rules;
  rules.tenants = {"t1"};
  rules.audiences = {"aud-1", "api://aud-1"};
  rules.authority = "https://login.microsoftonline.com";
  Jws jws;
  jws.payload = {{"iss", "https://login.microsoftonline.com/t1/v2.0"}, {"aud", {"other", "api://aud-1"}}, {"exp", 2000}, {"oid", "o"}};
  std::string tenant;
  CHECK(select_tenant(jws, rules, tenant).ok());
  CHECK(tenant == "t1");
  CHECK(check_issuer(jws, tenant, {"https://login.microsoftonline.com/t1/v2.0", "https://sts.windows.net/t1/"}).ok());
  CHECK(check_issuer(jws, tenant, {"https://sts.windows.net/t1/"}).failure == AuthFailure::wrong_issuer);
  jws.payload["tid"] = "t2";
  CHECK(select_tenant(jws, rules, tenant).failure == AuthFailure::wrong_issuer);
  jws.payload.erase("tid");
  auto at = std::chrono::system_clock::time_point(std::chrono::seconds(1000));
  CHECK(check_claims(jws, rules, at).ok());
  CHECK(check_claims(jws, rules, std::chrono::system_clock::time_point(std::chrono::seconds(2301))).failure == AuthFailure::expired);
  jws.payload["exp"] = 1e300;
  CHECK(check_claims(jws, rules, at).failure == AuthFailure::malformed);
  jws.payload["exp"] = "2000";
  CHECK(check_claims(jws, rules, at).failure == AuthFailure::malformed);
  CHECK(printable("a\nb\"c", 80) == "a?b?c");
}
