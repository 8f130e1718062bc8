// Through a real relay process: the tunnel-ws module (the ws rendezvous form)
// as client and agent, streams end to end between them.

#include <catch2/catch.hpp>

#include <cstdlib>

#include "relay_fixture.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<TunnelListener> start_agent(ModuleHost& host, const RelayProcess& relay, Agent& agent, unsigned tunnels = 2) {
  ListenOptions o;
  o.endpoint = relay.endpoint();
  o.token = [&relay] { return relay.listen_token(); };
  o.tunnels = tunnels;
  o.backoff_initial = 50ms;
  o.backoff_max = 1000ms;
  relay.set_agent_identity(o);
  auto l = host.transport().listen(std::move(o), agent.handler());
  REQUIRE(l);
  REQUIRE(wait_until([&] { return l->status().tunnels_up == tunnels; }, 10s));
  REQUIRE(wait_until([&] { return relay.listeners() == tunnels; }, 10s));
  return l;
}

std::shared_ptr<TunnelClient> start_client(ModuleHost& host, const RelayProcess& relay) {
  auto c = host.transport().dial(relay.endpoint(), [&relay] { return relay.connect_token(); });
  REQUIRE(c);
  return c;
}

}  // namespace

TEST_CASE("one echo stream through the relay", "[relay][tunnel]") {
  RelayProcess relay;
  ModuleHost host;
  Agent agent;
  auto listener = start_agent(host, relay, agent);
  auto client = start_client(host, relay);
  auto o = open_stream(*client, {{"mode", "echo"}});
  REQUIRE_FALSE(o.ec);
  REQUIRE(o.stream);
  auto r = exchange(o.stream, 100000, 1, 20s);
  INFO(r.what << ": " << r.ec.message());
  REQUIRE_FALSE(r.ec);
  CHECK(r.received == 100000);
  CHECK(r.received_sha == r.sent_sha);
  listener->close();
  client->close();
}

TEST_CASE("1,000 concurrent echo streams keep every byte", "[relay][tunnel]") {
  RelayProcess relay;
  ModuleHost host;
  Agent agent;
  auto listener = start_agent(host, relay, agent);
  auto client = start_client(host, relay);
  constexpr unsigned streams = 1000;
  constexpr std::uint64_t size = 32 * 1024 + 17;
  std::mutex mutex;
  std::vector<ExchangeResult> results;
  std::vector<std::string> open_failures;
  std::promise<void> all_done;
  std::atomic<unsigned> finished{0};
  auto finish = [&] {
    if (++finished == streams) all_done.set_value();
  };
  for (unsigned i = 0; i < streams; ++i) {
    client->async_open(OpenRequest{{{"mode", "echo"}}}, [&, i](error_code ec, StreamPtr s, std::string reason) {
      if (ec) {
        {
          std::lock_guard lock(mutex);
          open_failures.push_back(reason);
        }
        return finish();
      }
      std::make_shared<Exchange>(std::move(s), size + i, i, [&](ExchangeResult r) {
        {
          std::lock_guard lock(mutex);
          results.push_back(std::move(r));
        }
        finish();
      })->start();
    });
  }
  REQUIRE(all_done.get_future().wait_for(120s) == std::future_status::ready);
  std::lock_guard lock(mutex);
  INFO((open_failures.empty() ? std::string() : open_failures.front()));
  REQUIRE(open_failures.empty());
  REQUIRE(results.size() == streams);
  unsigned good = 0;
  for (const auto& r : results)
    if (!r.ec && r.received == r.sent && r.received_sha == r.sent_sha) ++good;
  CHECK(good == streams);
  CHECK(agent.streams == streams);
}

