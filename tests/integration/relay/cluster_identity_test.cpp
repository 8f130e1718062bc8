// Streams reach only the agent of the cluster they were authorised for:
// clusters are known by their full identity, never by name alone.

#include <catch2/catch.hpp>

#include <mutex>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/ssl.hpp>

#include "clusterconnect/certificates.hpp"
#include "clusterconnect/tls_context.hpp"
#include "protocol/ws_channel.hpp"
#include "relay_config.hpp"
#include "relay_fixture.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;
using namespace std::chrono_literals;

namespace {

const std::string& subscription = prod_subscription;

// An agent that records the OPEN metadata of every stream it gets.
struct RecordingAgent {
  std::mutex mutex;
  std::vector<std::map<std::string, std::string>> opened;
  AcceptHandler handler() {
    return [this](StreamPtr s, const std::map<std::string, std::string>& md) {
      {
        std::lock_guard lock(mutex);
        opened.push_back(md);
      }
      std::make_shared<AgentStream>(std::move(s), nullptr)->echo();
    };
  }
  std::size_t count() {
    std::lock_guard lock(mutex);
    return opened.size();
  }
};

std::shared_ptr<TunnelListener> listen_as(ModuleHost& host, RelayProcess& relay, RecordingAgent& agent,
                                          const std::string& path, const std::string& secret) {
  ListenOptions o;
  o.endpoint = relay.endpoint(path);
  o.token = [&relay, path, secret] { return relay.token("listen", secret, path); };
  o.tunnels = 2;
  o.backoff_initial = 50ms;
  o.backoff_max = 1000ms;
  auto l = host.transport().listen(std::move(o), agent.handler());
  REQUIRE(l);
  REQUIRE(wait_until([&] { return l->status().tunnels_up == 2; }, 20s));
  REQUIRE(wait_until([&] { return relay.agent_tunnels(path) == 2; }, 20s));
  return l;
}

std::shared_ptr<TunnelClient> dial_as(ModuleHost& host, RelayProcess& relay, const std::string& path,
                                      const std::string& secret) {
  auto c = host.transport().dial(relay.endpoint(path), [&relay, path, secret] { return relay.token("connect", secret, path); });
  REQUIRE(c);
  return c;
}

void echo_once(TunnelClient& client, std::map<std::string, std::string> md = {}) {
  auto o = open_stream(client, std::move(md));
  INFO(o.reason);
  REQUIRE_FALSE(o.ec);
  auto r = exchange(o.stream, 4096, 3, 20s);
  INFO(r.what << ": " << r.ec.message());
  REQUIRE_FALSE(r.ec);
  CHECK(r.received_sha == r.sent_sha);
}

}  // namespace

TEST_CASE("two clusters with one name: each one's users reach only their own agent", "[relay][tunnel][security]") {
  auto relay = same_named_clusters();
  ModuleHost host;
  RecordingAgent agent_a, agent_b;

  SECTION("with only the other cluster's agent connected, the open is refused, never routed to it") {
    auto listener_b = listen_as(host, relay, agent_b, path_b, "b-listen");
    auto client_a = dial_as(host, relay, path_a, "a-connect");
    auto o = open_stream(*client_a);
    CHECK(o.ec);
    CHECK_THAT(o.reason, Catch::Contains("no agent connected"));
    CHECK_THAT(o.reason, Catch::Contains("team-a"));
    CHECK(agent_b.count() == 0);
    client_a->close();
    listener_b->close();
  }

  SECTION("with both connected, every stream lands on its own cluster's agent") {
    auto listener_a = listen_as(host, relay, agent_a, path_a, "a-listen");
    auto listener_b = listen_as(host, relay, agent_b, path_b, "b-listen");
    auto client_a = dial_as(host, relay, path_a, "a-connect");
    auto client_b = dial_as(host, relay, path_b, "b-connect");
    for (int i = 0; i < 5; ++i) echo_once(*client_a);
    for (int i = 0; i < 3; ++i) echo_once(*client_b);
    // A client cannot steer its stream by naming another cluster in OPEN.
    echo_once(*client_a, {{"hybrid_connection", path_b}, {"cluster", "prod"}});
    CHECK(agent_a.count() == 6);
    CHECK(agent_b.count() == 3);
    std::lock_guard lock(agent_a.mutex);
    for (const auto& md : agent_a.opened) {
      CHECK(md.at("hybrid_connection") == path_a);
      CHECK_THAT(md.at("cluster"), Catch::Contains("/resourceGroups/team-a/"));
    }
    client_a->close();
    client_b->close();
    listener_a->close();
    listener_b->close();
  }

  SECTION("one cluster's agents do not count against the other's tunnel limit") {
    // The limit is two tunnels per cluster: A's two leave B its own two.
    auto listener_a = listen_as(host, relay, agent_a, path_a, "a-listen");
    auto listener_b = listen_as(host, relay, agent_b, path_b, "b-listen");
    CHECK(listener_a->status().tunnels_up == 2);
    CHECK(listener_b->status().tunnels_up == 2);
    listener_a->close();
    listener_b->close();
  }
}

