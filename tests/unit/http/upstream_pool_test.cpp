// The shared upstream pool: connections held by clients between requests
// hold no upstream connection; what goes back to the pool, what never does,
// the keep-alive race, and the pool's bounds.

#include <catch2/catch.hpp>

#include "clusterconnect/delegating_stream.hpp"
#include "clusterconnect/http/forward.hpp"
#include "http_test_support.hpp"

using namespace clusterconnect;
using test::Conn;
using test::Message;

namespace {

std::string ok(const std::string& body, const std::string& extra = {}) {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
         extra + "\r\n" + body;
}

std::string target_of(const Message& m) {
  auto sp = m.start_line.find(' ');
  return m.start_line.substr(sp + 1, m.start_line.rfind(' ') - sp - 1);
}

// Answers each request on a connection with its target.
void echo_targets(Conn& c, int) {
  while (auto req = test::read_message(c)) c.send(ok(target_of(*req)));
}

struct PoolRig {
  std::shared_ptr<test::TestPolicy> policy;
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
  test::IoThreads threads;
  std::shared_ptr<http::UpstreamPool> pool;
  std::optional<test::Front> front;

  explicit PoolRig(unsigned short upstream_port, http::PoolOptions options = {}, test::TestPolicy::Fn fn = {})
      : policy(std::make_shared<test::TestPolicy>(std::move(fn))) {
    pool = http::UpstreamPool::create(threads.io, test::tcp_connector(threads.io, upstream_port, calls), options,
                                      test::debug_logger());
    front.emplace(threads.io, policy, pool);
  }
  ~PoolRig() {
    front.reset();
    pool->close();
  }
  Conn client() { return Conn(threads.io, front->port()); }
  bool idle_becomes(std::size_t n) {
    return test::wait_until([&] { return pool->stats().idle == n; }, std::chrono::seconds(10));
  }
};

std::optional<Message> get(Conn& c, const std::string& target, const std::string& extra = {}) {
  c.send("GET " + target + " HTTP/1.1\r\nHost: x\r\n" + extra + "\r\n");
  return test::read_message(c);
}

}  // namespace

TEST_CASE("held client connections take turns on one pooled upstream connection", "[http][pool]") {
  test::ScriptedUpstream up(echo_targets);
  PoolRig rig(up.port());
  auto a = rig.client();
  auto b = rig.client();
  for (int round = 0; round < 3; ++round) {
    for (auto* c : {&a, &b}) {
      const std::string target = "/r" + std::to_string(round) + (c == &a ? "a" : "b");
      auto res = get(*c, target);
      REQUIRE(res);
      CHECK(res->status() == 200);
      CHECK(res->body == target);
      // Between requests the connection waits in the pool, not with the client.
      REQUIRE(rig.idle_becomes(1));
    }
  }
  CHECK(up.connections() == 1);
  auto stats = rig.pool->stats();
  CHECK(stats.opened == 1);
  CHECK(stats.reused == 5);
}

TEST_CASE("a pooled connection the upstream closes is dropped and the next request opens another", "[http][pool]") {
  test::ScriptedUpstream up([](Conn& c, int) {
    while (auto req = test::read_message(c)) {
      c.send(ok(target_of(*req)));
      if (target_of(*req) == "/then-close") break;
    }
    c.close();  // without announcing it
  });
  PoolRig rig(up.port());
  auto a = rig.client();
  auto res = get(a, "/then-close");
  REQUIRE(res);
  CHECK(res->body == "/then-close");
  // In the pool, then dropped once its idle read sees the close.
  REQUIRE(rig.idle_becomes(0));
  CHECK(rig.pool->stats().reused == 0);
  // A request with a body could not be sent again: it must go to a live connection.
  auto b = rig.client();
  b.send("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody");
  res = test::read_message(b);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "/p");
  CHECK(up.connections() == 2);
}