TEST_CASE("a large transfer keeps its integrity", "[relay][tunnel][large]") {
  // 256 MiB each way by default: 1 GiB takes over a minute through two TLS
  // hops at -O0. CLUSTERCONNECT_LARGE_MIB raises it.
  std::uint64_t mib = 256;
  if (const char* e = std::getenv("CLUSTERCONNECT_LARGE_MIB")) mib = std::strtoull(e, nullptr, 10);
  RelayProcess relay;
  ModuleHost host;
  Agent agent;
  auto listener = start_agent(host, relay, agent, 1);
  auto client = start_client(host, relay);
  auto o = open_stream(*client);
  REQUIRE_FALSE(o.ec);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = exchange(o.stream, mib * 1024 * 1024, 42, 600s);
  const auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("echoed " << mib << " MiB in " << secs << " s");
  INFO(r.what << ": " << r.ec.message());
  REQUIRE_FALSE(r.ec);
  CHECK(r.received == mib * 1024 * 1024);
  CHECK(r.received_sha == r.sent_sha);
}

TEST_CASE("1 GiB upload keeps its integrity", "[relay][tunnel][large]") {
  // One direction: the agent hashes what it receives and answers the digest.
  std::uint64_t mib = 1024;
  if (const char* e = std::getenv("CLUSTERCONNECT_UPLOAD_MIB")) mib = std::strtoull(e, nullptr, 10);
  RelayProcess relay;
  ModuleHost host;
  Agent agent;
  auto listener = start_agent(host, relay, agent, 1);
  auto client = start_client(host, relay);
  auto o = open_stream(*client, {{"mode", "sha256"}});
  REQUIRE_FALSE(o.ec);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = exchange(o.stream, mib * 1024 * 1024, 77, 600s);  // ~50 s on an idle 2-core machine at -O0
  const auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("uploaded " << mib << " MiB in " << secs << " s");
  INFO(r.what << ": " << r.ec.message());
  REQUIRE_FALSE(r.ec);
  CHECK(r.sent == mib * 1024 * 1024);
  CHECK(r.received_head == r.sent_sha);
}

TEST_CASE("a stalled reader does not slow other streams", "[relay][tunnel]") {
  RelayProcess relay;
  ModuleHost host;
  Agent agent;
  auto listener = start_agent(host, relay, agent, 1);  // one tunnel: both streams share it
  auto client = start_client(host, relay);
  auto stalled = open_stream(*client, {{"mode", "source"}});
  REQUIRE_FALSE(stalled.ec);
  // Nobody reads `stalled`: the agent's writes must stop once the windows
  // are full (client stream window + relay's agent-side window + one relay
  // pump buffer + what is in flight), not grow without bound. At least the
  // agent-side stream window is always written.
  constexpr std::uint64_t stream_window = 1024 * 1024;  // what the client grants each stream (bulk_stream_window)
  constexpr std::uint64_t bound = stream_window + 512 * 1024;
  REQUIRE(wait_until([&] { return agent.source_bytes.load() >= stream_window; }, 60s));
  CHECK(agent.source_bytes.load() <= bound);
  auto o = open_stream(*client);
  REQUIRE_FALSE(o.ec);
  auto r = exchange(o.stream, 16 * 1024 * 1024, 3, 300s);
  REQUIRE_FALSE(r.ec);
  CHECK(r.received_sha == r.sent_sha);
  // 16 MiB later on the same session, the stalled stream is still held to its windows.
  CHECK(agent.source_bytes.load() <= bound);
  // The reset reaches the agent, whose writer (blocked by the window) lets go.
  stalled.stream->reset("test done");
  CHECK(wait_until([&] { return agent.live.load() == 0; }, 20s));
  client->close();
  listener->close();
}

TEST_CASE("no agent: the open fails at once with the relay's reason", "[relay][tunnel]") {
  RelayProcess relay;
  ModuleHost host;
  auto client = start_client(host, relay);
  auto o = open_stream(*client);
  REQUIRE(o.ec);
  CHECK(o.reason.find("no agent connected for cluster demo") != std::string::npos);
}

