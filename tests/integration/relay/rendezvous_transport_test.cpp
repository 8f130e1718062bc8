// Both rendezvous transports (tls: spliced TCP legs; ws: Hybrid Connections
// WebSockets) through a real relay: the agent's control channels are
// announced each connect, the proxy's session with the agent runs TLS and the
// mux end to end, and the proxy talks only to an agent whose key the relay's
// registry pins. Every case runs in both forms.

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clusterconnect/certificates.hpp"
#include "protocol/frame.hpp"
#include "protocol/session.hpp"
#include "relay_fixture.hpp"
#include "rendezvous_legs.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;
using namespace std::chrono_literals;

namespace {

// One cluster, demo, whose registry pins `pins`; a rendezvous port.
struct PinnedRelay {
  AgentKey agent_key{"demo agent"};
  RelayProcess relay;
  explicit PinnedRelay(std::vector<std::string> pins = {}, unsigned short port = 0)
      : relay(config(pins.empty() ? std::vector<std::string>{agent_key.pin} : pins),
              {{"listen.key", "listen-secret\n"},
               {"connect.key", "connect-secret\n"},
               {"agent.crt", agent_key.pem.cert},
               {"agent.key", agent_key.pem.key}},
              {"--rendezvous-listen", "127.0.0.1:0"}, port) {}

  static nlohmann::json config(const std::vector<std::string>& pins) {
    return {{"clusters",
             {{{"subscription", "00000000-0000-0000-0000-000000000000"},
               {"resource_group", "sandbox"},
               {"name", "demo"},
               {"hybrid_connection", demo_path},
               {"agent_key_pins", pins},
               {"keys",
                {{{"name", "listen"}, {"rights", {"listen"}}, {"secret_file", "listen.key"}},
                 {{"name", "connect"}, {"rights", {"connect"}}, {"secret_file", "connect.key"}}}}}}}};
  }

  std::shared_ptr<TunnelListener> listen(ModuleHost& host, Agent& agent, unsigned channels = 2,
                                         const std::string& cert = "agent.crt", const std::string& key = "agent.key") {
    ListenOptions o;
    o.endpoint = relay.endpoint();
    o.token = [this] { return relay.listen_token(); };
    o.tunnels = channels;
    o.backoff_initial = 50ms;
    o.backoff_max = 500ms;
    o.identity_cert_file = (relay.dir() / cert).string();
    o.identity_key_file = (relay.dir() / key).string();
    auto l = host.transport().listen(std::move(o), agent.handler());
    REQUIRE(l);
    REQUIRE(wait_until([&] { return l->status().tunnels_up == channels && listeners() == channels; }, 20s));
    return l;
  }

  // Rendezvous the relay paired, in the form's own counter.
  unsigned paired(const std::string& form) const {
    return relay.gauge(form == "ws" ? "clusterconnect_relay_ws_rendezvous_total{outcome=\"paired\"}"
                                    : "clusterconnect_relay_rendezvous_total{outcome=\"paired\"}");
  }

  unsigned listeners() const { return relay.gauge("clusterconnect_relay_listeners{hybrid_connection=\"" + demo_path + "\"}"); }

  std::shared_ptr<TunnelClient> dial(ModuleHost& host, std::vector<std::string> pins) {
    auto endpoint = relay.endpoint();
    endpoint.agent_key_pins = std::move(pins);
    return host.transport().dial(endpoint, [this] { return relay.connect_token(); });
  }
};

// A case in one form with the agent listening: one module host per side, the
// relay, the agent and its listener, torn down in reverse.
struct ListeningAgent {
  std::string form;
  ModuleHost agent_host{form}, client_host{form};
  PinnedRelay r;
  Agent agent;
  std::shared_ptr<TunnelListener> listener = r.listen(agent_host, agent);
  explicit ListeningAgent(std::string f, bool record_agent_log = false, unsigned short relay_port = 0)
      : form(std::move(f)), agent_host(form, record_agent_log), r({}, relay_port) {}
};

// A client pinned to the agent's key, after one stream has gone through it.
std::shared_ptr<TunnelClient> dial_and_use(PinnedRelay& r, ModuleHost& host) {
  auto client = r.dial(host, {r.agent_key.pin});
  auto first = open_stream(*client);
  REQUIRE_FALSE(first.ec);
  CHECK_FALSE(exchange(first.stream, 1000, 1, 20s).ec);
  return client;
}

// Opens until the agent answers again (after a restart), then one exchange.
ExchangeResult open_once_back(TunnelClient& client) {
  OpenResult again;
  REQUIRE(wait_until([&] {
    again = open_stream(client);
    return !again.ec;
  }, 20s));
  return exchange(again.stream, 100000, 2, 20s);
}

}  // namespace