TEST_CASE("a client holds at most its fair share of a busy cluster's streams", "[relay][tunnel][security]") {
  // Two agent tunnels of 4 streams: 8 in all, busy from 6. Two clients: a
  // share of 4 each.
  auto relay = same_named_clusters({{"max_tunnels_per_cluster", 2}, {"max_streams_per_tunnel", 4}});
  ModuleHost host;
  RecordingAgent agent;
  auto listener = listen_as(host, relay, agent, path_a, "a-listen");
  auto greedy = dial_as(host, relay, path_a, "a-connect");
  auto polite = dial_as(host, relay, path_a, "a-connect");
  for (auto* c : {greedy.get(), polite.get()}) {  // both client tunnels are up
    auto up = std::make_shared<std::promise<error_code>>();
    c->async_connect([up](error_code ec) { up->set_value(ec); });
    auto f = up->get_future();
    REQUIRE(f.wait_for(20s) == std::future_status::ready);
    REQUIRE_FALSE(f.get());
  }
  std::vector<StreamPtr> held;
  std::string refusal;
  for (int i = 0; i < 8; ++i) {
    auto o = open_stream(*greedy);
    if (o.ec) {
      refusal = o.reason;
      break;
    }
    held.push_back(std::move(o.stream));
  }
  INFO(refusal);
  CHECK(held.size() == 6);
  CHECK_THAT(refusal, Catch::Contains("more than its share of 4"));
  // The other client still gets streams while the greedy one holds its six.
  auto a = open_stream(*polite);
  INFO(a.reason);
  REQUIRE_FALSE(a.ec);
  echo_once(*polite);
  CHECK_THAT(run("curl -sS --max-time 20 " + quote(relay.metrics_url())).output,
             Catch::Contains("clusterconnect_relay_open_failures_total{reason=\"fair_share\"} 1\n"));
  for (auto& s : held) s->reset("test over");
  greedy->close();
  polite->close();
  listener->close();
}

TEST_CASE("one client tunnel holds at most max_streams_per_client streams", "[relay][tunnel][security]") {
  auto relay = same_named_clusters({{"max_streams_per_client", 3}});
  ModuleHost host;
  RecordingAgent agent;
  auto listener = listen_as(host, relay, agent, path_a, "a-listen");
  auto client = dial_as(host, relay, path_a, "a-connect");
  std::vector<StreamPtr> held;
  for (int i = 0; i < 3; ++i) {
    auto o = open_stream(*client);
    INFO(o.reason);
    REQUIRE_FALSE(o.ec);
    held.push_back(std::move(o.stream));
  }
  auto fourth = open_stream(*client);
  CHECK(fourth.ec);
  CHECK_THAT(fourth.reason, Catch::Contains("too many streams"));
  held.front()->reset("done");
  held.erase(held.begin());
  // Once one ends, the client may open again.
  REQUIRE(wait_until(
      [&] {
        auto o = open_stream(*client);
        if (o.ec) return false;
        o.stream->reset("test over");
        return true;
      },
      20s));
  for (auto& s : held) s->reset("test over");
  client->close();
  listener->close();
  // Both tunnels end, with the streams they hold, before the host stops.
  CHECK(wait_until([&] { return relay.tunnels(path_a, "agent") + relay.tunnels(path_a, "client") == 0; }, 20s));
}

TEST_CASE("a registry that names one cluster twice is refused", "[relay][config][security]") {
  nlohmann::json entry{{"subscription", subscription},
                       {"resource_group", "team-a"},
                       {"name", "prod"},
                       {"hybrid_connection", path_a},
                       {"keys", nlohmann::json::array()}};
  auto twin = entry;
  twin["hybrid_connection"] = path_b;
  twin["resource_group"] = "TEAM-A";  // ARM names match case-insensitively
  nlohmann::json config{{"clusters", {entry, twin}}};
  try {
    relay::parse_relay_config(config, ".");
    FAIL("a duplicate cluster identity was accepted");
  } catch (const std::runtime_error& e) {
    CHECK_THAT(e.what(), Catch::Contains("clusters[1]") && Catch::Contains("registered twice"));
  }
}

