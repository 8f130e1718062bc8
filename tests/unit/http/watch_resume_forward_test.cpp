// The engine with Recovery on (the local proxy's setting): watches that
// continue on a new upstream, reads sent once more, writes refused clearly.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "clusterconnect/http/forward.hpp"
#include "http_test_support.hpp"

using namespace clusterconnect;
using test::Conn;

namespace {

std::string chunk(const std::string& data, const std::string& extension = {}) {
  char size[16];
  std::snprintf(size, sizeof size, "%zx", data.size());
  return size + extension + "\r\n" + data + "\r\n";
}

std::string event(const std::string& type, int rv) {
  return R"({"type":")" + type + R"(","object":{"kind":"Namespace","metadata":{"name":"ns-)" + std::to_string(rv) +
         R"(","resourceVersion":")" + std::to_string(rv) + "\"}}}\n";
}

const std::string kWatchHead =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

std::string target_of(const test::Message& m) {
  auto sp = m.start_line.find(' ');
  return m.start_line.substr(sp + 1, m.start_line.rfind(' ') - sp - 1);
}

http::Recovery quick_recovery() {
  http::Recovery r;
  r.retry_safe = true;
  r.resume_watches = true;
  r.resume_for = std::chrono::milliseconds(2000);
  r.first_backoff = std::chrono::milliseconds(10);
  r.max_backoff = std::chrono::milliseconds(50);
  return r;
}

struct ResumeRig {
  std::shared_ptr<test::TestPolicy> policy = std::make_shared<test::TestPolicy>();
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
  test::IoThreads threads;
  std::optional<test::Front> front;

  explicit ResumeRig(http::UpstreamConnector connector, http::Recovery recovery = quick_recovery()) {
    front.emplace(threads.io, policy, std::move(connector), http::Limits{}, recovery);
  }
  ResumeRig(unsigned short port, http::Recovery recovery = quick_recovery()) {
    front.emplace(threads.io, policy, test::tcp_connector(threads.io, port, calls), http::Limits{}, recovery);
  }
  ~ResumeRig() { front.reset(); }
  Conn client() { return Conn(threads.io, front->port()); }
};

// The whole chunked body the client receives, and whether it ended cleanly.
std::string read_watch_body(Conn& client, bool& clean) {
  std::string body;
  clean = false;
  for (int i = 0; i < 1000; ++i) {
    bool failed = false;
    auto c = test::read_chunk(client, failed);
    if (failed) return body;
    if (!c) {
      clean = true;
      return body;
    }
    body += *c;
  }
  return body;
}

}  // namespace