TEST_CASE("rendezvous transport: streams run end to end between proxy and agent through the relay's rendezvous",
          "[relay][transport]") {
  ListeningAgent rig(GENERATE(as<std::string>{}, "tls", "ws"));
  auto& [form, agent_host, client_host, r, agent, listener] = rig;
  auto client = r.dial(client_host, {r.agent_key.pin});
  REQUIRE(client);
  // Streams share one session: one rendezvous for all of them.
  for (std::uint64_t i = 0; i < 8; ++i) {
    auto o = open_stream(*client);
    INFO(o.reason);
    REQUIRE_FALSE(o.ec);
    auto x = exchange(o.stream, 256 * 1024 + i, i, 30s);
    INFO(x.what << ": " << x.ec.message());
    CHECK_FALSE(x.ec);
    CHECK(x.received_sha == x.sent_sha);
  }
  CHECK(agent.streams == 8);
  CHECK(r.paired(form) == 1);
  client->close();
  listener->close();
}

TEST_CASE("rendezvous transport: an agent whose key is not the pinned one gets nothing", "[relay][transport][security]") {
  ListeningAgent rig(GENERATE(as<std::string>{}, "tls", "ws"));
  auto& [form, agent_host, client_host, r, agent, listener] = rig;
  AgentKey registered("the registered agent");
  auto client = r.dial(client_host, {registered.pin});
  auto o = open_stream(*client);
  CHECK(o.ec == asio::error::access_denied);
  CHECK_THAT(o.reason, Catch::Contains(demo_path) && Catch::Contains("sha256:" + r.agent_key.pin) &&
                           Catch::Contains("sha256:" + registered.pin));
  CHECK(agent.streams == 0);
  client->close();
  listener->close();
}

TEST_CASE("rendezvous transport: with no agent key registered the proxy opens nothing", "[relay][transport][security]") {
  const std::string form = GENERATE(as<std::string>{}, "tls", "ws");
  ModuleHost client_host(form);
  PinnedRelay r;
  auto client = r.dial(client_host, {});
  auto o = open_stream(*client);
  CHECK(o.ec == asio::error::access_denied);
  CHECK_THAT(o.reason, Catch::Contains("pins no agent key") && Catch::Contains(demo_path));
  CHECK(r.paired(form) == 0);
}

TEST_CASE("rendezvous transport: with no agent listening the connect is refused at once", "[relay][transport]") {
  const std::string form = GENERATE(as<std::string>{}, "tls", "ws");
  ModuleHost client_host(form);
  PinnedRelay r;
  auto client = r.dial(client_host, {r.agent_key.pin});
  auto o = open_stream(*client);
  CHECK(o.ec);
  CHECK_THAT(o.reason, Catch::Contains("no agent connected for cluster demo"));
}

TEST_CASE("rendezvous transport: an agent restarted mid-session is reached again by the next open", "[relay][transport]") {
  ListeningAgent rig(GENERATE(as<std::string>{}, "tls", "ws"));
  auto& [form, agent_host, client_host, r, agent, listener] = rig;
  auto client = dial_and_use(r, client_host);
  listener->close();
  REQUIRE(wait_until([&] { return r.listeners() == 0; }, 20s));
  Agent agent2;
  auto listener2 = r.listen(agent_host, agent2);
  // The old session ended with the agent; the next open makes a new one.
  auto x = open_once_back(*client);
  CHECK_FALSE(x.ec);
  CHECK(x.received_sha == x.sent_sha);
  CHECK(agent2.streams == 1);
  client->close();
  listener2->close();
}

