#include <unistd.h>

#include <catch2/catch.hpp>

#include "clusterconnect/certificates.hpp"
#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/tls.hpp"
#include "clusterconnect/tls_context.hpp"
#include "http_test_support.hpp"
#include "test_env.hpp"

using namespace clusterconnect;
using test::Conn;
using test::Message;

namespace {

std::string chunk(const std::string& data) {
  char size[16];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  return size + data + "\r\n";
}

std::string ok(const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
         body;
}

// Serves requests on one upstream connection, answering each with its target.
void echo_targets(Conn& c, int) {
  while (auto req = test::read_message(c)) {
    auto sp = req->start_line.find(' ');
    c.send(ok(req->start_line.substr(sp + 1, req->start_line.rfind(' ') - sp - 1)));
  }
}

struct Rig {
  std::shared_ptr<test::TestPolicy> policy;
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
  std::shared_ptr<test::ReadCounters> upstream_reads = std::make_shared<test::ReadCounters>();
  test::IoThreads threads;
  std::optional<test::Front> front;

  Rig(unsigned short upstream_port, test::TestPolicy::Fn fn = {}, http::Limits limits = {})
      : policy(std::make_shared<test::TestPolicy>(std::move(fn))) {
    front.emplace(threads.io, policy, test::tcp_connector(threads.io, upstream_port, calls, upstream_reads), limits);
  }
  Rig(http::UpstreamConnector connector, test::TestPolicy::Fn fn = {}, http::Limits limits = {})
      : policy(std::make_shared<test::TestPolicy>(std::move(fn))) {
    front.emplace(threads.io, policy, std::move(connector), limits);
  }
  ~Rig() { front.reset(); }
  Conn client() { return Conn(threads.io, front->port()); }
};

}  // namespace

TEST_CASE("policy rewrites reach the upstream and hop-by-hop headers do not", "[http]") {
  std::mutex mu;
  std::optional<Message> seen;
  test::ScriptedUpstream up([&](Conn& c, int) {
    auto req = test::read_message(c);
    if (!req) return;
    {
      std::lock_guard lock(mu);
      seen = req;
    }
    c.send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Up-Secret\r\n"
           "X-Up-Secret: s\r\nKeep-Alive: timeout=5\r\nX-Up: 1\r\nContent-Length: 2\r\n\r\nok");
    test::read_message(c);
  });
  Rig rig(up.port(), [](http::RequestHead& h) {
    http::Decision d;
    CHECK(h.find("authorization"));
    CHECK_FALSE(h.find("X-Hop"));  // named by Connection: never shown to the policy
    h.remove("Authorization");
    CHECK(h.remove_prefix("impersonate-") == 1);
    h.set("Impersonate-User", "alice");
    h.add("Impersonate-Group", "g1");
    h.add("Impersonate-Group", "g2");
    d.subject = std::make_shared<http::Subject>(http::Subject{"alice", {"g1", "g2"}, {}});
    return d;
  });

  auto client = rig.client();
  client.send("GET /api/v1/pods?limit=1 HTTP/1.1\r\nHost: cluster\r\nAuthorization: Bearer secret\r\n"
              "Impersonate-User: mallory\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 300\r\n"
              "TE: trailers\r\nProxy-Connection: keep-alive\r\nX-Keep: yes\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "ok");
  CHECK(res->header("x-up"));
  CHECK_FALSE(res->header("x-up-secret"));
  CHECK_FALSE(res->header("keep-alive"));

  std::lock_guard lock(mu);
  REQUIRE(seen);
  CHECK(seen->start_line == "GET /api/v1/pods?limit=1 HTTP/1.1");
  CHECK_FALSE(seen->header("authorization"));
  REQUIRE(seen->header("impersonate-user"));
  CHECK(*seen->header("impersonate-user") == "alice");
  CHECK(seen->count("impersonate-user") == 1);
  CHECK(seen->count("impersonate-group") == 2);
  CHECK_FALSE(seen->header("x-hop"));
  CHECK_FALSE(seen->header("keep-alive"));
  CHECK_FALSE(seen->header("te"));
  CHECK_FALSE(seen->header("proxy-connection"));
  CHECK_FALSE(seen->header("connection"));
  CHECK(*seen->header("x-keep") == "yes");
  CHECK(*seen->header("host") == "cluster");

  auto records = rig.policy->records(1);
  REQUIRE(records.size() == 1);
  REQUIRE(records[0].subject);
  CHECK(records[0].subject->user == "alice");
  CHECK(records[0].subject->groups == std::vector<std::string>{"g1", "g2"});
  CHECK(records[0].status == 200);
  CHECK(records[0].method == "GET");
  CHECK(records[0].target == "/api/v1/pods?limit=1");
  CHECK(records[0].bytes_out == 2);
}

