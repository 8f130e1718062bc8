// What the forwarding engine holds while a watch is quiet, by the live heap
// bytes of this program (its own binary: it replaces the global operators).
#include <malloc.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>

#include <catch2/catch.hpp>

#include "clusterconnect/http/forward.hpp"
#include "http_test_support.hpp"

namespace {
std::atomic<long> g_live{0};
long live_bytes() { return g_live.load(); }
}  // namespace

void* operator new(std::size_t n) {
  void* p = std::malloc(n == 0 ? 1 : n);
  if (!p) throw std::bad_alloc();
  g_live += static_cast<long>(malloc_usable_size(p));
  return p;
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p) g_live += static_cast<long>(malloc_usable_size(p));
  return p;
}
void* operator new[](std::size_t n, const std::nothrow_t& tag) noexcept { return operator new(n, tag); }
void operator delete(void* p) noexcept {
  if (p) g_live -= static_cast<long>(malloc_usable_size(p));
  std::free(p);
}
void operator delete[](void* p) noexcept { operator delete(p); }
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
void operator delete[](void* p, std::size_t) noexcept { operator delete(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { operator delete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { operator delete(p); }

using namespace clusterconnect;
using test::Conn;

TEST_CASE("a quiet watch holds none of its response head and its record stays whole", "[http]") {
  // A response head of 48 KB: held as parsed fields for the life of the
  // watch, it would dwarf everything else the engine keeps.
  std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n";
  for (int i = 0; i < 48; ++i) head += "X-Filler-" + std::to_string(i) + ": " + std::string(1000, 'f') + "\r\n";
  head += "\r\n";
  const std::string event = "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"resourceVersion\":\"1\"}}}\n";
  char size[16];
  std::snprintf(size, sizeof size, "%zx\r\n", event.size());
  const std::string event_chunk = size + event + "\r\n";
  test::Latch release;
  test::ScriptedUpstream up([&](Conn& c, int) {
    if (!test::read_message(c)) return;
    c.send(head);
    c.send(event_chunk);
    if (!release.wait(std::chrono::seconds(30))) return;
    c.send("0\r\n\r\n");
  });
  auto policy = std::make_shared<test::TestPolicy>();
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto upstream_reads = std::make_shared<test::ReadCounters>();
  test::IoThreads threads;
  std::optional<test::Front> front;
  front.emplace(threads.io, policy, test::tcp_connector(threads.io, up.port(), calls, upstream_reads));

  const long before = live_bytes();
  Conn client(threads.io, front->port());
  client.send("GET /api/v1/configmaps?watch=true HTTP/1.1\r\nHost: x\r\n\r\n");
  {
    auto got = test::read_head(client);
    REQUIRE(got);
    REQUIRE(got->chunked);
    bool failed = false;
    CHECK(test::read_chunk(client, failed) == std::optional<std::string>(event));
  }
  // What the client read is gone from this program's heap too.
  REQUIRE(client.buffer.empty());
  std::string().swap(client.buffer);
  // Quiet: both sides wait with reads of a few bytes.
  REQUIRE(test::wait_until([&] {
    const auto upstream = upstream_reads->last_asked.load();
    const auto client_side = front->inbound_reads->last_asked.load();
    return upstream > 0 && upstream <= 64 && client_side > 0 && client_side <= 64;
  }));
  // The engine, both streams and their sockets: a few KB, not the 48 KB head
  // (by now the head is written and the engine waits; the watch is alive
  // until `release`, so what it holds cannot have gone with it).
  long held = 0;
  CHECK(test::wait_until(
      [&] {
        held = live_bytes() - before;
        return held < 20 * 1024;
      },
      std::chrono::seconds(3)));
  INFO("held while quiet: " << held << " bytes");

  release.set();
  bool failed = false;
  CHECK_FALSE(test::read_chunk(client, failed));
  CHECK_FALSE(failed);
  auto records = policy->records(1);
  REQUIRE(records.size() == 1);
  CHECK(records[0].method == "GET");
  CHECK(records[0].target == "/api/v1/configmaps?watch=true");
  CHECK(records[0].status == 200);
  CHECK(records[0].bytes_out == event.size());
  front.reset();
}
