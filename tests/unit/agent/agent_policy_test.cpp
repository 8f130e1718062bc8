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
  REQUIRE(d.subject);
  CHECK(d.subject->user == "alice@contoso.example");
  CHECK(d.subject->groups == std::vector<std::string>{"devs"});
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
    REQUIRE(d.subject);
    for (const auto& n : d.subject->notes)
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
  CHECK(passed.subject->user.empty());
  for (const auto& n : passed.subject->notes) CHECK(n.value.find(sa) == std::string::npos);
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

namespace {

// base64url without padding.
std::string b64url(const std::string& in) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  unsigned buffer = 0;
  int bits = 0;
  for (unsigned char c : in) {
    buffer = (buffer << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += alphabet[(buffer >> bits) & 63];
    }
  }
  if (bits > 0) out += alphabet[(buffer << (6 - bits)) & 63];
  return out;
}

// A JWT-shaped token for `user` that expires at `exp` (seconds).
std::string jwt_for(const std::string& user, long long exp) {
  return "eyJhbGciOiJSUzI1NiJ9." + b64url(nlohmann::json{{"exp", exp}, {"upn", user}}.dump()) + ".c2ln";
}

// Accepts the tokens of jwt_for (the user is read from them) until told that
// time has passed their exp; counts how often it is asked.
class CountingAuthenticator final : public Authenticator {
 public:
  void async_authenticate(std::string token, UniqueFunction<void(AuthOutcome)> handler) noexcept override {
    ++calls;
    if (expired) return handler(AuthOutcome{AuthFailure::expired, "the token expired", {}});
    const auto dot = token.find('.');
    const auto payload = nlohmann::json::parse(
        [&] {
          std::string seg = token.substr(dot + 1, token.find('.', dot + 1) - dot - 1);
          std::string out;
          unsigned buffer = 0;
          int bits = 0;
          for (char c : seg) {
            const auto v = static_cast<unsigned>(
                std::string_view("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_").find(c));
            buffer = (buffer << 6) | v;
            bits += 6;
            if (bits >= 8) {
              bits -= 8;
              out += static_cast<char>((buffer >> bits) & 0xff);
            }
          }
          return out;
        }(),
        nullptr, false);
    if (!payload.is_object() || !payload.contains("upn"))
      return handler(AuthOutcome{AuthFailure::malformed, "not ours", {}});
    AuthOutcome ok;
    const std::string user = payload["upn"].get<std::string>();
    ok.identity = {user, "uid-" + user, {"devs", "ops"}, {{"oid", {"oid-" + user}}, {"tid", {"tid-1"}}}};
    handler(ok);
  }
  int calls = 0;
  bool expired = false;
};