TEST_CASE("a policy reply that names no content type is sent as application/json", "[http]") {
  test::ScriptedUpstream up(echo_targets);
  Rig rig(up.port(), [](http::RequestHead&) {
    http::Decision d;
    d.forward = false;
    d.reply.status = 403;
    d.reply.body = "{}";
    return d;
  });
  auto client = rig.client();
  client.send("GET /api HTTP/1.1\r\nHost: x\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 403);
  REQUIRE(res->header("content-type"));
  CHECK(*res->header("content-type") == "application/json");
  CHECK(res->body == "{}");
  CHECK(*rig.calls == 0);
}

TEST_CASE("a policy reply is sent instead of forwarding, as a Kubernetes Status", "[http]") {
  test::ScriptedUpstream up(echo_targets);
  Rig rig(up.port(), [](http::RequestHead& h) {
    http::Decision d;
    if (h.target == "/allowed") return d;
    d.forward = false;
    d.reply = http::status_reply(401, "Unauthorized", "the token has expired");
    d.reply.headers.push_back({"WWW-Authenticate", "Bearer"});
    return d;
  });
  auto client = rig.client();
  client.send("GET /api HTTP/1.1\r\nHost: x\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 401);
  CHECK(*res->header("content-type") == "application/json");
  CHECK(*res->header("www-authenticate") == "Bearer");
  CHECK(res->body ==
        R"({"apiVersion":"v1","code":401,"kind":"Status","message":"the token has expired","metadata":{},"reason":"Unauthorized","status":"Failure"})");
  CHECK(*rig.calls == 0);

  // The connection stays usable after a reply to a request without a body.
  client.send("GET /allowed HTTP/1.1\r\nHost: x\r\n\r\n");
  res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "/allowed");

  // A rejected request whose body was not read ends the connection.
  client.send("POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n");
  res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 401);
  CHECK(*res->header("connection") == "close");
}

TEST_CASE("keep-alive reuses one upstream connection and pipelined requests answer in order", "[http]") {
  test::ScriptedUpstream up(echo_targets);
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n");
  for (const char* expected : {"/a", "/b", "/c"}) {
    auto res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->status() == 200);
    CHECK(res->body == expected);
    CHECK_FALSE(res->header("connection"));
  }
  client.send("GET /d HTTP/1.1\r\nHost: x\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->body == "/d");
  CHECK(*rig.calls == 1);
  CHECK(up.connections() == 1);

  // Connection: close from the client: answered, then closed.
  client.send("GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->body == "/e");
  CHECK(*res->header("connection") == "close");
  CHECK(client.at_eof());
}

TEST_CASE("an upstream that closed a kept-alive connection is reopened", "[http]") {
  test::ScriptedUpstream up([](Conn& c, int) {
    if (auto req = test::read_message(c)) c.send(ok("first"));
    c.close();  // without announcing it
  });
  Rig rig(up.port());
  auto client = rig.client();
  for (int i = 0; i < 3; ++i) {
    client.send("GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    auto res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->status() == 200);
    CHECK(res->body == "first");
  }
  CHECK(up.connections() == 3);

  // A request with a body cannot be retried after the fact: the engine must
  // notice the close while the connection is idle and open a new one first.
  // Once its read on the third connection has seen the close, it has noticed.
  REQUIRE(test::wait_until([&] { return rig.upstream_reads->ends.load() >= 3; }));
  client.send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "first");
  CHECK(up.connections() == 4);
}

TEST_CASE("a small response goes out as one write, not in 512-byte pieces", "[http]") {
  const std::string body(8000, 'j');
  test::ScriptedUpstream up([&](Conn& c, int) {
    while (test::read_message(c)) c.send(ok(body));
  });
  Rig rig(up.port());
  auto client = rig.client();
  for (int i = 0; i < 3; ++i) {
    int before = *rig.front->inbound_writes;
    client.send("GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n");
    auto res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->body == body);
    // Head and body together; a second write only if TCP split the upstream's send.
    CHECK(*rig.front->inbound_writes - before <= 2);
  }
}