TEST_CASE("agent tunnel lost mid-transfer: the client stream is reset, a new tunnel serves the next stream",
          "[relay][tunnel]") {
  RelayProcess relay;
  ModuleHost host;
  Agent agent;
  auto first = start_agent(host, relay, agent, 1);
  auto client = start_client(host, relay);
  auto o = open_stream(*client);
  REQUIRE_FALSE(o.ec);
  auto p = std::make_shared<std::promise<ExchangeResult>>();
  std::make_shared<Exchange>(o.stream, std::uint64_t{1} << 40, 9, [p](ExchangeResult r) { p->set_value(r); })->start();
  REQUIRE(wait_until([&] { return agent.streams == 1u && agent.echoed_bytes > 0; }, 60s));
  first->close();  // the agent's tunnel goes away under a running transfer
  auto f = p->get_future();
  REQUIRE(f.wait_for(20s) == std::future_status::ready);
  auto r = f.get();
  CHECK(r.ec == asio::error::connection_reset);

  Agent agent2;
  auto second = start_agent(host, relay, agent2, 1);
  auto o2 = open_stream(*client);
  REQUIRE_FALSE(o2.ec);
  auto r2 = exchange(o2.stream, 1024 * 1024, 10, 30s);
  REQUIRE_FALSE(r2.ec);
  CHECK(r2.received_sha == r2.sent_sha);
  CHECK(agent2.streams == 1u);
}

TEST_CASE("relay restarted: agents reconnect", "[relay][tunnel]") {
  // Restarted at its port: one below the ephemeral range, which no
  // connection's source port takes while the relay is down.
  auto relay = std::make_unique<RelayProcess>(std::vector<std::string>{}, free_port());
  const unsigned short port = relay->port();
  ModuleHost host;
  Agent agent;
  auto listener = start_agent(host, *relay, agent, 2);
  relay->stop(SIGKILL);
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 0; }, 60s));
  relay->start(port);
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 2 && relay->listeners() == 2; }, 60s));
  auto client = start_client(host, *relay);
  auto o = open_stream(*client);
  REQUIRE_FALSE(o.ec);
  auto r = exchange(o.stream, 4096, 11, 20s);
  CHECK(r.received_sha == r.sent_sha);
}