TEST_CASE("a watch whose upstream breaks continues from the last delivered event with no gap and no duplicate",
          "[http][watch]") {
  std::mutex mu;
  std::vector<std::string> targets;
  test::ScriptedUpstream up([&](Conn& c, int index) {
    auto req = test::read_message(c);
    if (!req) return;
    {
      std::lock_guard lock(mu);
      targets.push_back(target_of(*req));
    }
    if (index == 0) {
      // Chunk extensions, an event split across chunks, then a break in the
      // middle of the third event.
      const std::string e8 = event("ADDED", 8);
      c.send(kWatchHead + chunk(event("ADDED", 6), ";name=value") + chunk(event("MODIFIED", 7).substr(0, 9)) +
             chunk(event("MODIFIED", 7).substr(9) + e8.substr(0, 12), ";x"));
      c.close();
      return;
    }
    c.send(kWatchHead + chunk(event("ADDED", 8) + event("BOOKMARK", 9)) + chunk(event("DELETED", 10)) + "0\r\n\r\n");
    // The client's next request reuses the new upstream.
    if (auto next = test::read_message(c)) c.send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext");
  });
  ResumeRig rig(up.port());
  auto client = rig.client();
  client.send(
      "GET /api/v1/namespaces?watch=true&resourceVersion=5&sendInitialEvents=false&allowWatchBookmarks=true "
      "HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  CHECK(head->status() == 200);
  REQUIRE(head->chunked);
  bool clean = false;
  auto body = read_watch_body(client, clean);
  CHECK(clean);
  CHECK(body ==
        event("ADDED", 6) + event("MODIFIED", 7) + event("ADDED", 8) + event("BOOKMARK", 9) + event("DELETED", 10));
  {
    std::lock_guard lock(mu);
    REQUIRE(targets.size() == 2);
    CHECK(targets[1] == "/api/v1/namespaces?watch=true&allowWatchBookmarks=true&resourceVersion=7");
  }
  client.send("GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
  auto next = test::read_message(client);
  REQUIRE(next);
  CHECK(next->body == "next");
  CHECK(up.connections() == 2);
}

TEST_CASE("a resumed watch the cluster answers 410 ends with an ERROR event", "[http][watch]") {
  test::ScriptedUpstream up([&](Conn& c, int index) {
    if (!test::read_message(c)) return;
    if (index == 0) {
      c.send(kWatchHead + chunk(event("ADDED", 6)));
      c.close();
      return;
    }
    const std::string gone =
        R"J({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 6 (40)","reason":"Expired","code":410})J";
    c.send("HTTP/1.1 410 Gone\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(gone.size()) +
           "\r\n\r\n" + gone);
  });
  ResumeRig rig(up.port());
  auto client = rig.client();
  client.send("GET /api/v1/namespaces?watch=1&resourceVersion=5 HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  bool clean = false;
  auto body = read_watch_body(client, clean);
  CHECK(clean);
  auto nl = body.find('\n');
  REQUIRE(nl != std::string::npos);
  CHECK(body.substr(0, nl + 1) == event("ADDED", 6));
  auto error = nlohmann::json::parse(body.substr(nl + 1), nullptr, false);
  REQUIRE_FALSE(error.is_discarded());
  CHECK(error["type"] == "ERROR");
  CHECK(error["object"]["code"] == 410);
  CHECK(error["object"]["reason"] == "Expired");
}

TEST_CASE("a watch that cannot resume in time ends cleanly after bounded attempts", "[http][watch]") {
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send(kWatchHead + chunk(event("ADDED", 6) + "{\"type\":\"ADD"));
    c.close();
  });
  test::IoThreads* threads_ptr = nullptr;
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto tcp_calls = std::make_shared<std::atomic<int>>(0);
  std::optional<http::UpstreamConnector> tcp;
  auto recovery = quick_recovery();
  recovery.resume_for = std::chrono::milliseconds(300);
  // The first stream reaches the upstream; every later one fails, as when
  // no session to the cluster can be made.
  ResumeRig rig(
      [&](http::ConnectHandler done) {
        if ((*calls)++ == 0) return (*tcp)(std::move(done));
        done(asio::error::connection_refused, nullptr, "cannot reach the relay");
      },
      recovery);
  threads_ptr = &rig.threads;
  tcp = test::tcp_connector(threads_ptr->io, up.port(), tcp_calls);
  auto client = rig.client();
  client.send("GET /api/v1/namespaces?watch=1&resourceVersion=5 HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  bool clean = false;
  auto body = read_watch_body(client, clean);
  CHECK(clean);
  CHECK(body == event("ADDED", 6));
  // Backoff 10, 20, 40, 50, 50... ms within 300 ms: a handful, not a storm.
  CHECK(calls->load() >= 3);
  CHECK(calls->load() <= 12);
  auto records = rig.policy->records(1);
  REQUIRE(records.size() == 1);
  CHECK(records[0].status == 200);
}

TEST_CASE("a GET whose upstream dies before answering is sent once more on a new upstream", "[http][watch]") {
  test::ScriptedUpstream up([&](Conn& c, int index) {
    if (!test::read_message(c)) return;
    if (index == 0) return c.close();
    c.send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
  });
  ResumeRig rig(up.port());
  auto client = rig.client();
  client.send("GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "{}");
  CHECK(up.connections() == 2);
}

TEST_CASE("a POST whose upstream dies before answering gets a 502 Status and is not sent again", "[http][watch]") {
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.close();
  });
  ResumeRig rig(up.port());
  auto client = rig.client();
  client.send(
      "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
      "2\r\n\r\n{}");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 502);
  auto status = nlohmann::json::parse(res->body, nullptr, false);
  REQUIRE_FALSE(status.is_discarded());
  CHECK(status["kind"] == "Status");
  CHECK_THAT(status["message"].get<std::string>(), Catch::Contains("session to the cluster was lost"));
  CHECK(up.connections() == 1);
}

TEST_CASE("without Recovery a broken watch is reset as before", "[http][watch]") {
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send(kWatchHead + chunk(event("ADDED", 6)));
    c.close();
  });
  ResumeRig rig(up.port(), http::Recovery{});
  auto client = rig.client();
  client.send("GET /api/v1/namespaces?watch=1&resourceVersion=5 HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  bool clean = true;
  read_watch_body(client, clean);
  CHECK_FALSE(clean);
  CHECK(up.connections() == 1);
}

TEST_CASE("a resume whose connect never completes ends the watch at its deadline", "[http][watch]") {
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send(kWatchHead + chunk(event("ADDED", 6)));
    c.close();
  });
  // Connects after the first are left waiting, as for a relay that never
  // answers; they are released before the engine stops.
  std::mutex mu;
  std::vector<http::ConnectHandler> parked;
  auto calls = std::make_shared<std::atomic<int>>(0);
  std::optional<http::UpstreamConnector> tcp;
  auto recovery = quick_recovery();
  recovery.resume_for = std::chrono::milliseconds(300);
  {
    ResumeRig rig(
        [&](http::ConnectHandler done) {
          if ((*calls)++ == 0) return (*tcp)(std::move(done));
          std::lock_guard lock(mu);
          parked.push_back(std::move(done));
        },
        recovery);
    auto tcp_calls = std::make_shared<std::atomic<int>>(0);
    tcp = test::tcp_connector(rig.threads.io, up.port(), tcp_calls);
    auto client = rig.client();
    client.send("GET /api/v1/namespaces?watch=1&resourceVersion=5 HTTP/1.1\r\nHost: x\r\n\r\n");
    auto head = test::read_head(client);
    REQUIRE(head);
    bool clean = false;
    auto body = read_watch_body(client, clean);
    CHECK(clean);
    CHECK(body == event("ADDED", 6));
    CHECK(calls->load() == 2);  // one connect for the resume, never answered
    client.close();
    // Released while the engine's io_context still runs.
    std::lock_guard lock(mu);
    parked.clear();
  }
}