TEST_CASE("rendezvous transport: an agent without its key files does not start", "[relay][transport]") {
  const std::string form = GENERATE(as<std::string>{}, "tls", "ws");
  ModuleHost agent_host(form);
  PinnedRelay r;
  Agent agent;
  ListenOptions o;
  o.endpoint = r.relay.endpoint();
  o.token = [&r] { return r.relay.listen_token(); };
  o.identity_cert_file = (r.relay.dir() / "agent.crt").string();
  o.identity_key_file = (r.relay.dir() / "missing.key").string();
  CHECK_FALSE(agent_host.transport().listen(std::move(o), agent.handler()));
}

TEST_CASE("rendezvous transport: two clusters called prod in different resource groups each reach only their own agent",
          "[relay][transport][security]") {
  const std::string form = GENERATE(as<std::string>{}, "tls", "ws");
  AgentKey key_a("team-a prod agent"), key_b("team-b prod agent");
  auto cluster = [](const std::string& group, const std::string& path, const std::string& prefix, const std::string& pin) {
    return nlohmann::json{{"subscription", prod_subscription},
                          {"resource_group", group},
                          {"name", "prod"},
                          {"hybrid_connection", path},
                          {"agent_key_pins", {pin}},
                          {"keys",
                           {{{"name", "listen"}, {"rights", {"listen"}}, {"secret_file", prefix + "-listen.key"}},
                            {{"name", "connect"}, {"rights", {"connect"}}, {"secret_file", prefix + "-connect.key"}}}}};
  };
  RelayProcess relay({{"clusters", {cluster("team-a", path_a, "a", key_a.pin), cluster("team-b", path_b, "b", key_b.pin)}}},
                     {{"a-listen.key", "a-listen\n"},
                      {"a-connect.key", "a-connect\n"},
                      {"b-listen.key", "b-listen\n"},
                      {"b-connect.key", "b-connect\n"},
                      {"a.crt", key_a.pem.cert},
                      {"a.key", key_a.pem.key},
                      {"b.crt", key_b.pem.cert},
                      {"b.key", key_b.pem.key}},
                     {"--rendezvous-listen", "127.0.0.1:0"});
  ModuleHost agents(form), clients(form);
  Agent agent_a, agent_b;
  auto listen = [&](Agent& agent, const std::string& path, const std::string& prefix) {
    ListenOptions o;
    o.endpoint = relay.endpoint(path);
    o.token = [&relay, path, prefix] { return relay.token("listen", prefix + "-listen", path); };
    o.tunnels = 1;
    o.identity_cert_file = (relay.dir() / (prefix + ".crt")).string();
    o.identity_key_file = (relay.dir() / (prefix + ".key")).string();
    auto l = agents.transport().listen(std::move(o), agent.handler());
    REQUIRE(l);
    REQUIRE(wait_until([&] {
      return relay.gauge("clusterconnect_relay_listeners{hybrid_connection=\"" + path + "\"}") == 1;
    }, 20s));
    return l;
  };
  auto listener_a = listen(agent_a, path_a, "a");
  auto listener_b = listen(agent_b, path_b, "b");
  auto dial = [&](const std::string& path, const std::string& prefix, const std::string& pin) {
    auto endpoint = relay.endpoint(path);
    endpoint.agent_key_pins = {pin};
    return clients.transport().dial(endpoint, [&relay, path, prefix] { return relay.token("connect", prefix + "-connect", path); });
  };
  auto client_a = dial(path_a, "a", key_a.pin);
  auto client_b = dial(path_b, "b", key_b.pin);
  for (int i = 0; i < 3; ++i) {
    auto o = open_stream(*client_a);
    REQUIRE_FALSE(o.ec);
    CHECK_FALSE(exchange(o.stream, 5000, static_cast<std::uint64_t>(i), 20s).ec);
  }
  auto o = open_stream(*client_b);
  REQUIRE_FALSE(o.ec);
  CHECK_FALSE(exchange(o.stream, 5000, 9, 20s).ec);
  CHECK(agent_a.streams == 3);
  CHECK(agent_b.streams == 1);
  // A team-b connect token names team-b's path: it cannot reach team-a.
  auto crossed = relay.endpoint(path_a);
  crossed.agent_key_pins = {key_a.pin};
  auto client_x = clients.transport().dial(crossed, [&relay] { return relay.token("connect", "b-connect", path_b); });
  auto x = open_stream(*client_x);
  CHECK(x.ec);
  CHECK(agent_a.streams == 3);
  for (auto* c : {&client_a, &client_b, &client_x}) (*c)->close();
  listener_a->close();
  listener_b->close();
}