TEST_CASE("chunked responses are relayed chunk by chunk as they arrive", "[http]") {
  test::Latch got_first, got_second;
  std::atomic<bool> upstream_saw_first{false}, upstream_saw_second{false};
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(chunk("{\"type\":\"ADDED\"}\n"));
    upstream_saw_first = got_first.wait();
    c.send(chunk("{\"type\":\"MODIFIED\"}\n"));
    upstream_saw_second = got_second.wait();
    c.send("0\r\n\r\n");
    if (auto next = test::read_message(c)) c.send(ok("next"));
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  CHECK(head->status() == 200);
  REQUIRE(head->chunked);
  bool failed = false;
  auto first = test::read_chunk(client, failed);
  REQUIRE(first);
  CHECK(*first == "{\"type\":\"ADDED\"}\n");
  got_first.set();
  auto second = test::read_chunk(client, failed);
  REQUIRE(second);
  CHECK(*second == "{\"type\":\"MODIFIED\"}\n");
  // A request pipelined while the response streams waits its turn. Both
  // requests are with the engine, on one connection, before the first
  // response ends (its last chunk waits for got_second).
  const std::string first_request = "GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string again = "GET /again HTTP/1.1\r\nHost: x\r\n\r\n";
  client.send(again);
  REQUIRE(test::wait_until([&] { return rig.front->inbound_reads->bytes.load() == first_request.size() + again.size(); }));
  CHECK(rig.policy->records(0).empty());  // the first exchange is not complete
  got_second.set();
  auto end = test::read_chunk(client, failed);
  CHECK_FALSE(end);
  CHECK_FALSE(failed);
  CHECK(upstream_saw_first);
  CHECK(upstream_saw_second);

  auto next = test::read_message(client);
  REQUIRE(next);
  CHECK(next->body == "next");
  auto records = rig.policy->records(1);
  CHECK(records[0].bytes_out == std::string("{\"type\":\"ADDED\"}\n{\"type\":\"MODIFIED\"}\n").size());
}

TEST_CASE("a response of unknown length waits on a small read and grows while reads come full", "[http]") {
  test::Latch idle_seen;
  const std::string event = "{\"type\":\"ADDED\"}\n";
  const std::string bulk(256 * 1024, 'b');
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(chunk(event));
    if (!idle_seen.wait()) return;
    for (int i = 0; i < 16; ++i) c.send(chunk(bulk));
    c.send("0\r\n\r\n");
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  REQUIRE(head->chunked);
  bool failed = false;
  auto first = test::read_chunk(client, failed);
  REQUIRE(first);
  CHECK(*first == event);
  // The watch is quiet now: the read waiting for its next event offers 1 KiB.
  REQUIRE(test::wait_until([&] {
    const auto asked = rig.upstream_reads->last_asked.load();
    return asked > 0 && asked <= 1024;
  }));
  idle_seen.set();
  std::size_t got = 0;
  while (auto c = test::read_chunk(client, failed)) got += c->size();
  CHECK_FALSE(failed);
  CHECK(got == 16 * bulk.size());
  // A transfer grows the reads to the bulk size.
  CHECK(rig.upstream_reads->largest_asked.load() >= 64 * 1024);
}

TEST_CASE("a client leaving during a watch releases the upstream connection", "[http]") {
  test::Latch streaming;
  std::atomic<bool> upstream_released{false};
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk("line 1\n"));
    streaming.set();
    // A quiet `logs -f`: nothing more to send, only the close to notice.
    c.set_timeout(10);
    bool more = c.fill();
    upstream_released = !more && c.last_error != asio::error::would_block && c.last_error != asio::error::try_again;
  });
  Rig rig(up.port());
  {
    auto client = rig.client();
    client.send("GET /api/v1/namespaces/default/pods/p/log?follow=true HTTP/1.1\r\nHost: x\r\n\r\n");
    auto head = test::read_head(client);
    REQUIRE(head);
    REQUIRE(streaming.wait());
    bool failed = false;
    CHECK(test::read_chunk(client, failed) == std::optional<std::string>("line 1\n"));
    auto start = std::chrono::steady_clock::now();
    client.close();
    auto records = rig.policy->records(1);
    REQUIRE(records.size() == 1);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(3));
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (!upstream_released && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(upstream_released);
}

TEST_CASE("request bodies stream to the upstream before they are complete", "[http]") {
  const std::size_t total = 5 * 1024 * 1024;
  std::atomic<std::size_t> received{0};
  std::string upstream_framing;
  test::ScriptedUpstream up([&](Conn& c, int) {
    auto head = test::read_head(c);
    if (!head) return;
    upstream_framing = head->header("content-length") ? *head->header("content-length") : "none";
    std::size_t want = std::stoul(*head->header("content-length"));
    std::size_t got = std::min(c.buffer.size(), want);
    c.buffer.erase(0, got);
    received = got;
    while (got < want && c.fill()) {
      std::size_t take = std::min(c.buffer.size(), want - got);
      c.buffer.erase(0, take);
      got += take;
      received = got;
    }
    c.send(ok("got " + std::to_string(got)));
  });
  http::Limits limits;
  limits.body_limit = 8 * 1024 * 1024;
  Rig rig(up.port(), {}, limits);
  auto client = rig.client();
  client.send("POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\n"
              "Content-Type: application/vnd.kubernetes.protobuf\r\nContent-Length: " +
              std::to_string(total) + "\r\n\r\n");
  std::string part(1024 * 1024, 'p');
  client.send(part);
  // The engine must pass bytes on before the body is complete.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (received < 512 * 1024 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(received >= 512 * 1024);
  for (int i = 1; i < 5; ++i) client.send(part);
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->body == "got " + std::to_string(total));
  CHECK(upstream_framing == std::to_string(total));
  auto records = rig.policy->records(1);
  CHECK(records[0].bytes_in == total);
}