TEST_CASE("a resumed watch goes through the policy again and carries the token of the moment", "[http][watch]") {
  std::mutex mu;
  std::vector<std::string> seen;  // Authorization of each upstream request
  test::ScriptedUpstream up([&](Conn& c, int index) {
    auto req = test::read_message(c);
    if (!req) return;
    {
      std::lock_guard lock(mu);
      const auto* auth = req->header("authorization");
      seen.push_back(auth ? *auth : std::string("(none)"));
    }
    if (index == 0) {
      c.send(kWatchHead + chunk(event("ADDED", 6)));
      c.close();
      return;
    }
    c.send(kWatchHead + chunk(event("MODIFIED", 7)) + "0\r\n\r\n");
  });
  // The proxy's policy: the client's local secret is swapped for the access
  // token it holds now, which has been renewed by the time of the resume.
  auto issued = std::make_shared<std::atomic<int>>(0);
  ResumeRig rig(up.port());
  rig.policy = std::make_shared<test::TestPolicy>([issued](http::RequestHead& head) {
    http::Decision d;
    bool local = false;
    for (auto it = head.headers.begin(); it != head.headers.end();) {
      if (it->name == "Authorization") {
        local = it->value == "Bearer local-secret";
        it = head.headers.erase(it);
      } else {
        ++it;
      }
    }
    if (!local) {
      d.forward = false;
      d.reply = http::status_reply(401, "Unauthorized", "no local secret");
      return d;
    }
    head.headers.push_back({"Authorization", "Bearer access-" + std::to_string(++*issued)});
    return d;
  });
  rig.front.reset();
  rig.front.emplace(rig.threads.io, rig.policy, test::tcp_connector(rig.threads.io, up.port(), rig.calls), http::Limits{},
                    quick_recovery());
  auto client = rig.client();
  client.send("GET /api/v1/namespaces?watch=true&resourceVersion=5 HTTP/1.1\r\nHost: x\r\n"
              "Authorization: Bearer local-secret\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  CHECK(head->status() == 200);
  bool clean = false;
  auto body = read_watch_body(client, clean);
  CHECK(clean);
  CHECK(body == event("ADDED", 6) + event("MODIFIED", 7));
  std::lock_guard lock(mu);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == "Bearer access-1");
  CHECK(seen[1] == "Bearer access-2");
}

TEST_CASE("with a pool a broken watch resumes on a new upstream that then goes back to the pool", "[http][watch][pool]") {
  std::mutex mu;
  std::vector<std::string> targets;
  test::ScriptedUpstream up([&](Conn& c, int index) {
    while (auto req = test::read_message(c)) {
      {
        std::lock_guard lock(mu);
        targets.push_back(target_of(*req));
      }
      if (target_of(*req) == "/next") {
        c.send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext");
        continue;
      }
      if (index == 0) {
        c.send(kWatchHead + chunk(event("ADDED", 6)));
        return c.close();
      }
      c.send(kWatchHead + chunk(event("MODIFIED", 7)) + "0\r\n\r\n");
    }
  });
  auto policy = std::make_shared<test::TestPolicy>();
  auto calls = std::make_shared<std::atomic<int>>(0);
  test::IoThreads threads;
  auto pool = http::UpstreamPool::create(threads.io, test::tcp_connector(threads.io, up.port(), calls), {},
                                         test::debug_logger());
  std::optional<test::Front> front;
  front.emplace(threads.io, policy, pool, http::Limits{}, quick_recovery());
  Conn client(threads.io, front->port());
  client.send("GET /api/v1/namespaces?watch=true&resourceVersion=5 HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  CHECK(head->status() == 200);
  bool clean = false;
  CHECK(read_watch_body(client, clean) == event("ADDED", 6) + event("MODIFIED", 7));
  CHECK(clean);
  {
    std::lock_guard lock(mu);
    REQUIRE(targets.size() == 2);
    CHECK(targets[1] == "/api/v1/namespaces?watch=true&resourceVersion=6");
  }
  // The upstream the watch resumed on is idle in the pool; the next request takes it.
  REQUIRE(test::wait_until([&] { return pool->stats().idle == 1; }, std::chrono::seconds(10)));
  client.send("GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
  auto next = test::read_message(client);
  REQUIRE(next);
  CHECK(next->body == "next");
  CHECK(up.connections() == 2);
  CHECK(pool->stats().reused == 1);
  front.reset();
  pool->close();
}