TEST_CASE("the keep-alive race: a GET is sent again on a new connection", "[http][pool]") {
  std::atomic<int> requests_seen{0};
  // The first connection answers once, then takes the next request and
  // closes without answering: the upstream's idle close crossing the request.
  test::ScriptedUpstream up([&](Conn& c, int index) {
    if (index > 0) return echo_targets(c, index);
    if (auto req = test::read_message(c)) c.send(ok(target_of(*req)));
    if (test::read_message(c)) ++requests_seen;
    c.close();
  });
  PoolRig rig(up.port());
  auto a = rig.client();
  REQUIRE(get(a, "/first"));
  REQUIRE(rig.idle_becomes(1));
  auto b = rig.client();
  auto res = get(b, "/again");
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "/again");
  CHECK(requests_seen == 1);
  CHECK(up.connections() == 2);
  CHECK(rig.pool->stats().opened == 2);
}

TEST_CASE("the keep-alive race: a POST whose body was sent gets a 502 and is not sent again", "[http][pool]") {
  std::atomic<int> posts_seen{0};
  test::ScriptedUpstream up([&](Conn& c, int index) {
    if (index == 0) {
      if (auto req = test::read_message(c)) c.send(ok(target_of(*req)));
    }
    while (auto req = test::read_message(c)) {
      if (req->start_line.rfind("POST", 0) == 0) {
        ++posts_seen;
        if (index == 0) break;  // closes without answering
      }
      c.send(ok(target_of(*req)));
    }
    c.close();
  });
  PoolRig rig(up.port());
  auto a = rig.client();
  REQUIRE(get(a, "/first"));
  REQUIRE(rig.idle_becomes(1));
  auto b = rig.client();
  b.send("POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
  auto res = test::read_message(b);
  REQUIRE(res);
  CHECK(res->status() == 502);
  CHECK_THAT(res->body, Catch::Contains("not sent again"));
  CHECK(posts_seen == 1);
  CHECK(up.connections() == 1);
  // The client's connection still serves, on a new upstream connection.
  res = get(b, "/after");
  REQUIRE(res);
  CHECK(res->body == "/after");
  CHECK(posts_seen == 1);
}

TEST_CASE("upgraded and streaming connections and Connection close never go back to the pool", "[http][pool]") {
  test::Latch watch_open;
  std::atomic<bool> watch_upstream_closed{false};
  test::ScriptedUpstream up([&](Conn& c, int) {
    while (auto req = test::read_message(c)) {
      const auto target = target_of(*req);
      if (target == "/exec") {
        c.send("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        while (c.fill()) c.send(c.buffer), c.buffer.clear();
        return;
      }
      if (target == "/watch") {
        c.send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               "11\r\n{\"type\":\"ADDED\"}\n\r\n");
        watch_open.set();
        c.set_timeout(20);
        bool more = c.fill();
        watch_upstream_closed = !more;
        return;
      }
      if (target == "/close") {
        c.send(ok("bye", "Connection: close\r\n"));
        return;
      }
      c.send(ok(target));
    }
  });
  PoolRig rig(up.port());

  // Connection: close from the upstream (the client's connection stays).
  {
    auto a = rig.client();
    auto res = get(a, "/close");
    REQUIRE(res);
    CHECK(res->body == "bye");
  }
  // An upgrade: bytes both ways, then the client leaves.
  {
    auto a = rig.client();
    a.send("GET /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    auto head = test::read_head(a);
    REQUIRE(head);
    CHECK(head->status() == 101);
    a.send("ping");
    CHECK(a.read_exactly(4) == std::optional<std::string>("ping"));
    a.shutdown_send();
    CHECK(a.at_eof());
  }
  // A watch still streaming: another client's request needs a new connection.
  auto w = rig.client();
  w.send("GET /watch HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(test::read_head(w));
  REQUIRE(watch_open.wait());
  CHECK(rig.pool->stats().idle == 0);
  auto b = rig.client();
  auto res = get(b, "/plain");
  REQUIRE(res);
  CHECK(res->body == "/plain");
  REQUIRE(rig.idle_becomes(1));
  CHECK(up.connections() == 4);
  CHECK(rig.pool->stats().reused == 0);
  // The watch's client leaves: its upstream connection is closed, not pooled.
  w.close();
  REQUIRE(test::wait_until([&] { return watch_upstream_closed.load(); }, std::chrono::seconds(10)));
  CHECK(rig.pool->stats().idle == 1);
  // The one pooled connection serves the next request.
  res = get(b, "/plain-again");
  REQUIRE(res);
  CHECK(res->body == "/plain-again");
  CHECK(up.connections() == 4);
  CHECK(rig.pool->stats().reused == 1);
}

TEST_CASE("two identities on one pooled connection each carry only their own impersonation", "[http][pool]") {
  // A policy in the agent's manner: the caller's Authorization and
  // Impersonate-* go, the agent's credential and the caller's identity come.
  auto policy = [](http::RequestHead& head) {
    http::Decision d;
    const std::string* auth = head.find("authorization");
    const std::string user = auth && auth->rfind("Bearer ", 0) == 0 ? auth->substr(7) : std::string();
    head.remove("authorization");
    head.remove_prefix("impersonate-");
    head.add("Authorization", "Bearer agent-token");
    head.add("Impersonate-User", user);
    head.add("Impersonate-Group", user + "-group");
    return d;
  };
  std::mutex mu;
  std::vector<std::string> seen;  // what the upstream received, per request
  test::ScriptedUpstream up([&](Conn& c, int) {
    while (auto req = test::read_message(c)) {
      std::string who;
      for (const auto& [name, value] : req->headers)
        if (name.rfind("impersonate-", 0) == 0 || name == "authorization") who += name + "=" + value + ";";
      {
        std::lock_guard lock(mu);
        seen.push_back(who);
      }
      c.send(ok(who));
    }
  });
  PoolRig rig(up.port(), {}, policy);
  auto alice = rig.client();
  auto bob = rig.client();
  const std::string alice_sees =
      "authorization=Bearer agent-token;impersonate-user=alice;impersonate-group=alice-group;";
  const std::string bob_sees = "authorization=Bearer agent-token;impersonate-user=bob;impersonate-group=bob-group;";
  for (int i = 0; i < 2; ++i) {
    auto res = get(alice, "/api/v1/pods", "Authorization: Bearer alice\r\n");
    REQUIRE(res);
    CHECK(res->body == alice_sees);
    REQUIRE(rig.idle_becomes(1));
    // Bob tries to smuggle Alice's identity: his own replaces it.
    res = get(bob, "/api/v1/pods", "Authorization: Bearer bob\r\nImpersonate-User: alice\r\n");
    REQUIRE(res);
    CHECK(res->body == bob_sees);
    REQUIRE(rig.idle_becomes(1));
  }
  CHECK(up.connections() == 1);
  std::lock_guard lock(mu);
  CHECK(seen == std::vector<std::string>{alice_sees, bob_sees, alice_sees, bob_sees});
}

TEST_CASE("the pool keeps at most max_idle connections and closes those idle past the timeout", "[http][pool]") {
  test::Latch answer;
  std::atomic<int> closed{0};
  test::ScriptedUpstream up([&](Conn& c, int) {
    c.set_timeout(30);
    if (auto req = test::read_message(c)) {
      answer.wait(std::chrono::seconds(20));
      c.send(ok(target_of(*req)));
    }
    while (auto req = test::read_message(c)) c.send(ok(target_of(*req)));
    ++closed;
  });
  http::PoolOptions options;
  options.max_idle = 2;
  options.idle_timeout = std::chrono::seconds(90);
  PoolRig rig(up.port(), options);
  // Three requests at once: three upstream connections.
  std::vector<Conn> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(rig.client());
    clients.back().send("GET /c" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  REQUIRE(test::wait_until([&] { return up.connections() == 3; }, std::chrono::seconds(10)));
  answer.set();
  for (auto& c : clients) REQUIRE(test::read_message(c));
  // Two stay idle; the third is closed.
  REQUIRE(test::wait_until([&] { return closed.load() == 1; }, std::chrono::seconds(10)));
  CHECK(rig.pool->stats().idle == 2);

  // Not yet expired: kept.
  rig.pool->close_expired(std::chrono::steady_clock::now());
  CHECK(rig.pool->stats().idle == 2);
  // Past the idle timeout: closed, and the upstream sees them go.
  rig.pool->close_expired(std::chrono::steady_clock::now() + std::chrono::seconds(91));
  CHECK(rig.pool->stats().idle == 0);
  REQUIRE(test::wait_until([&] { return closed.load() == 3; }, std::chrono::seconds(10)));

  // The next request opens a new connection.
  auto res = get(clients[0], "/next");
  REQUIRE(res);
  CHECK(res->body == "/next");
  CHECK(up.connections() == 4);
}

namespace {

// A connection that says whether it may be reused, as a tunnel stream does
// once its tunnel drains: the connections numbered below `*first_usable` may not.
class Numbered final : public DelegatingStream {
 public:
  Numbered(StreamPtr inner, int number, std::shared_ptr<std::atomic<int>> first_usable)
      : DelegatingStream(std::move(inner)), number_(number), first_usable_(std::move(first_usable)) {}
  bool reusable() const noexcept override { return number_ >= *first_usable_; }

 private:
  int number_;
  std::shared_ptr<std::atomic<int>> first_usable_;
};

}  // namespace

TEST_CASE("a pooled connection that may no longer be reused is closed and the next request opens another",
          "[http][pool]") {
  auto first_usable = std::make_shared<std::atomic<int>>(0);
  // On "/three" the connection's tunnel starts draining while the exchange runs.
  test::ScriptedUpstream up([first_usable](Conn& c, int) {
    while (auto req = test::read_message(c)) {
      if (target_of(*req) == "/three") *first_usable = 2;
      c.send(ok(target_of(*req)));
    }
  });
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto opened = std::make_shared<std::atomic<int>>(0);
  test::IoThreads threads;
  auto tcp = test::tcp_connector(threads.io, up.port(), calls);
  http::UpstreamConnector connector = [tcp, first_usable, opened](http::ConnectHandler done) {
    tcp([first_usable, number = (*opened)++, done = std::move(done)](error_code ec, StreamPtr s,
                                                                       std::string reason) mutable {
      if (s) s = std::make_shared<Numbered>(std::move(s), number, first_usable);
      done(ec, std::move(s), std::move(reason));
    });
  };
  auto policy = std::make_shared<test::TestPolicy>();
  auto pool = http::UpstreamPool::create(threads.io, connector, {}, test::debug_logger());
  std::optional<test::Front> front;
  front.emplace(threads.io, policy, pool);
  auto idle_becomes = [&](std::size_t n) {
    return test::wait_until([&] { return pool->stats().idle == n; }, std::chrono::seconds(10));
  };
  Conn a(threads.io, front->port());
  auto res = get(a, "/one");
  REQUIRE(res);
  CHECK(res->body == "/one");
  REQUIRE(idle_becomes(1));
  // The idle connection's tunnel drains: it is not handed out again.
  *first_usable = 1;
  Conn b(threads.io, front->port());
  res = get(b, "/two");
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "/two");
  CHECK(up.connections() == 2);
  CHECK(pool->stats().reused == 0);
  REQUIRE(idle_becomes(1));
  // A connection that may no longer be reused is not taken back either.
  res = get(b, "/three");
  REQUIRE(res);
  CHECK(res->body == "/three");
  CHECK(pool->stats().reused == 1);
  REQUIRE(idle_becomes(0));
  front.reset();
  pool->close();
}