TEST_CASE("rendezvous transport: after a relay restart the agent comes back and new opens work without a new client",
          "[relay][transport]") {
  // Restarted at its port: one below the ephemeral range, which no
  // connection's source port takes while the relay is down.
  ListeningAgent rig(GENERATE(as<std::string>{}, "tls", "ws"), false, free_port());
  auto& [form, agent_host, client_host, r, agent, listener] = rig;
  auto client = dial_and_use(r, client_host);
  const unsigned short port = r.relay.port();
  r.relay.stop(SIGKILL);
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 0; }, 60s));
  r.relay.start(port);
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 2 && r.listeners() == 2; }, 60s));
  auto x = open_once_back(*client);
  CHECK_FALSE(x.ec);
  CHECK(x.received_sha == x.sent_sha);
  client->close();
  listener->close();
}

TEST_CASE("rendezvous transport: a client whose session holds its maximum of streams makes another rendezvous",
          "[relay][transport]") {
  ListeningAgent rig(GENERATE(as<std::string>{}, "tls", "ws"));
  auto& [form, agent_host, client_host, r, agent, listener] = rig;
  auto client = r.dial(client_host, {r.agent_key.pin});
  const std::size_t per_session = tunnel::SessionOptions{}.max_streams;
  std::vector<StreamPtr> held;
  for (std::size_t i = 0; i < per_session + 4; ++i) {
    auto o = open_stream(*client);
    INFO("stream " << i << ": " << o.reason);
    REQUIRE_FALSE(o.ec);
    held.push_back(std::move(o.stream));
  }
  CHECK(r.paired(form) == 2);
  auto x = exchange(held.back(), 10000, 3, 30s);
  CHECK_FALSE(x.ec);
  CHECK(x.received_sha == x.sent_sha);
  held.clear();
  client->close();
  listener->close();
}

namespace {

// Microsoft's hyco-ws as the listener, playing the agent's part in Node
// (tests/fixtures/hyco/hyco_ws_echo_agent.js): a process, stopped with
// SIGTERM when the test ends.
class HycoEchoAgent {
 public:
  HycoEchoAgent(const PinnedRelay& r, const std::filesystem::path& node) {
    const auto dir = r.relay.dir();
    std::ofstream(dir / "agent-listen.secret") << "listen-secret\n";
    ready_ = dir / "hyco-agent.ready";
    log_ = dir / "hyco-agent.log";
    std::vector<std::string> args = {node.string(),
                                     (source_dir() / "tests/fixtures/hyco/hyco_ws_echo_agent.js").string(),
                                     "--url", r.relay.url(),
                                     "--key-name", "listen",
                                     "--key-file", (dir / "agent-listen.secret").string(),
                                     "--cert", (dir / "agent.crt").string(),
                                     "--key", (dir / "agent.key").string(),
                                     "--ready-file", ready_.string()};
    const std::string ca = "NODE_EXTRA_CA_CERTS=" + r.relay.ca_file();
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      die_with_parent(parent);
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::putenv(const_cast<char*>(ca.c_str()));
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~HycoEchoAgent() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    if (!wait_until([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; }, 10s)) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
    }
  }
  bool listening() const { return std::filesystem::exists(ready_); }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  pid_t pid_ = -1;
  std::filesystem::path ready_, log_;
};

}  // namespace

