// A policy's deadline on an upgraded connection (the agent sets the expiry of
// the token that opened an exec or port-forward).

#include <catch2/catch.hpp>

#include "clusterconnect/http/forward.hpp"
#include "http_test_support.hpp"
#include "test_env.hpp"

using namespace clusterconnect;
using test::Conn;

namespace {

const char* const upgrade_request =
    "GET /api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true HTTP/1.1\r\nHost: x\r\n"
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n";

// Answers 101, then echoes until the connection ends.
void echo_upgrade(Conn& c, int) {
  if (!test::read_message(c)) return;
  c.send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  for (;;) {
    if (!c.buffer.empty()) {
      c.send("echo:" + c.buffer);
      c.buffer.clear();
    }
    if (!c.fill()) break;
  }
  c.close();
}

struct Rig {
  std::shared_ptr<test::TestPolicy> policy;
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
  test::IoThreads threads;
  std::optional<test::Front> front;
  Rig(unsigned short upstream_port, std::chrono::system_clock::time_point deadline)
      : policy(std::make_shared<test::TestPolicy>([deadline](http::RequestHead&) {
          http::Decision d;
          d.pipe_deadline = deadline;
          d.pipe_deadline_reason = "token expired";
          return d;
        })) {
    front.emplace(threads.io, policy, test::tcp_connector(threads.io, upstream_port, calls), http::Limits{});
  }
  ~Rig() { front.reset(); }
  Conn client() { return Conn(threads.io, front->port()); }
};

std::string note(const http::ExchangeRecord& r, const std::string& name) {
  for (const auto& n : r.notes)
    if (n.name == name) return n.value;
  return {};
}

}  // namespace

TEST_CASE("upgrade: the connection is closed at the policy's deadline, with a record saying why", "[http]") {
  test::ScriptedUpstream up(echo_upgrade);
  Rig rig(up.port(), std::chrono::system_clock::now() - std::chrono::seconds(1));  // already passed
  auto client = rig.client();
  client.send(upgrade_request);
  auto head = test::read_head(client);
  REQUIRE(head);
  CHECK(head->status() == 101);
  // The pipe is closed instead of carrying bytes: nothing more arrives.
  client.send("ping");
  CHECK_FALSE(client.read_exactly(9));
  auto records = rig.policy->records(1);
  REQUIRE(records.size() == 1);
  CHECK(records[0].upgraded);
  CHECK(note(records[0], "closed") == "token expired");
}

TEST_CASE("upgrade: a deadline in the future leaves the connection working", "[http]") {
  test::ScriptedUpstream up(echo_upgrade);
  Rig rig(up.port(), std::chrono::system_clock::now() + std::chrono::hours(1));
  auto client = rig.client();
  client.send(upgrade_request);
  auto head = test::read_head(client);
  REQUIRE(head);
  CHECK(head->status() == 101);
  client.send("ping");
  auto echo = client.read_exactly(9);
  REQUIRE(echo);
  CHECK(*echo == "echo:ping");
  client.close();
  auto records = rig.policy->records(1);
  REQUIRE(records.size() == 1);
  CHECK(note(records[0], "closed").empty());
}