namespace {

// A stand-in relay that hands the agent a stream meant for another cluster,
// as a buggy or hostile relay would.
class MisroutingRelay {
 public:
  explicit MisroutingRelay(asio::io_context& io) : io_(io), acceptor_(io, {asio::ip::make_address("127.0.0.1"), 0}) {
    auto ca = tls::create_ca("misrouting test CA", 1);
    REQUIRE(ca);
    auto server = tls::issue_server_cert(*ca, {"localhost"}, {"127.0.0.1"}, 1);
    REQUIRE(server);
    ca_file_ = dir_.path() / "ca.crt";
    std::ofstream(ca_file_) << ca->cert;
    auto ctx = tls::make_server_context_pem(server->cert, server->key);
    REQUIRE(ctx);
    tls_ = *ctx;
    accept();
  }
  std::string url(const std::string& path) const {
    return "wss://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port()) + "/$hc/" + path;
  }
  std::string ca_file() const { return ca_file_.string(); }
  // Completes with the agent's answer to an OPEN naming `path`.
  std::future<std::pair<error_code, std::string>> open_for(const std::string& path) {
    auto p = std::make_shared<std::promise<std::pair<error_code, std::string>>>();
    auto f = p->get_future();
    asio::post(acceptor_.get_executor(), [this, p, path] {
      if (!session_) return p->set_value({asio::error::not_connected, "no agent tunnel"});
      session_->async_open({{"hybrid_connection", path}},
                           [p](error_code ec, tunnel::TunnelStreamPtr, std::string reason) { p->set_value({ec, reason}); });
    });
    return f;
  }
  bool connected() const { return connected_; }

 private:
  void accept() {
    // The session runs on a strand: the socket is accepted onto one.
    acceptor_.async_accept(asio::make_strand(io_), [this](error_code ec, asio::ip::tcp::socket socket) {
      if (ec) return;
      auto ws = std::make_shared<tunnel::WsStream>(boost::beast::tcp_stream(std::move(socket)), *tls_);
      ws->next_layer().async_handshake(asio::ssl::stream_base::server, [this, ws](error_code e) {
        if (e) return;
        ws->set_option(boost::beast::websocket::stream_base::decorator([](boost::beast::websocket::response_type& res) {
          res.set(boost::beast::http::field::sec_websocket_protocol, tunnel::subprotocol);
        }));
        ws->async_accept([this, ws](error_code e2) {
          if (e2) return;
          tunnel::configure_established(*ws);
          tunnel::SessionOptions o;
          o.role = tunnel::Role::acceptor;
          o.name = "misrouting relay";
          auto executor = ws->get_executor();  // before the stream moves into its channel
          session_ = tunnel::Session::create(executor, std::make_unique<tunnel::WsChannel>(std::move(*ws)), o,
                                             spdlog::default_logger());
          session_->start();
          connected_ = true;
        });
      });
      // One agent tunnel is all this test needs.
    });
  }

  TempDir dir_;
  asio::io_context& io_;
  asio::ip::tcp::acceptor acceptor_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::filesystem::path ca_file_;
  std::shared_ptr<tunnel::Session> session_;
  std::atomic<bool> connected_{false};
};

}  // namespace

TEST_CASE("the agent refuses a stream the relay meant for another cluster", "[tunnel][security]") {
  ModuleHost host;
  MisroutingRelay relay(host.io());
  RecordingAgent agent;
  ListenOptions o;
  o.endpoint = RelayEndpoint{relay.url(path_a), relay.ca_file(), false, {}};
  o.token = [] { return make_sas_token("http://127.0.0.1/" + path_a, "listen", "x", std::chrono::system_clock::now() + 1h); };
  o.tunnels = 1;
  o.backoff_initial = 50ms;
  o.backoff_max = 1000ms;
  auto listener = host.transport().listen(std::move(o), agent.handler());
  REQUIRE(listener);
  REQUIRE(wait_until([&] { return relay.connected() && listener->status().tunnels_up == 1; }, 20s));

  auto refused = relay.open_for(path_b).get();
  CHECK(refused.first);
  CHECK_THAT(refused.second, Catch::Contains("another cluster") && Catch::Contains(path_b));
  auto unnamed = relay.open_for("").get();
  CHECK(unnamed.first);
  // The path matches case-insensitively, as the relay routes it.
  auto accepted = relay.open_for("CLUSTERS/" + subscription + "/TEAM-A/prod").get();
  CHECK_FALSE(accepted.first);
  // The agent answers OPEN before it hands the stream on: the relay may see
  // the answer a moment before the stream reaches the handler.
  CHECK(wait_until([&] { return agent.count() == 1; }, 20s));
  listener->close();
}