struct MemoFixture : Fixture {
  std::shared_ptr<CountingAuthenticator> auth = std::make_shared<CountingAuthenticator>();
  std::shared_ptr<AgentPolicy> shared = std::make_shared<AgentPolicy>(
      AuthMode::entra, auth, api, nullptr, std::make_shared<AgentMetrics>(), spdlog::default_logger());
  std::chrono::system_clock::time_point now{std::chrono::seconds(1'900'000'000)};
  MemoFixture() {
    shared->set_clock([this] { return now; });
  }
};

http::Decision decide(http::ForwardPolicy& p, http::RequestHead& head) {
  std::optional<http::Decision> out;
  p.on_request(head, [&](http::Decision d) { out = std::move(d); });
  REQUIRE(out.has_value());
  return std::move(*out);
}

}  // namespace

TEST_CASE("connection memo: the same token on a connection is verified once and impersonated alike",
          "[agent][policy][memo]") {
  MemoFixture f;
  auto conn = f.shared->for_connection();
  const std::string alice = jwt_for("alice@contoso.example", 1'900'003'600);
  auto first = with_token(alice);
  auto d1 = decide(*conn, first);
  REQUIRE(d1.forward);
  auto second = with_token(alice);
  auto d2 = decide(*conn, second);
  REQUIRE(d2.forward);
  CHECK(f.auth->calls == 1);
  REQUIRE(d2.subject);
  CHECK(d2.subject->user == "alice@contoso.example");
  CHECK(d2.subject == d1.subject);  // one record subject per identity, not a copy per request
  CHECK(d2.pipe_deadline == std::chrono::system_clock::time_point(std::chrono::seconds(1'900'003'600)));
  CHECK(second.all("authorization") == std::vector<std::string>{"Bearer agent-sa-token"});
  CHECK(second.all("impersonate-user") == std::vector<std::string>{"alice@contoso.example"});
  CHECK(second.all("impersonate-group") == std::vector<std::string>{"devs", "ops"});
  CHECK(second.all("impersonate-extra-oid") == std::vector<std::string>{"oid-alice@contoso.example"});
  CHECK(first.headers.size() == second.headers.size());
  // Another connection has its own memo; the shared policy keeps none.
  auto other = with_token(alice);
  REQUIRE(decide(*f.shared->for_connection(), other).forward);
  CHECK(f.auth->calls == 2);
  auto plain = with_token(alice);
  REQUIRE(decide(*f.shared, plain).forward);
  CHECK(f.auth->calls == 3);
}

TEST_CASE("connection memo: an expired token is refused although it was verified on the connection before",
          "[agent][policy][memo]") {
  MemoFixture f;
  auto conn = f.shared->for_connection();
  const std::string alice = jwt_for("alice@contoso.example", 1'900'000'010);
  auto first = with_token(alice);
  REQUIRE(decide(*conn, first).forward);
  f.now += std::chrono::seconds(5);
  auto still = with_token(alice);
  REQUIRE(decide(*conn, still).forward);
  CHECK(f.auth->calls == 1);
  // Past its exp the token goes to the authenticator again, which refuses it.
  f.now += std::chrono::seconds(5);
  f.auth->expired = true;
  auto late = with_token(alice);
  auto d = decide(*conn, late);
  CHECK_FALSE(d.forward);
  CHECK(d.reply.status == 401);
  CHECK(f.auth->calls == 2);
  CHECK(late.all("impersonate-user").empty());
}

TEST_CASE("connection memo: a token is verified again after the memo's maximum age", "[agent][policy][memo]") {
  MemoFixture f;
  auto conn = f.shared->for_connection();
  const std::string alice = jwt_for("alice@contoso.example", 1'900'003'600);
  auto first = with_token(alice);
  REQUIRE(decide(*conn, first).forward);
  f.now += AgentPolicy::memo_max_age;
  f.auth->expired = true;  // e.g. its signing key was rotated out meanwhile
  auto again = with_token(alice);
  CHECK(decide(*conn, again).reply.status == 401);
  CHECK(f.auth->calls == 2);
}

TEST_CASE("connection memo: a different token on the same connection is verified afresh", "[agent][policy][memo]") {
  MemoFixture f;
  auto conn = f.shared->for_connection();
  const std::string alice = jwt_for("alice@contoso.example", 1'900'003'600);
  const std::string bob = jwt_for("bob@contoso.example", 1'900'003'600);
  auto a = with_token(alice);
  REQUIRE(decide(*conn, a).forward);
  auto b = with_token(bob);
  auto db = decide(*conn, b);
  REQUIRE(db.forward);
  CHECK(f.auth->calls == 2);
  REQUIRE(db.subject);
  CHECK(db.subject->user == "bob@contoso.example");
  CHECK(b.all("impersonate-user") == std::vector<std::string>{"bob@contoso.example"});
  // A token differing from the remembered one in its last byte only.
  std::string forged = bob;
  forged.back() = forged.back() == 'n' ? 'm' : 'n';
  f.auth->expired = true;
  auto x = with_token(forged);
  CHECK_FALSE(decide(*conn, x).forward);
  CHECK(f.auth->calls == 3);
}

TEST_CASE("connections of one identity share its impersonation and another identity never gets it",
          "[agent][policy][memo]") {
  MemoFixture f;
  const std::string alice = jwt_for("alice@contoso.example", 1'900'003'600);
  const std::string bob = jwt_for("bob@contoso.example", 1'900'003'600);
  // Alice, Bob, Alice again, each on a connection of its own (as watches
  // are): every one verified, every one impersonated as its own caller.
  for (const auto* token : {&alice, &bob, &alice, &alice, &bob}) {
    const std::string user = token == &alice ? "alice@contoso.example" : "bob@contoso.example";
    auto head = with_token(*token);
    auto d = decide(*f.shared->for_connection(), head);
    REQUIRE(d.forward);
    REQUIRE(d.subject);
    CHECK(d.subject->user == user);
    CHECK(head.all("impersonate-user") == std::vector<std::string>{user});
    CHECK(head.all("impersonate-uid") == std::vector<std::string>{"uid-" + user});
    CHECK(head.all("impersonate-extra-oid") == std::vector<std::string>{"oid-" + user});
    CHECK(head.all("impersonate-group") == std::vector<std::string>{"devs", "ops"});
  }
  CHECK(f.auth->calls == 5);
}

TEST_CASE("connection memo: a caller's own Impersonate-* headers are refused on a remembered token too",
          "[agent][policy][memo]") {
  MemoFixture f;
  auto conn = f.shared->for_connection();
  const std::string alice = jwt_for("alice@contoso.example", 1'900'003'600);
  auto first = with_token(alice);
  REQUIRE(decide(*conn, first).forward);
  auto sneaky = with_token(alice, {{"Impersonate-User", "system:admin"}, {"impersonate-group", "system:masters"}});
  auto d = decide(*conn, sneaky);
  CHECK(f.auth->calls == 1);
  CHECK_FALSE(d.forward);
  CHECK(d.reply.status == 403);
  // The remembered caller's own headers are unchanged by that request.
  auto next = with_token(alice);
  REQUIRE(decide(*conn, next).forward);
  CHECK(next.all("impersonate-user") == std::vector<std::string>{"alice@contoso.example"});
  CHECK(next.all("impersonate-group") == std::vector<std::string>{"devs", "ops"});
}

TEST_CASE("connection memo: a proof-of-possession token is verified on every request", "[agent][policy][memo][pop]") {
  MemoFixture f;
  auto conn = f.shared->for_connection();
  const std::string inner = jwt_for("alice@contoso.example", 1'900'003'600);
  const std::string pop = "eyJ0eXAiOiJwb3AiLCJhbGciOiJSUzI1NiJ9." +
                          b64url(nlohmann::json{{"at", inner}, {"ts", 1}, {"upn", "alice@contoso.example"}}.dump()) +
                          ".c2ln";
  auto first = with_token(pop);
  REQUIRE(decide(*conn, first).forward);
  auto replay = with_token(pop);
  decide(*conn, replay);
  CHECK(f.auth->calls == 2);  // the authenticator decides about replays, every time
}