TEST_CASE("rendezvous transport: the proxy's ws form reaches a hyco-ws listener that plays the agent",
          "[relay][transport][hyco]") {
  const auto node = run("command -v node");
  if (node.status != 0) CLUSTERCONNECT_SKIP("node is not installed (apt-get install nodejs npm): the hyco-ws listener not run");
  if (!std::filesystem::exists(source_dir() / "tests/fixtures/node_modules/hyco-ws"))
    CLUSTERCONNECT_SKIP("tests/fixtures/node_modules is missing (scripts/setup.sh runs npm ci): the hyco-ws listener not run");
  std::string node_path = node.output;
  while (!node_path.empty() && (node_path.back() == '\n' || node_path.back() == ' ')) node_path.pop_back();
  PinnedRelay r;
  HycoEchoAgent hyco(r, node_path);
  REQUIRE(wait_until([&] { return hyco.listening(); }, 20s));
  ModuleHost client_host("ws");
  auto client = r.dial(client_host, {r.agent_key.pin});
  REQUIRE(client);
  // Two streams on one session; each under the echo's credit (256 KiB).
  for (std::uint64_t i = 0; i < 2; ++i) {
    auto o = open_stream(*client);
    INFO(o.reason << "\n" << hyco.log());
    REQUIRE_FALSE(o.ec);
    auto x = exchange(o.stream, 100000 + i, i, 30s);
    INFO(x.what << ": " << x.ec.message());
    CHECK_FALSE(x.ec);
    CHECK(x.received_sha == x.sent_sha);
  }
  CHECK(r.paired("ws") == 1);
  CHECK_THAT(hyco.log(), Catch::Contains("TLS up with the proxy, TLSv1.3"));
  client->close();
}

TEST_CASE("rendezvous transport: a relay stopped with SIGTERM drains: the stream open goes on and the session ends by itself",
          "[relay][transport][drain]") {
  ListeningAgent rig("tls");
  auto& [form, agent_host, client_host, r, agent, listener] = rig;
  auto client = r.dial(client_host, {r.agent_key.pin});
  REQUIRE(client);
  auto held = open_stream(*client);
  REQUIRE_FALSE(held.ec);
  // stop() waits for the relay to exit: it does once the session ended.
  auto stopped = std::async(std::launch::async, [&] { return r.relay.stop(SIGTERM, std::chrono::seconds(60)); });
  const bool told = wait_until([&] { return r.relay.log().find("drain: notice on 2 control channel(s) here") != std::string::npos; }, 20s);
  INFO(r.relay.log());
  REQUIRE(told);
  // The stream opened before the SIGTERM runs to its end through the draining relay.
  auto x = exchange(held.stream, 256 * 1024, 7, 30s);
  INFO(x.what << ": " << x.ec.message());
  CHECK_FALSE(x.ec);
  CHECK(x.received_sha == x.sent_sha);
  // Its session, told GOAWAY by the agent, closes once its stream is done:
  // the relay counts it drained, not cut, and exits long before its 30 s.
  CHECK(stopped.get() == 0);
  const auto log = r.relay.log();
  INFO(log);
  CHECK(log.find("drain: 1 rendezvous ended by themselves, 0 cut") != std::string::npos);
  client->close();
  listener->close();
}

