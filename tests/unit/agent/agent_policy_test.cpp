#include <catch2/catch.hpp>

#include <fstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "../../support/test_env.hpp"
#include "agent_policy.hpp"
#include "impersonation.hpp"
#include "clusterconnect/certificates.hpp"

using namespace clusterconnect;
using namespace clusterconnect::agent;

namespace {

// Answers from a table: the policy's behaviour is what is under test here.
class TableAuthenticator final : public Authenticator {
 public:
  void async_authenticate(std::string token, UniqueFunction<void(AuthOutcome)> handler) noexcept override {
    if (token == "good" || token.rfind("eyJ", 0) == 0) {
      AuthOutcome ok;
      ok.identity = {"alice@contoso.example", "oid-1", {"devs"}, {{"oid", {"oid-1"}}, {"tid", {"tid-1"}}}};
      return handler(ok);
    }
    if (token == "masters" || token == "tabbed" || token == "system-user") {
      AuthOutcome ok;
      ok.identity = {"alice@contoso.example", "oid-1", {"devs"}, {}};
      if (token == "masters") ok.identity.groups.push_back("system:masters");
      if (token == "tabbed") ok.identity.user = "alice@contoso.example\t";
      if (token == "system-user") ok.identity.user = "system:admin";
      return handler(ok);
    }
    if (token == "expired") return handler(AuthOutcome{AuthFailure::expired, "the token expired at 2026-01-01T00:00:00Z", {}});
    if (token == "sa-jwt") return handler(AuthOutcome{AuthFailure::wrong_issuer, "issuer https://kubernetes.default.svc is not accepted", {}});
    handler(AuthOutcome{AuthFailure::not_applicable, "not a JWT", {}});
  }
};

struct Fixture {
  test::TempDir dir;
  std::shared_ptr<ApiServer> api;
  Fixture() {
    auto ca = tls::create_ca("test CA", 1);
    REQUIRE(ca.ok());
    std::ofstream(dir.path() / "ca.crt") << ca->cert;
    std::ofstream(dir.path() / "token") << "agent-sa-token\n";
    auto made = ApiServer::create({"https://127.0.0.1:6443", (dir.path() / "ca.crt").string(), (dir.path() / "token").string()});
    REQUIRE(made.ok());
    api = made.value();
  }
  std::shared_ptr<AgentPolicy> policy(AuthMode mode) {
    return std::make_shared<AgentPolicy>(mode, std::make_shared<TableAuthenticator>(), api, nullptr,
                                         std::make_shared<AgentMetrics>(), spdlog::default_logger());
  }
};

http::Decision decide(AgentPolicy& p, http::RequestHead& head) {
  std::optional<http::Decision> out;
  p.on_request(head, [&](http::Decision d) { out = std::move(d); });
  REQUIRE(out.has_value());
  return std::move(*out);
}

http::RequestHead with_token(const std::string& token, std::vector<http::Header> extra = {}) {
  http::RequestHead h;
  h.method = "GET";
  h.target = "/api/v1/namespaces";
  h.headers = {{"Authorization", "Bearer " + token}};
  for (auto& e : extra) h.headers.push_back(e);
  return h;
}

}  // namespace

TEST_CASE("entra mode: a valid token is forwarded as the agent, impersonating the caller", "[agent][policy]") {
  Fixture f;
  auto head = with_token("good");
  auto d = decide(*f.policy(AuthMode::entra), head);
  REQUIRE(d.forward);
  CHECK(d.user == "alice@contoso.example");
  CHECK(head.all("authorization") == std::vector<std::string>{"Bearer agent-sa-token"});
  CHECK(head.all("impersonate-user") == std::vector<std::string>{"alice@contoso.example"});
  CHECK(head.all("impersonate-group") == std::vector<std::string>{"devs"});
}

TEST_CASE("entra mode: a caller's own Impersonate-* header is refused with 403", "[agent][policy]") {
  Fixture f;
  auto head = with_token("good", {{"Impersonate-User", "system:admin"}, {"Impersonate-Group", "system:masters"}});
  auto d = decide(*f.policy(AuthMode::entra), head);
  REQUIRE_FALSE(d.forward);
  CHECK(d.reply.status == 403);
  auto body = nlohmann::json::parse(d.reply.body);
  CHECK(body["kind"] == "Status");
  CHECK(body["code"] == 403);
  CHECK(body["message"] == "impersonation through the cluster connection is not permitted");
}

TEST_CASE("entra mode: a rejected token gets a 401 Status saying why, without the token", "[agent][policy]") {
  Fixture f;
  auto head = with_token("expired");
  auto d = decide(*f.policy(AuthMode::entra), head);
  REQUIRE_FALSE(d.forward);
  CHECK(d.reply.status == 401);
  auto body = nlohmann::json::parse(d.reply.body);
  CHECK(body["reason"] == "Unauthorized");
  CHECK_THAT(body["message"].get<std::string>(), Catch::Contains("expired"));
  CHECK(d.reply.body.find("Bearer") == std::string::npos);

  http::RequestHead none;
  none.method = "GET";
  none.target = "/api";
  auto d2 = decide(*f.policy(AuthMode::entra), none);
  CHECK(d2.reply.status == 401);
  CHECK_THAT(nlohmann::json::parse(d2.reply.body)["message"].get<std::string>(), Catch::Contains("no bearer token"));
}