TEST_CASE("chunked request bodies keep chunked framing", "[http]") {
  std::mutex mu;
  std::optional<Message> seen;
  test::ScriptedUpstream up([&](Conn& c, int) {
    auto req = test::read_message(c);
    if (!req) return;
    {
      std::lock_guard lock(mu);
      seen = req;
    }
    c.send(ok("done"));
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk("hello ") + chunk("world") +
              "0\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->body == "done");
  std::lock_guard lock(mu);
  REQUIRE(seen);
  CHECK(seen->chunked);
  CHECK_FALSE(seen->header("content-length"));
  CHECK(seen->body == "hello world");
}

TEST_CASE("request bodies over the limit get 413", "[http]") {
  std::atomic<std::size_t> upstream_bytes{0};
  test::ScriptedUpstream up([&](Conn& c, int) {
    while (c.fill()) upstream_bytes = c.buffer.size();
  });
  http::Limits limits;
  limits.body_limit = 1024 * 1024;
  Rig rig(up.port(), {}, limits);

  SECTION("declared by Content-Length") {
    auto client = rig.client();
    client.send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n");
    auto res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->status() == 413);
    CHECK_THAT(res->body, Catch::Contains("1048576"));
    CHECK(*rig.calls == 0);
  }
  SECTION("discovered while streaming a chunked body") {
    auto client = rig.client();
    client.send("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    std::string piece(256 * 1024, 'c');
    for (int i = 0; i < 5; ++i) client.send(chunk(piece));
    auto res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->status() == 413);
    CHECK(*res->header("connection") == "close");
    CHECK(upstream_bytes < 1100 * 1024);
  }
}

TEST_CASE("upgrade: 101, then bytes both ways and half-close", "[http]") {
  std::mutex mu;
  std::optional<Message> seen;
  test::ScriptedUpstream up([&](Conn& c, int) {
    auto req = test::read_message(c);
    if (!req) return;
    {
      std::lock_guard lock(mu);
      seen = req;
    }
    c.send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\nhello-from-upstream");
    // Echo until the client half-closes, then answer and close.
    for (;;) {
      if (!c.buffer.empty()) {
        c.send("echo:" + c.buffer);
        c.buffer.clear();
      }
      if (!c.fill()) break;
    }
    if (c.last_error == asio::error::eof) c.send("bye");
    c.close();
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET /api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true HTTP/1.1\r\nHost: x\r\n"
              "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  CHECK(head->status() == 101);
  REQUIRE(head->header("upgrade"));
  CHECK(*head->header("upgrade") == "websocket");
  CHECK(*head->header("connection") == "Upgrade");
  CHECK(*head->header("sec-websocket-protocol") == "v5.channel.k8s.io");
  auto early = client.read_exactly(std::string("hello-from-upstream").size());
  REQUIRE(early);
  CHECK(*early == "hello-from-upstream");
  client.send("ping");
  auto echo = client.read_exactly(9);
  REQUIRE(echo);
  CHECK(*echo == "echo:ping");
  client.shutdown_send();
  auto bye = client.read_exactly(3);
  REQUIRE(bye);
  CHECK(*bye == "bye");
  CHECK(client.at_eof());

  std::lock_guard lock(mu);
  REQUIRE(seen);
  CHECK(*seen->header("upgrade") == "websocket");
  CHECK(*seen->header("connection") == "Upgrade");
  CHECK(*seen->header("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ==");
  auto records = rig.policy->records(1);
  REQUIRE(records.size() == 1);
  CHECK(records[0].upgraded);
  CHECK(records[0].status == 101);
  CHECK(records[0].bytes_in == 4);
}

TEST_CASE("SPDY upgrade requests keep their Upgrade header, other upgrades are dropped", "[http]") {
  std::mutex mu;
  std::vector<Message> seen;
  test::ScriptedUpstream up([&](Conn& c, int) {
    while (auto req = test::read_message(c)) {
      {
        std::lock_guard lock(mu);
        seen.push_back(*req);
      }
      c.send(ok("no"));
    }
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("POST /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
              "X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n");
  REQUIRE(test::read_message(client));
  client.send("GET /h2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
              "HTTP2-Settings: AAA\r\n\r\n");
  REQUIRE(test::read_message(client));
  std::lock_guard lock(mu);
  REQUIRE(seen.size() == 2);
  CHECK(*seen[0].header("upgrade") == "SPDY/3.1");
  CHECK(*seen[0].header("connection") == "Upgrade");
  CHECK(*seen[0].header("x-stream-protocol-version") == "v4.channel.k8s.io");
  CHECK_FALSE(seen[1].header("upgrade"));
  CHECK_FALSE(seen[1].header("http2-settings"));
  CHECK_FALSE(seen[1].header("connection"));
}

TEST_CASE("100-continue is relayed while the request body waits", "[http]") {
  test::ScriptedUpstream up([](Conn& c, int) {
    auto head = test::read_head(c);
    if (!head) return;
    c.send("HTTP/1.1 100 Continue\r\n\r\n");
    auto body = c.read_exactly(5);
    c.send(ok(body ? "body " + *body : "no body"));
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
  auto interim = test::read_head(client);
  REQUIRE(interim);
  CHECK(interim->status() == 100);
  client.send("hello");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "body hello");
}

TEST_CASE("HEAD and 204/304 responses carry no body and keep the connection", "[http]") {
  test::ScriptedUpstream up([](Conn& c, int) {
    while (auto req = test::read_message(c)) {
      if (req->start_line.rfind("HEAD", 0) == 0)
        c.send("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: application/json\r\n\r\n");
      else if (req->start_line.find("/nocontent") != std::string::npos)
        c.send("HTTP/1.1 204 No Content\r\n\r\n");
      else
        c.send("HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n");
    }
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n");
  auto res = test::read_message(client, true);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(*res->header("content-length") == "1234");
  client.send("DELETE /nocontent HTTP/1.1\r\nHost: x\r\n\r\n");
  res = test::read_message(client, true);
  REQUIRE(res);
  CHECK(res->status() == 204);
  client.send("GET /cached HTTP/1.1\r\nHost: x\r\n\r\n");
  res = test::read_message(client, true);
  REQUIRE(res);
  CHECK(res->status() == 304);
  CHECK(client.buffer.empty());
  CHECK(up.connections() == 1);
}

TEST_CASE("close-delimited responses reach the client and close the connection", "[http]") {
  test::ScriptedUpstream up([](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it");
    c.close();
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK(res->body == "all of it");
  CHECK(*res->header("connection") == "close");
}

TEST_CASE("oversized request headers get 431 and a close", "[http]") {
  test::ScriptedUpstream up(echo_targets);
  http::Limits limits;
  limits.header_limit = 1024;
  Rig rig(up.port(), {}, limits);
  auto client = rig.client();
  client.send("GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'b') + "\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 431);
  CHECK(*res->header("connection") == "close");
  CHECK_THAT(res->body, Catch::Contains("\"kind\":\"Status\""));
  CHECK(client.at_eof());
  CHECK(*rig.calls == 0);
}

TEST_CASE("malformed requests get 400 and a close", "[http]") {
  test::ScriptedUpstream up(echo_targets);
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 400);
  CHECK(client.at_eof());
  CHECK(*rig.calls == 0);
}

TEST_CASE("an unreachable upstream is a 502 carrying the connector's reason", "[http]") {
  SECTION("the connector's own reason") {
    Rig rig([](http::ConnectHandler done) {
      done(asio::error::host_unreachable, nullptr, "no agent connected for cluster demo");
    });
    auto client = rig.client();
    client.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n");
    auto res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->status() == 502);
    CHECK(res->body == "no agent connected for cluster demo");
    CHECK_THAT(*res->header("content-type"), Catch::StartsWith("text/plain"));
    // The inbound connection survives for the next attempt.
    client.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n");
    res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->status() == 502);
  }
  SECTION("connection refused") {
    unsigned short port;
    {
      asio::io_context io;
      asio::ip::tcp::acceptor a(io, {asio::ip::make_address("127.0.0.1"), 0});
      port = a.local_endpoint().port();
    }
    Rig rig(port);
    auto client = rig.client();
    client.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n");
    auto res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->status() == 502);
    CHECK_THAT(res->body, Catch::Contains("cannot connect to the test upstream"));
  }
}

namespace {

// What a client gets for a GET of `target` when the upstream reads the
// request, sends `answer` (maybe nothing) and closes.
std::optional<test::Message> answer_through_engine(const std::string& target, std::string answer) {
  test::ScriptedUpstream up([answer](Conn& c, int) {
    test::read_message(c);
    if (!answer.empty()) c.send(answer);
    c.close();
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n");
  return test::read_message(client);
}

}  // namespace

TEST_CASE("an upstream that dies before answering is a 502", "[http]") {
  auto res = answer_through_engine("/x", "");
  REQUIRE(res);
  CHECK(res->status() == 502);
  CHECK_THAT(res->body, Catch::Contains("before responding"));
}

TEST_CASE("an upstream status under 100 is a 502, not a status line no client reads", "[http]") {
  // The parser takes any three digits; "021" is 21, which "HTTP/1.1 21"
  // would carry on (found by forward_fuzz).
  auto res = answer_through_engine("/x", "HTTP/1.1 021 Created\r\nContent-Length: 2\r\n\r\n{}");
  REQUIRE(res);
  CHECK(res->status() == 502);
  CHECK_THAT(res->body, Catch::Contains("status 21"));
}

TEST_CASE("a body that breaks before any of the response reached the client is a 502", "[http]") {
  // The head goes out with the first body bytes; a malformed chunk before
  // then left the client with nothing, and a resumed watch with a body
  // without its head (found by forward_fuzz).
  auto res = answer_through_engine(
      "/api/v1/configmaps",
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n6f\xf3\xf5garbage");
  REQUIRE(res);
  CHECK(res->status() == 502);
  CHECK_THAT(res->body, Catch::Contains("broke before any of it reached the client"));
}

TEST_CASE("idle connections are closed after the idle timeout", "[http]") {
  test::ScriptedUpstream up(echo_targets);
  http::Limits limits;
  limits.idle_timeout = std::chrono::seconds(1);
  limits.header_timeout = std::chrono::seconds(1);
  Rig rig(up.port(), {}, limits);
  // The engine closes the connection (eof, waited for generously), and not
  // before the timeout: the timer starts after the request was sent, so at
  // least 1 s passes between the send and the close.
  auto client = rig.client();
  client.set_timeout(120);
  auto start = std::chrono::steady_clock::now();
  client.send("GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(test::read_message(client));
  CHECK(client.at_eof());
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::seconds(1));

  // A request head that never completes is cut off by the header timeout.
  auto slow = rig.client();
  slow.set_timeout(120);
  start = std::chrono::steady_clock::now();
  slow.send("GET /x HTTP/1.1\r\nHost: x\r\n");
  CHECK(slow.at_eof());
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::seconds(1));
}

TEST_CASE("a connection that never sends is closed after the first-byte timeout, a kept-alive one is not",
          "[http]") {
  test::ScriptedUpstream up(echo_targets);
  http::Limits limits;
  limits.first_byte_timeout = std::chrono::seconds(1);
  Rig rig(up.port(), {}, limits);
  // A kept-alive connection that has served a request waits the idle timeout
  // (300 s here) for the next one.
  auto kept = rig.client();
  kept.set_timeout(120);
  kept.send("GET /one HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(test::read_message(kept));
  // Opened after it and silent: closed once the first-byte timeout passes.
  auto silent = rig.client();
  silent.set_timeout(120);
  CHECK(silent.at_eof());
  // The kept-alive connection outlived it and still serves.
  kept.send("GET /two HTTP/1.1\r\nHost: x\r\n\r\n");
  auto res = test::read_message(kept);
  REQUIRE(res);
  CHECK(res->status() == 200);
}

TEST_CASE("two engines joined by TLS: requests, watches and upgrades pass through", "[http][tls]") {
  // client -> engine 1 (plain) -> TLS -> engine 2 -> scripted upstream:
  // the proxy and agent topology with a TLS hop in the middle.
  test::ScriptedUpstream up([](Conn& c, int) {
    while (auto req = test::read_message(c)) {
      if (req->header("upgrade")) {
        c.send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        while (c.fill()) {
          c.send(c.buffer);
          c.buffer.clear();
        }
        return;
      }
      if (req->start_line.find("watch") != std::string::npos) {
        c.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk("e1") + chunk("e2") + "0\r\n\r\n");
        continue;
      }
      c.send(ok("v1.32"));
    }
  });
  test::IoThreads threads;
  auto ca = tls::create_ca("test CA", 1);
  REQUIRE(ca.ok());
  auto leaf = tls::issue_server_cert(*ca, {"localhost"}, {"127.0.0.1"}, 1);
  REQUIRE(leaf.ok());
  auto server_ctx = tls::make_server_context_pem(leaf->cert, leaf->key);
  REQUIRE(server_ctx.ok());
  test::TempDir dir;
  REQUIRE(tls::write_private_file(dir.path() / "ca.crt", ca->cert).ok());
  auto client_ctx = tls::make_client_context({(dir.path() / "ca.crt").string(), false, {}, {}});
  REQUIRE(client_ctx.ok());

  auto agent_policy = std::make_shared<test::TestPolicy>([](http::RequestHead& h) {
    h.set("Impersonate-User", "alice");
    return http::Decision{};
  });
  auto up_calls = std::make_shared<std::atomic<int>>(0);
  auto& io = threads.io;
  auto agent_connector = test::tcp_connector(io, up.port(), up_calls);
  auto agent = tls::TlsServer::listen(io, "127.0.0.1", 0, *server_ctx, [&io, agent_policy, agent_connector](StreamPtr s) {
    http::serve(io, std::move(s), agent_policy, agent_connector, {}, nullptr);
  }, nullptr);
  REQUIRE(agent.ok());
  auto agent_port = std::to_string((*agent)->port());
  auto proxy_policy = std::make_shared<test::TestPolicy>();
  {
    test::Front proxy(io, proxy_policy, [&io, agent_port, ctx = *client_ctx](http::ConnectHandler done) {
      tls::async_connect(io, "localhost", agent_port, ctx, std::move(done));
    });
    Conn client(io, proxy.port());
    client.send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n");
    auto res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->body == "v1.32");
    client.send("GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    res = test::read_message(client);
    REQUIRE(res);
    CHECK(res->chunks == std::vector<std::string>{"e1", "e2"});
    client.send("GET /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    auto head = test::read_head(client);
    REQUIRE(head);
    CHECK(head->status() == 101);
    client.send("through two engines");
    auto echo = client.read_exactly(19);
    REQUIRE(echo);
    CHECK(*echo == "through two engines");
    client.shutdown_send();
    CHECK(client.at_eof());
  }
  CHECK(*up_calls == 1);
  (*agent)->close();
}

TEST_CASE("kubectl (Go crypto/tls) accepts the issued certificates and talks through the engine", "[http][tls][kubectl]") {
  if (::access("/usr/bin/kubectl", X_OK) != 0)
    CLUSTERCONNECT_SKIP("kubectl is not installed at /usr/bin/kubectl (kubectl >= 1.30; scripts/setup.sh says how)");
  std::atomic<int> requests{0};
  test::ScriptedUpstream up([&](Conn& c, int) {
    while (auto req = test::read_message(c)) {
      ++requests;
      std::string body = R"({"major":"1","minor":"32","gitVersion":"v1.32.0-clusterconnect-test"})";
      c.send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n\r\n" + body);
    }
  });
  test::IoThreads threads;
  test::TempDir dir;
  auto ca = tls::load_or_create_ca(dir.path() / "ca", "connectedk8s local CA");
  REQUIRE(ca.ok());
  auto leaf = tls::issue_server_cert(*ca, {"localhost"}, {"127.0.0.1"}, 1);
  REQUIRE(leaf.ok());
  auto ctx = tls::make_server_context_pem(leaf->cert, leaf->key);
  REQUIRE(ctx.ok());
  auto policy = std::make_shared<test::TestPolicy>();
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto& io = threads.io;
  auto connector = test::tcp_connector(io, up.port(), calls);
  auto server = tls::TlsServer::listen(io, "127.0.0.1", 0, *ctx, [&io, policy, connector](StreamPtr s) {
    http::serve(io, std::move(s), policy, connector, {}, nullptr);
  }, nullptr);
  REQUIRE(server.ok());
  const std::string ca_file = (dir.path() / "ca" / "ca.crt").string();
  for (const char* host : {"localhost", "127.0.0.1"}) {
    INFO(host);
    auto r = test::run("/usr/bin/kubectl --kubeconfig=/dev/null --token=local-test --request-timeout=10s --server=https://" +
                       std::string(host) + ":" + std::to_string((*server)->port()) +
                       " --certificate-authority=" + test::quote(ca_file) + " get --raw /version </dev/null");
    INFO(r.output);
    CHECK(r.status == 0);
    CHECK_THAT(r.output, Catch::Contains("v1.32.0-clusterconnect-test"));
  }
  // A connector failure reaches kubectl as the error message.
  auto unreachable = tls::TlsServer::listen(io, "127.0.0.1", 0, *ctx, [&io, policy](StreamPtr s) {
    http::serve(io, std::move(s), policy, [](http::ConnectHandler done) {
      done(asio::error::host_unreachable, nullptr, "no agent connected for cluster demo");
    }, {}, nullptr);
  }, nullptr);
  REQUIRE(unreachable.ok());
  {
    auto r = test::run("/usr/bin/kubectl --kubeconfig=/dev/null --token=local-test --request-timeout=10s "
                       "--server=https://localhost:" + std::to_string((*unreachable)->port()) +
                       " --certificate-authority=" + test::quote(ca_file) + " get pods </dev/null");
    INFO(r.output);
    CHECK(r.status != 0);
    CHECK_THAT(r.output, Catch::Contains("an error on the server (\"no agent connected for cluster demo\")"));
  }
  (*unreachable)->close();

  // And a CA it was not given is refused by Go as well.
  auto other = tls::create_ca("other CA", 1);
  REQUIRE(other.ok());
  REQUIRE(tls::write_private_file(dir.path() / "other.crt", other->cert).ok());
  auto r = test::run("/usr/bin/kubectl --kubeconfig=/dev/null --token=local-test --request-timeout=10s --server=https://localhost:" +
                     std::to_string((*server)->port()) + " --certificate-authority=" +
                     test::quote((dir.path() / "other.crt").string()) + " get --raw /version </dev/null");
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK_THAT(r.output, Catch::Contains("certificate"));
  (*server)->close();
}

TEST_CASE("an HTTP/1.0 client gets a chunked response as a close-delimited body", "[http]") {
  test::ScriptedUpstream up([](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk("old ") + chunk("client") + "0\r\n\r\n");
    test::read_message(c);
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET /x HTTP/1.0\r\nHost: x\r\n\r\n");
  auto res = test::read_message(client);
  REQUIRE(res);
  CHECK(res->status() == 200);
  CHECK_FALSE(res->chunked);
  CHECK(res->body == "old client");
  CHECK(*res->header("connection") == "close");
}

TEST_CASE("upgrade: the upstream half-closes first and the client can still send", "[http]") {
  std::string upstream_got;
  error_code upstream_end;
  test::Latch upstream_done;
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n\r\nstatus:done");
    c.shutdown_send();
    while (c.fill()) {
    }
    upstream_got = c.buffer;
    upstream_end = c.last_error;
    upstream_done.set();
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("POST /exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  CHECK(head->status() == 101);
  auto data = client.read_exactly(11);
  REQUIRE(data);
  CHECK(*data == "status:done");
  CHECK(client.at_eof());
  client.send("late stdin");
  client.shutdown_send();
  auto records = rig.policy->records(1);
  REQUIRE(records.size() == 1);
  CHECK(records[0].upgraded);
  REQUIRE(upstream_done.wait());
  CHECK(upstream_got == "late stdin");
  CHECK(upstream_end == asio::error::eof);
}

TEST_CASE("a policy may decide later, on another thread", "[http]") {
  test::ScriptedUpstream up(echo_targets);
  struct SlowPolicy : http::ForwardPolicy {
    std::vector<std::thread> threads;
    void join() {
      for (auto& t : threads)
        if (t.joinable()) t.join();
    }
    ~SlowPolicy() override { join(); }
    void on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) override {
      threads.emplace_back([&head, done = std::move(done)]() mutable {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        head.target += "-checked";
        done(http::Decision{});
      });
    }
  };
  auto policy = std::make_shared<SlowPolicy>();
  test::IoThreads threads;
  auto calls = std::make_shared<std::atomic<int>>(0);
  {
    test::Front front(threads.io, policy, test::tcp_connector(threads.io, up.port(), calls));
    Conn client(threads.io, front.port());
    client.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    auto a = test::read_message(client);
    auto b = test::read_message(client);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->body == "/a-checked");
    CHECK(b->body == "/b-checked");
  }
  // A policy thread may still hold its decision callback, and with it the
  // connection: it lets go while the I/O threads still run.
  policy->join();
}

TEST_CASE("a quiet watch waits with reads of a few bytes and no body buffer", "[http]") {
  test::Latch quiet_seen, more_sent;
  const std::string first = "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"resourceVersion\":\"1\"}}}\n";
  const std::string second = "{\"type\":\"MODIFIED\",\"object\":{\"data\":\"" + std::string(3000, 'm') + "\"}}\n";
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(chunk(first));
    if (!quiet_seen.wait()) return;
    // The next event in pieces: its chunk header alone, then the rest.
    const std::string next = chunk(second);
    c.send(next.substr(0, 3));
    c.send(next.substr(3));
    if (!more_sent.wait()) return;
    c.send("0\r\n\r\n");
  });
  Rig rig(up.port());
  auto client = rig.client();
  client.send("GET /api/v1/configmaps?watch=true HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = test::read_head(client);
  REQUIRE(head);
  REQUIRE(head->chunked);
  bool failed = false;
  CHECK(test::read_chunk(client, failed) == std::optional<std::string>(first));
  // Between events the engine's reads on both sides only wait for bytes: a
  // read buffer of the size of an event would be held for the whole watch.
  REQUIRE(test::wait_until([&] {
    const auto upstream = rig.upstream_reads->last_asked.load();
    const auto client_side = rig.front->inbound_reads->last_asked.load();
    return upstream > 0 && upstream <= 64 && client_side > 0 && client_side <= 64;
  }));
  quiet_seen.set();
  std::string got;
  while (got.size() < second.size()) {
    auto c = test::read_chunk(client, failed);
    if (!c) break;
    got += *c;
  }
  CHECK(got == second);
  more_sent.set();
  CHECK_FALSE(test::read_chunk(client, failed));
  CHECK_FALSE(failed);
  auto records = rig.policy->records(1);
  REQUIRE(records.size() == 1);
  CHECK(records[0].status == 200);
  CHECK(records[0].bytes_out == first.size() + second.size());
}