namespace {

// The mux frame types the agent sends on a session, read as the proxy's end
// of it (a TLS server over a raw leg) until a GOAWAY, the end of the session
// or `limit`.
std::vector<unsigned> frames_until_goaway(SSL* ssl, int fd, std::chrono::seconds limit) {
  timeval tv{static_cast<time_t>(limit.count()), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::vector<unsigned> types;
  std::string in;
  char buf[16384];
  for (;;) {
    while (in.size() >= tunnel::frame_header_size) {
      const auto* h = reinterpret_cast<const unsigned char*>(in.data());
      const std::size_t length = (std::size_t{h[6]} << 24) | (std::size_t{h[7]} << 16) | (std::size_t{h[8]} << 8) | h[9];
      if (in.size() < tunnel::frame_header_size + length) break;
      types.push_back(h[0]);
      if (h[0] == static_cast<unsigned>(tunnel::FrameType::goaway)) return types;
      in.erase(0, tunnel::frame_header_size + length);
    }
    const int n = SSL_read(ssl, buf, sizeof buf);
    if (n <= 0) return types;
    in.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace

TEST_CASE("rendezvous transport: a rendezvous under way when the relay drains pairs and its session gets GOAWAY at once",
          "[relay][transport][drain]") {
  ListeningAgent rig("tls", true);
  auto& [form, agent_host, client_host, r, agent, listener] = rig;
  // The proxy's part by hand, to hold its leg back: the connect, with the
  // pin of the key its TLS server end will show.
  const Identity proxy_id("proxy");
  const auto pin = tls::public_key_pin(proxy_id.pem.cert);
  REQUIRE(pin);
  const auto answer = run("curl -sS --max-time 20 --cacert " + quote(r.relay.ca_file()) + " -X POST -H " +
                          quote("ServiceBusAuthorization: " + r.relay.connect_token()) + " -H " +
                          quote(std::string("x-clusterconnect-proxy-key-pin: ") + pin.value()) + " " +
                          quote("https://" + r.relay.host() + "/$hc/" + demo_path + "?sb-hc-action=connect"));
  const auto body = nlohmann::json::parse(answer.output, nullptr, false);
  INFO(answer.output);
  REQUIRE(body.contains("rendezvous"));
  const std::string ticket = body["rendezvous"]["ticket"].get<std::string>();
  // The agent's leg waits at the rendezvous port for the proxy's.
  REQUIRE(wait_until([&] { return r.relay.gauge("clusterconnect_relay_rendezvous_unpaired") == 1; }, 20s));
  auto stopped = std::async(std::launch::async, [&] { return r.relay.stop(SIGTERM, std::chrono::seconds(60)); });
  // The agent hears of the drain while that leg is still being dialed.
  const bool told = wait_until([&] { return agent_host.log().find("and on 1 being dialed once up") != std::string::npos; }, 20s);
  INFO(agent_host.log());
  INFO(r.relay.log());
  REQUIRE(told);
  // The proxy's leg arrives now: the draining relay pairs it…
  Fd proxy(r.relay.rendezvous_port());
  proxy.send(tunnel::rendezvous::make_preamble(ticket));
  CHECK(proxy.line() == "CLUSTERCONNECT-RENDEZVOUS/1 200 paired\r\n");
  auto ctx = context(TLS_server_method(), proxy_id);
  Ssl ssl(SSL_new(ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), proxy.fd);
  REQUIRE(SSL_accept(ssl.get()) == 1);
  // …and the agent sends GOAWAY on the session as soon as it is up, so the
  // proxy opens nothing on it and it ends long before the drain timeout.
  const auto types = frames_until_goaway(ssl.get(), proxy.fd, 20s);
  REQUIRE_FALSE(types.empty());
  CHECK(types.back() == static_cast<unsigned>(tunnel::FrameType::goaway));
  CHECK_THAT(agent_host.log(), Catch::Contains("came up while that relay replica drains; GOAWAY"));
  SSL_shutdown(ssl.get());
  ::shutdown(proxy.fd, SHUT_RDWR);
  CHECK(stopped.get() == 0);
  const auto log = r.relay.log();
  INFO(log);
  CHECK(log.find("drain: 1 rendezvous ended by themselves, 0 cut") != std::string::npos);
  listener->close();
}