TEST_CASE("bad, expired and wrong-path tokens are refused with the right status", "[relay][tunnel][auth]") {
  RelayProcess relay;
  ModuleHost host;
  auto refused = [&](RelayEndpoint ep, std::string token) {
    auto c = host.transport().dial(std::move(ep), [token] { return token; });
    auto o = open_stream(*c);
    CHECK(o.ec);
    return o.reason;
  };
  CHECK_THAT(refused(relay.endpoint(), ""), Catch::Contains("HTTP 401") && Catch::Contains("missing token"));
  CHECK_THAT(refused(relay.endpoint(), "SharedAccessSignature garbage"), Catch::Contains("HTTP 401"));
  CHECK_THAT(refused(relay.endpoint(), relay.token("connect", "wrong-secret")),
             Catch::Contains("HTTP 401") && Catch::Contains("signature"));
  CHECK_THAT(refused(relay.endpoint(), relay.token("nokey", "connect-secret")), Catch::Contains("HTTP 401"));
  CHECK_THAT(refused(relay.endpoint(), relay.token("connect", "connect-secret", demo_path, -10s)),
             Catch::Contains("HTTP 401") && Catch::Contains("token expired"));
  // A valid token for another cluster's path.
  CHECK_THAT(refused(relay.endpoint(), relay.token("connect", "connect-secret", other_path)), Catch::Contains("HTTP 403"));
  // The listen key may not connect.
  CHECK_THAT(refused(relay.endpoint(), relay.listen_token()), Catch::Contains("HTTP 403") && Catch::Contains("connect"));
  // Unknown hybrid connection.
  CHECK_THAT(refused(relay.endpoint("clusters/nope"), relay.connect_token()), Catch::Contains("HTTP 404"));
  // A token whose resource names :443 and wss:// still covers the path when the host matches.
  const std::string host443 = "wss://127.0.0.1:" + std::to_string(relay.port()) + "/$hc/" + demo_path;
  auto good = make_sas_token(host443, "connect", "connect-secret", std::chrono::system_clock::now() + 1h);
  auto c = host.transport().dial(relay.endpoint(), [good] { return good; });
  auto o = open_stream(*c);
  CHECK(o.reason.find("no agent connected") != std::string::npos);  // got past the handshake

  // The refusals are counted by reason in /metrics (checked when curl is there).
  if (run("command -v curl").status != 0) CLUSTERCONNECT_SKIP("curl is not installed (apt-get install curl): /metrics not checked");
  auto metrics = run("curl -sS --max-time 10 " + quote(relay.metrics_url()));
  REQUIRE(metrics.status == 0);
  CHECK_THAT(metrics.output, Catch::Contains("clusterconnect_relay_handshake_failures_total{reason=\"token_expired\"} 1") &&
                                 Catch::Contains("clusterconnect_relay_handshake_failures_total{reason=\"bad_signature\"} 1") &&
                                 Catch::Contains("clusterconnect_relay_handshake_failures_total{reason=\"wrong_path\"} 1") &&
                                 Catch::Contains("clusterconnect_relay_handshake_failures_total{reason=\"no_right\"} 1") &&
                                 Catch::Contains("clusterconnect_relay_handshake_failures_total{reason=\"not_found\"} 1") &&
                                 Catch::Contains("clusterconnect_relay_open_failures_total{reason=\"no_agent\"} 1"));
  auto health = run("curl -sS --max-time 10 --cacert " + quote(relay.ca_file()) + " https://" + relay.host() + "/healthz");
  CHECK(health.output == "ok\n");
  auto other = run("curl -sS --max-time 10 --cacert " + quote(relay.ca_file()) + " https://" + relay.host() + "/nothing-here");
  CHECK_THAT(other.output, Catch::Contains("\"code\":\"NotFound\"") && Catch::Contains("/nothing-here"));
}

TEST_CASE("short-lived tokens: agents renew their control channels, clients redial, no stream fails", "[relay][tunnel][auth]") {
  RelayProcess relay;
  ModuleHost host;
  Agent agent;
  ListenOptions lo;
  lo.endpoint = relay.endpoint();
  lo.token = [&relay] { return relay.token("listen", "listen-secret", demo_path, 3s); };
  lo.tunnels = 2;
  lo.backoff_initial = 50ms;
  lo.backoff_max = 1000ms;
  relay.set_agent_identity(lo);
  auto listener = host.transport().listen(std::move(lo), agent.handler());
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 2 && relay.listeners() == 2; }, 10s));
  auto client = host.transport().dial(relay.endpoint(), [&relay] { return relay.token("connect", "connect-secret", demo_path, 3s); });
  // The tokens are checked by the relay process on the wall clock: the loop
  // runs past two expiries of the first tokens; every attempt must succeed.
  unsigned ok = 0, attempts = 0;
  const auto until = std::chrono::steady_clock::now() + 8s;
  std::vector<std::string> failures;
  while (std::chrono::steady_clock::now() < until) {
    ++attempts;
    auto o = open_stream(*client);
    if (o.ec) {
      failures.push_back(o.reason);
    } else {
      auto r = exchange(o.stream, 1000, ok, 10s);
      if (!r.ec && r.received_sha == r.sent_sha) ++ok;
      else failures.push_back(r.what + ": " + r.ec.message());
    }
    std::this_thread::sleep_for(250ms);
  }
  INFO((failures.empty() ? std::string() : failures.front()));
  CHECK(failures.empty());
  CHECK(attempts > 0);
  CHECK(ok == attempts);
  CHECK(listener->status().tunnels_up == 2);
}