TEST_CASE("both mode: a token that is not an Entra token for this cluster passes through unchanged", "[agent][policy]") {
  Fixture f;
  for (const char* token : {"opaque-sa-token", "sa-jwt"}) {
    auto head = with_token(token);
    auto d = decide(*f.policy(AuthMode::both), head);
    REQUIRE(d.forward);
    CHECK(head.all("authorization") == std::vector<std::string>{std::string("Bearer ") + token});
    CHECK(head.all("impersonate-user").empty());
  }
  // An Entra token that fails for a real reason is still refused.
  auto head = with_token("expired");
  CHECK(decide(*f.policy(AuthMode::both), head).reply.status == 401);
}

TEST_CASE("token mode: the request goes to the API server exactly as sent", "[agent][policy]") {
  Fixture f;
  auto head = with_token("good", {{"Impersonate-User", "bob"}});
  auto before = head.headers;
  auto d = decide(*f.policy(AuthMode::token), head);
  REQUIRE(d.forward);
  REQUIRE(head.headers.size() == before.size());
  for (std::size_t i = 0; i < before.size(); ++i) CHECK(head.headers[i].value == before[i].value);
}

TEST_CASE("audit notes: oid and tid of an Entra caller, a passed-through token's claimed user, never the token", "[agent][policy][audit]") {
  Fixture f;
  auto head = with_token("good");
  auto d = decide(*f.policy(AuthMode::entra), head);
  REQUIRE(d.forward);
  auto note = [](const http::Decision& d, const std::string& name) {
    for (const auto& n : d.notes)
      if (n.name == name) return n.value;
    return std::string();
  };
  CHECK(note(d, "oid") == "oid-1");
  CHECK(note(d, "tid") == "tid-1");

  // A service-account JWT (unsigned here: the agent does not verify it).
  const std::string sa = "eyJhbGciOiJSUzI1NiJ9." +
                         std::string("eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpidWlsZGVyIn0") + ".c2ln";
  auto sa_head = with_token(sa);
  auto passed = decide(*f.policy(AuthMode::token), sa_head);
  REQUIRE(passed.forward);
  CHECK(note(passed, "claimed_user") == "system:serviceaccount:default:builder");
  CHECK_THAT(note(passed, "identity"), Catch::Contains("passed through"));
  for (const auto& n : passed.notes) CHECK(n.value.find(sa) == std::string::npos);
}

TEST_CASE("entra mode: a reserved or look-alike identity is refused with 403, whatever the authenticator said", "[agent][policy]") {
  Fixture f;
  for (const char* token : {"masters", "tabbed", "system-user"}) {
    INFO(token);
    auto head = with_token(token);
    auto d = decide(*f.policy(AuthMode::entra), head);
    REQUIRE_FALSE(d.forward);
    CHECK(d.reply.status == 403);
    CHECK_THAT(nlohmann::json::parse(d.reply.body)["message"].get<std::string>(), Catch::Contains("does not impersonate"));
    CHECK(head.all("impersonate-user").empty());
  }
  CHECK(refused_identity({"team:system", "", {"a:system:b"}, {}}).empty());
  CHECK_FALSE(refused_identity({"alice\xc2\xa0", "", {}, {}}).empty());
  CHECK_FALSE(refused_identity({"alice", "", {"g\xe2\x80\x8b"}, {}}).empty());
}

TEST_CASE("an upgraded connection is given the expiry of the token that opened it", "[agent][policy]") {
  Fixture f;
  // {"exp":2000000000}: read from the token the authenticator accepted.
  const std::string jwt = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjIwMDAwMDAwMDB9.c2ln";
  const auto expected = std::chrono::system_clock::time_point(std::chrono::seconds(2000000000));
  auto head = with_token(jwt);
  auto d = decide(*f.policy(AuthMode::entra), head);
  REQUIRE(d.forward);
  CHECK(d.pipe_deadline == expected);
  CHECK_THAT(d.pipe_deadline_reason, Catch::Contains("expired"));
  auto passed_head = with_token(jwt);
  auto passed = decide(*f.policy(AuthMode::token), passed_head);
  CHECK(passed.pipe_deadline == expected);
  // A token without exp sets no deadline.
  auto plain = with_token("good");
  CHECK(decide(*f.policy(AuthMode::entra), plain).pipe_deadline == std::chrono::system_clock::time_point{});
}

TEST_CASE("an upgraded connection opened with a proof-of-possession token ends when the access token inside expires",
          "[agent][policy][pop]") {
  Fixture f;
  // {"typ":"pop","alg":"RS256"} . {"at":"<header>.{"exp":2000000000}.<sig>","ts":1}
  const std::string inner = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjIwMDAwMDAwMDB9.c2ln";
  const std::string payload = nlohmann::json{{"at", inner}, {"ts", 1}}.dump();
  std::string encoded;
  {
    static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned buffer = 0;
    int bits = 0;
    for (unsigned char c : payload) {
      buffer = (buffer << 8) | c;
      bits += 8;
      while (bits >= 6) {
        bits -= 6;
        encoded += alphabet[(buffer >> bits) & 63];
      }
    }
    if (bits > 0) encoded += alphabet[(buffer << (6 - bits)) & 63];
  }
  auto head = with_token("eyJ0eXAiOiJwb3AiLCJhbGciOiJSUzI1NiJ9." + encoded + ".c2ln");
  auto d = decide(*f.policy(AuthMode::entra), head);
  REQUIRE(d.forward);
  CHECK(d.pipe_deadline == std::chrono::system_clock::time_point(std::chrono::seconds(2000000000)));
}
