// Relay replicas on one etcd: three relay processes register themselves and
// their agents' control channels under leases; a connect through any replica
// reaches the cluster (the replica with the control channel announces it,
// the connect's own replica pairs the legs); a replica killed with -9 loses
// its records when its lease lapses, and the others stop routing to it.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <thread>
#include <future>

#include <nlohmann/json.hpp>

#include "etcd_fixture.hpp"
#include "hc_clients.hpp"
#include "relay_fixture.hpp"
#include "rendezvous/agent_report.hpp"
#include "test_env.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;
using namespace std::chrono_literals;

namespace {

const std::string members = "/clusterconnect/replicas/members/";
const std::string channels = "/clusterconnect/replicas/channels/";

// A TCP load balancer on loopback: each connection goes to the next backend
// in turn (one that refuses is skipped), bytes copied both ways until either
// side closes. Stands in for the one address agents and proxies are given.
class RoundRobinBalancer {
 public:
  explicit RoundRobinBalancer(std::vector<unsigned short> backends) : backends_(std::move(backends)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(listen_fd_, 64) == 0);
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~RoundRobinBalancer() {
    stop_ = true;
    acceptor_.join();  // then nothing adds to pipes_
    for (auto& t : pipes_) t.join();
    ::close(listen_fd_);
  }
  unsigned short port() const { return port_; }

 private:
  static int dial(unsigned short port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
    ::close(fd);
    return -1;
  }
  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      int backend = -1;
      for (std::size_t i = 0; i < backends_.size() && backend < 0; ++i)
        backend = dial(backends_[next_++ % backends_.size()]);
      if (backend < 0) {
        ::close(client);
        continue;
      }
      pipes_.emplace_back([this, client, backend] { pipe(client, backend); });
    }
  }
  void pipe(int a, int b) {
    char buf[16384];
    bool open = true;
    while (open && !stop_) {
      pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
      if (::poll(p, 2, 50) <= 0) continue;
      for (int i = 0; i < 2 && open; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const ssize_t n = ::read(p[i].fd, buf, sizeof buf);
        if (n <= 0 || ::write(p[1 - i].fd, buf, static_cast<std::size_t>(n)) != n) open = false;
      }
    }
    ::close(a);
    ::close(b);
  }

  std::vector<unsigned short> backends_;
  int listen_fd_ = -1;
  unsigned short port_ = 0;
  std::size_t next_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> pipes_;
};

// etcd, the demo cluster imported into it (the agent's key pinned), and
// `n` relays on it, each with a rendezvous port.
struct Replicas {
  EtcdServer etcd;
  AgentKey agent_key{"demo agent"};
  TempDir dir;
  std::vector<std::unique_ptr<RelayProcess>> relays;

  // Balanced: behind one address (a RoundRobinBalancer, the public host
  // tokens name), each replica advertising its own port.
  std::unique_ptr<RoundRobinBalancer> balancer;
  std::filesystem::path ca_bundle;  // every replica's development CA

  explicit Replicas(unsigned n, unsigned ttl_seconds = 2, bool balanced = false) {
    write("listen.key", "listen-secret\n");
    write("connect.key", "connect-secret\n");
    write("agent.crt", agent_key.pem.cert);
    write("agent.key", agent_key.pem.key);
    nlohmann::json config = {{"clusters",
                              {{{"subscription", "00000000-0000-0000-0000-000000000000"},
                                {"resource_group", "sandbox"},
                                {"name", "demo"},
                                {"hybrid_connection", demo_path},
                                {"agent_key_pins", {agent_key.pin}},
                                {"keys",
                                 {{{"name", "listen"}, {"rights", {"listen"}}, {"secret_file", "listen.key"}},
                                  {{"name", "connect"}, {"rights", {"connect"}}, {"secret_file", "connect.key"}}}}}}}};
    write("relay.json", config.dump(2));
    auto imported = run((stage_dir() / "bin" / "clusterconnect-relay").string() + " --config " +
                        quote((dir.path() / "relay.json").string()) + " --store " + etcd.store() + " import");
    INFO(imported.output);
    REQUIRE(imported.status == 0);
    std::vector<unsigned short> ports;
    for (unsigned i = 0; i < n && balanced; ++i) ports.push_back(free_port());
    if (balanced) balancer = std::make_unique<RoundRobinBalancer>(ports);
    for (unsigned i = 0; i < n; ++i) {
      std::vector<std::string> args{"--store",       etcd.store(),
                                    "--replica-id",  "r" + std::to_string(i),
                                    "--replica-ttl", std::to_string(ttl_seconds)};
      if (balanced) {
        args.insert(args.end(), {"--public-host", "127.0.0.1:" + std::to_string(balancer->port()), "--advertise-url",
                                 "https://127.0.0.1:" + std::to_string(ports[i])});
        relays.push_back(std::make_unique<RelayProcess>(args, ports[i]));  // adds its rendezvous port
      } else {
        args.insert(args.end(), {"--rendezvous-listen", "127.0.0.1:0"});
        relays.push_back(
            std::make_unique<RelayProcess>(nlohmann::json::object(), std::map<std::string, std::string>{}, args));
      }
    }
    {
      // Each replica has its own development CA; in production one CA signs them all.
      ca_bundle = dir.path() / "ca-bundle.pem";
      std::ofstream out(ca_bundle);
      for (const auto& r : relays) out << std::ifstream(r->ca_file()).rdbuf();
    }
    REQUIRE(wait_until([&] { return etcd.count(members) == static_cast<long>(n); }, 20s));
  }

  void write(const std::string& name, const std::string& content) { std::ofstream(dir.path() / name) << content; }

  // The agent's control channels, all on relay `i`, published in etcd.
  std::shared_ptr<TunnelListener> listen(ModuleHost& host, Agent& agent, unsigned i, unsigned n = 1,
                                         const tunnel::rendezvous::AgentReport& report = {}) {
    auto l = listen_unpublished(host, agent, i, n, report);
    // Published: the channel's record is in etcd.
    REQUIRE(wait_until([&] { return etcd.count(channels) == 1; }, 20s));
    return l;
  }
  // The same, up on the relay (etcd may be away).
  std::shared_ptr<TunnelListener> listen_unpublished(ModuleHost& host, Agent& agent, unsigned i, unsigned n = 1,
                                                     const tunnel::rendezvous::AgentReport& report = {}) {
    ListenOptions o;
    o.endpoint = relays[i]->endpoint();
    o.endpoint.ca_file = ca_bundle.string();  // the ws form's accept address may name another replica
    o.token = [r = relays[i].get()] { return r->listen_token(); };
    o.tunnels = n;
    o.backoff_initial = 50ms;
    o.backoff_max = 500ms;
    o.identity_cert_file = (dir.path() / "agent.crt").string();
    o.identity_key_file = (dir.path() / "agent.key").string();
    o.handshake_headers = [report] { return tunnel::rendezvous::to_headers(report); };
    auto l = host.transport().listen(std::move(o), agent.handler());
    REQUIRE(l);
    REQUIRE(wait_until([&] { return l->status().tunnels_up == n && relays[i]->listeners() == n; }, 20s));
    return l;
  }

  // Through the balancer: its address, a token for it, every replica's CA.
  RelayEndpoint balanced_endpoint() const {
    return RelayEndpoint{"wss://127.0.0.1:" + std::to_string(balancer->port()) + "/$hc/" + demo_path,
                         ca_bundle.string(),
                         false,
                         {agent_key.pin}};
  }
  std::string balanced_token(const std::string& key, const std::string& secret) const {
    return make_sas_token("http://127.0.0.1:" + std::to_string(balancer->port()) + "/" + demo_path, key, secret,
                          std::chrono::system_clock::now() + std::chrono::hours(1));
  }
  std::shared_ptr<TunnelListener> listen_balanced(ModuleHost& host, Agent& agent, unsigned n) {
    ListenOptions o;
    o.endpoint = balanced_endpoint();
    o.token = [this] { return balanced_token("listen", "listen-secret"); };
    o.tunnels = n;
    o.backoff_initial = 50ms;
    o.backoff_max = 500ms;
    o.identity_cert_file = (dir.path() / "agent.crt").string();
    o.identity_key_file = (dir.path() / "agent.key").string();
    auto l = host.transport().listen(std::move(o), agent.handler());
    REQUIRE(l);
    return l;
  }
  // Control channels on each live replica.
  std::vector<unsigned> spread() const {
    std::vector<unsigned> out;
    for (const auto& r : relays) out.push_back(r->running() ? r->listeners() : 0u);
    return out;
  }

  std::shared_ptr<TunnelClient> dial(ModuleHost& host, unsigned i) {
    auto endpoint = relays[i]->endpoint();
    endpoint.agent_key_pins = {agent_key.pin};
    return host.transport().dial(endpoint, [r = relays[i].get()] { return r->connect_token(); });
  }

  unsigned paired(unsigned i, const std::string& form) const {
    return relays[i]->gauge(form == "ws" ? "clusterconnect_relay_ws_rendezvous_total{outcome=\"paired\"}"
                                         : "clusterconnect_relay_rendezvous_total{outcome=\"paired\"}");
  }
};

// Opens a stream (until the replica has seen the agent's channel: its
// watch of etcd is asynchronous) and echoes `size` bytes through it.
void reach_agent(TunnelClient& client, std::uint64_t size) {
  OpenResult o;
  REQUIRE(wait_until(
      [&] {
        o = open_stream(client);
        return !o.ec;
      },
      20s));
  auto x = exchange(o.stream, size, 7, 20s);
  INFO(x.what << ": " << x.ec.message());
  CHECK_FALSE(x.ec);
  CHECK(x.received_sha == x.sent_sha);
}

// The client side of a long-running stream: reads what the agent sends
// ("source" mode) until the stream is reset; counts the bytes and keeps the
// first error.
class Drain : public std::enable_shared_from_this<Drain> {
 public:
  explicit Drain(StreamPtr s) : s_(std::move(s)) {}
  void start() { read(); }
  std::uint64_t bytes() const { return bytes_; }
  std::string error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }
  // Ends the stream from this side (not an error).
  void stop() {
    stopped_ = true;
    s_->reset("test done");
  }

 private:
  void read() {
    s_->async_read_some(asio::buffer(buf_), [self = shared_from_this()](error_code ec, std::size_t n) {
      if (ec) {
        if (!self->stopped_) {
          std::lock_guard lock(self->mutex_);
          self->error_ = ec.message();
        }
        return;
      }
      self->bytes_ += n;
      self->read();
    });
  }
  StreamPtr s_;
  std::array<std::uint8_t, 64 * 1024> buf_{};
  std::atomic<std::uint64_t> bytes_{0};
  std::atomic<bool> stopped_{false};
  mutable std::mutex mutex_;
  std::string error_;
};

// Requests in a loop on one session (one rendezvous, then a stream each):
// each echoes 4 KiB; counts the ones that worked and keeps the first failure.
class RequestLoop {
 public:
  explicit RequestLoop(std::shared_ptr<TunnelClient> client) : client_(std::move(client)) {
    thread_ = std::thread([this] {
      for (std::uint64_t seed = 1; !stop_; ++seed) {
        auto o = open_stream(*client_, {}, 20s);
        std::string why;
        if (o.ec) {
          why = "open: " + o.ec.message() + " " + o.reason;
        } else {
          auto x = exchange(o.stream, 4096, seed, 20s);
          if (x.ec)
            why = x.what + ": " + x.ec.message();
          else if (x.received_sha != x.sent_sha)
            why = "the echo differs";
        }
        if (why.empty()) {
          ++ok_;
        } else {
          std::lock_guard lock(mutex_);
          if (failure_.empty()) failure_ = why;
          ++failed_;
        }
      }
    });
  }
  ~RequestLoop() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  unsigned ok() const { return ok_; }
  unsigned failed() const { return failed_; }
  std::string failure() const {
    std::lock_guard lock(mutex_);
    return failure_;
  }

 private:
  std::shared_ptr<TunnelClient> client_;
  std::atomic<bool> stop_{false};
  std::atomic<unsigned> ok_{0}, failed_{0};
  mutable std::mutex mutex_;
  std::string failure_;
  std::thread thread_;
};

// The keys of the replicas' records, each with its lease's remaining TTL.
std::string describe(const std::map<std::string, long>& ttls) {
  std::string out;
  for (const auto& [k, ttl] : ttls) out += k + " ttl " + std::to_string(ttl) + "\n";
  return out;
}
bool all_leased(const std::map<std::string, long>& ttls, std::size_t n) {
  return ttls.size() == n && std::all_of(ttls.begin(), ttls.end(), [](const auto& kv) { return kv.second > 0; });
}

std::string relay_bin() { return (stage_dir() / "bin" / "clusterconnect-relay").string(); }

}  // namespace

TEST_CASE("replicas: a connect through each of three replicas reaches the agent whose channel is on one of them",
          "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  const std::string form = GENERATE(as<std::string>{}, "tls", "ws");
  Replicas rs(3);
  ModuleHost agent_host{form}, client_host{form};
  Agent agent;
  auto listener = rs.listen(agent_host, agent, 0);
  for (unsigned i = 0; i < 3; ++i) {
    INFO("through replica " << i << " (" << form << ")");
    const unsigned before = rs.paired(i, form);
    auto client = rs.dial(client_host, i);
    REQUIRE(client);
    reach_agent(*client, 64 * 1024 + i);
    // The legs met on the connect's own replica: the accept named it.
    CHECK(rs.paired(i, form) == before + 1);
    client->close();
  }
  CHECK(agent.streams == 3);
  listener->close();
}

TEST_CASE("replicas: a rendezvous through a replica without the control channel costs one call between replicas",
          "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  Replicas rs(2);
  ModuleHost agent_host{"tls"}, client_host{"tls"};
  Agent agent;
  auto listener = rs.listen(agent_host, agent, 0);
  {
    auto warm = rs.dial(client_host, 1);
    reach_agent(*warm, 16);
    warm->close();
  }
  // A fresh client per round: each first open is one rendezvous.
  auto median_ms = [&](unsigned i) {
    std::vector<double> ms;
    for (int round = 0; round < 31; ++round) {
      auto client = rs.dial(client_host, i);
      const auto t0 = std::chrono::steady_clock::now();
      auto o = open_stream(*client);
      REQUIRE_FALSE(o.ec);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      client->close();
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  const double owner = median_ms(0), other = median_ms(1);
  std::printf("rendezvous + first open, median of 31: through the owning replica %.2f ms, through another %.2f ms\n",
              owner, other);
  CHECK(rs.paired(1, "tls") >= 32);
  listener->close();
}

TEST_CASE(
    "replicas: a replica killed with -9 loses its records when its lease lapses and the others stop routing to it",
    "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  Replicas rs(3);
  ModuleHost agent_host{"tls"}, client_host{"tls"};
  Agent agent;
  auto listener = rs.listen(agent_host, agent, 0);
  {
    auto client = rs.dial(client_host, 1);
    reach_agent(*client, 1024);
    client->close();
  }
  rs.relays[0]->stop(SIGKILL);
  // The lease (2 s here) lapses: the dead replica and its channel are gone.
  REQUIRE(wait_until([&] { return rs.etcd.count(members) == 2 && rs.etcd.count(channels) == 0; }, 20s));
  // The others answer at once that no agent is connected, instead of
  // calling the dead replica.
  REQUIRE(wait_until(
      [&] {
        auto client = rs.dial(client_host, 1);
        auto o = open_stream(*client);
        client->close();
        return o.ec && rs.relays[1]->log().find("no agent connected for cluster demo") != std::string::npos;
      },
      20s));
  listener->close();
}

TEST_CASE("replicas: SIGTERM removes a replica's records before its lease would lapse", "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  Replicas rs(2, 60);
  ModuleHost agent_host{"tls"};
  Agent agent;
  auto listener = rs.listen(agent_host, agent, 1);
  CHECK(rs.relays[1]->stop(SIGTERM) == 0);
  // Revoked at once, not 60 s later.
  CHECK(rs.etcd.count(members) == 1);
  CHECK(rs.etcd.count(channels) == 0);
  listener->close();
}

TEST_CASE("replicas: a replica keeps its lease alive three times per TTL, even at the shortest TTL",
          "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  Replicas rs(1, 2);  // --replica-ttl 2, the least the relay takes: 666 ms apart
  auto& relay = *rs.relays[0];
  const std::string series = "clusterconnect_relay_store_lease_keepalives_total";
  REQUIRE(wait_until([&] { return relay.gauge(series) >= 1; }, 20s));
  const auto first = relay.gauge(series);
  const auto since = std::chrono::steady_clock::now();
  REQUIRE(wait_until([&] { return relay.gauge(series) >= first + 3; }, 20s));
  // Three more take at least two intervals (a busy loop took microseconds).
  const auto took = std::chrono::steady_clock::now() - since;
  INFO(std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms for 3 keepalives");
  CHECK(took >= 1000ms);
  // And the lease holds: the member's record is still there.
  CHECK(rs.etcd.count(members) == 1);
}

TEST_CASE(
    "replicas: an agent behind one balanced address puts its control channels on distinct replicas and re-homes "
    "when one is killed",
    "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  Replicas rs(3, 2, true);
  ModuleHost agent_host{"tls"}, client_host{"tls"};
  Agent agent;
  auto listener = rs.listen_balanced(agent_host, agent, 3);
  const std::vector<unsigned> one_each{1, 1, 1};
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 3 && rs.spread() == one_each; }, 20s));
  auto client = client_host.transport().dial(rs.balanced_endpoint(),
                                             [&] { return rs.balanced_token("connect", "connect-secret"); });
  reach_agent(*client, 4096);
  client->close();

  rs.relays[0]->stop(SIGKILL);
  // Its channel comes back on the two others (one of them now holds two).
  REQUIRE(wait_until(
      [&] {
        auto s = rs.spread();
        return listener->status().tunnels_up == 3 && s[1] >= 1 && s[2] >= 1 && s[1] + s[2] == 3;
      },
      20s));
  REQUIRE(wait_until([&] { return rs.etcd.count(members) == 2; }, 20s));
  for (int i = 0; i < 2; ++i) {  // the balancer sends these to each live replica in turn
    auto again = client_host.transport().dial(rs.balanced_endpoint(),
                                              [&] { return rs.balanced_token("connect", "connect-secret"); });
    reach_agent(*again, 4096);
    again->close();
  }
  listener->close();
}

TEST_CASE("replicas: a call to /$replica/accept without the replicas' secret is refused with 401",
          "[relay][replicas][etcd][security]") {
  if (!have_etcd()) return;
  Replicas rs(1, 60);
  ModuleHost agent_host{"tls"};
  Agent agent;
  auto listener = rs.listen(agent_host, agent, 0);
  const std::string accept =
      nlohmann::json{{"accept", {{"address", "tls://127.0.0.1:9"}, {"id", std::string(32, 'a')}}}}.dump();
  const std::string body = nlohmann::json{
      {"cluster",
       "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/"
       "sandbox/providers/microsoft.kubernetes/connectedclusters/demo"},
      {"message", accept}}.dump();
  for (const std::string header : {"", "-H 'X-Clusterconnect-Replica-Secret: not-the-secret'"}) {
    auto r = run("curl -sS --max-time 5 -o /dev/null -w '%{http_code}' --cacert " + quote(rs.relays[0]->ca_file()) +
                 " " + header + " -X POST https://" + rs.relays[0]->host() + "/\\$replica/accept -d " + quote(body));
    CHECK(r.output == "401");
  }
  CHECK(rs.relays[0]->gauge("clusterconnect_relay_handshake_failures_total{reason=\"replica_auth\"}") == 2);
  listener->close();
}

TEST_CASE("replicas: on SIGTERM a replica's control channels move to another replica and connects keep working",
          "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  Replicas rs(2, 60, true);
  ModuleHost agent_host{"tls"}, client_host{"tls"};
  Agent agent;
  auto listener = rs.listen_balanced(agent_host, agent, 2);
  const std::vector<unsigned> one_each{1, 1};
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 2 && rs.spread() == one_each; }, 20s));
  CHECK(rs.relays[0]->stop(SIGTERM) == 0);
  // Its records went with it (not 60 s later), and its channel is back on the other.
  CHECK(rs.etcd.count(members) == 1);
  const std::vector<unsigned> moved{0, 2};
  REQUIRE(wait_until([&] { return listener->status().tunnels_up == 2 && rs.spread() == moved; }, 20s));
  auto client = client_host.transport().dial(rs.balanced_endpoint(),
                                             [&] { return rs.balanced_token("connect", "connect-secret"); });
  reach_agent(*client, 4096);
  client->close();
  listener->close();
}

TEST_CASE("replicas: etcd stopped and started again under load: sessions go on and every record comes back",
          "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  const int sig = GENERATE(SIGTERM, SIGKILL);
  INFO("etcd stopped with signal " << sig);
  Replicas rs(2, 3);
  ModuleHost agent_host{"tls"}, client_host{"tls"};
  Agent agent;
  auto listener = rs.listen(agent_host, agent, 0);

  // One long-running stream, through replica 1 (its accept goes through replica 0).
  auto streaming = rs.dial(client_host, 1);
  OpenResult o;
  REQUIRE(wait_until(
      [&] {
        o = open_stream(*streaming, {{"mode", "source"}});
        return !o.ec;
      },
      20s));
  auto drain = std::make_shared<Drain>(o.stream);
  drain->start();
  // A loop of requests through a rendezvous on replica 0.
  RequestLoop loop(rs.dial(client_host, 0));
  REQUIRE(wait_until([&] { return loop.ok() >= 3 && drain->bytes() > (1u << 20); }, 20s));

  rs.etcd.stop(sig);
  // Each replica says once that etcd is away.
  for (auto& r : rs.relays)
    REQUIRE(wait_until([&] { return r->log().find("etcd is away for the registry watch") != std::string::npos; }, 20s));
  {
    // Sessions go on, and new rendezvous through either replica reach the agent.
    const unsigned ok_before = loop.ok();
    const std::uint64_t bytes_before = drain->bytes();
    for (unsigned i = 0; i < 2; ++i) {
      INFO("a new rendezvous through replica " << i << " while etcd is away");
      auto client = rs.dial(client_host, i);
      REQUIRE(client);
      reach_agent(*client, 64 * 1024);
      client->close();
    }
    // A second control channel comes up meanwhile, on replica 1: its record waits for etcd.
    auto second = rs.listen_unpublished(agent_host, agent, 1);
    REQUIRE(wait_until([&] { return loop.ok() >= ok_before + 3 && drain->bytes() > bytes_before + (1u << 20); }, 20s));
    CHECK(loop.failed() == 0);
    // No busy loop: retries back off to one a second at most, and are not
    // logged each time.
    for (auto& r : rs.relays) {
      const auto log = r->log();
      std::size_t n = 0;
      for (auto at = log.find("etcd is away for"); at != std::string::npos; at = log.find("etcd is away for", at + 1))
        ++n;
      CHECK(n <= 3);  // the registry watch, the replicas' view, the lease (once each)
    }

    rs.etcd.start();
    for (auto& r : rs.relays)
      REQUIRE(
          wait_until([&] { return r->log().find("etcd is back for the registry watch") != std::string::npos; }, 20s));

    // A registry change made now reaches both replicas within 1 s.
    auto added = run(relay_bin() + " cluster add -s 00000000-0000-0000-0000-0000000000bb -g team -n beta --store " +
                     rs.etcd.store() + " --show-secrets -o json");
    INFO(added.output);
    REQUIRE(added.status == 0);
    std::string listen_secret;
    const auto added_json = nlohmann::json::parse(added.output.substr(added.output.find('{')));
    for (const auto& k : added_json["keys"])
      if (k["name"] == "listen") listen_secret = k.value("secret", std::string());
    REQUIRE_FALSE(listen_secret.empty());
    const std::string beta = "clusters/00000000-0000-0000-0000-0000000000bb/team/beta";
    for (auto& r : rs.relays) {
      const std::string token = r->token("listen", listen_secret, beta);
      CHECK(wait_until(
          [&] {
            try {
              ControlClient c(*r, beta, token);
              return true;
            } catch (const std::exception&) {
              return false;
            }
          },
          1000ms));
    }

    // Every replica and control-channel record is back, each under a live lease.
    std::map<std::string, long> members_now, channels_now;
    const bool back = wait_until(
        [&] {
          members_now = rs.etcd.lease_ttls(members);
          channels_now = rs.etcd.lease_ttls(channels);
          // demo's on r0 and r1 (beta's, from the checks above, too).
          return all_leased(members_now, 2) && all_leased(channels_now, 4) &&
                 std::count_if(channels_now.begin(), channels_now.end(), [](const auto& kv) {
                   return kv.first.find("/connectedclusters/demo/") != std::string::npos;
                 }) == 2;
        },
        20s);
    INFO(describe(members_now) << describe(channels_now));
    CHECK(back);
    // And the replicas write under their leases again: the second channel
    // closes, and its record says so.
    second->close();
    const auto record_of = [&](const std::string& replica) {
      for (const auto& [key, ttl] : rs.etcd.lease_ttls(channels))
        if (key.find("/connectedclusters/demo/" + replica) != std::string::npos) return rs.etcd.get_json(key);
      return nlohmann::json();
    };
    CHECK(wait_until([&] { return record_of("r1").value("count", -1) == 0; }, 20s));
  }

  // The sessions went on throughout, without an error.
  const std::uint64_t bytes_before = drain->bytes();
  const unsigned ok_before = loop.ok();
  REQUIRE(wait_until([&] { return loop.ok() >= ok_before + 3 && drain->bytes() > bytes_before + (1u << 20); }, 20s));
  loop.stop();
  INFO(loop.failure());
  CHECK(loop.failed() == 0);
  CHECK(drain->error().empty());
  drain->stop();
  streaming->close();
  listener->close();
}

TEST_CASE("replicas: a replica publishes its agents' last report under its lease with at most two writes per reconnect and no registry rebuild",
          "[relay][replicas][etcd]") {
  if (!have_etcd()) return;
  Replicas rs(2, 60);
  ModuleHost agent_host{"tls"};
  Agent agent;
  tunnel::rendezvous::AgentReport report;
  report.agent_version = "0.9.0";
  report.kubernetes_version = "v1.32.2";
  report.node_count = 3;
  report.core_count = 12;
  // The replicas' records (channels, reports) are not the registry: writing
  // them makes no new registry snapshot on any replica.
  const auto snapshots = [&] {
    return std::vector<unsigned>{rs.relays[0]->gauge("clusterconnect_relay_registry_snapshots_total"),
                                 rs.relays[1]->gauge("clusterconnect_relay_registry_snapshots_total")};
  };
  const auto snapshots_before = snapshots();
  CHECK(snapshots_before[0] >= 1);
  const auto before_listen = std::chrono::system_clock::now();
  auto listener = rs.listen(agent_host, agent, 0, 1, report);
  std::string key;
  for (const auto& [k, ttl] : rs.etcd.lease_ttls(channels)) {
    key = k;
    CHECK(ttl > 0);  // under the replica's lease
  }
  REQUIRE(key.size() > 3);
  CHECK(key.substr(key.size() - 3) == "/r0");
  auto record = rs.etcd.get_json(key);
  INFO(record.dump());
  CHECK(record["count"] == 1);
  CHECK(record["agent"]["agent_version"] == "0.9.0");
  CHECK(record["agent"]["kubernetes_version"] == "v1.32.2");
  CHECK(record["agent"]["node_count"] == 3);
  CHECK(record["agent"]["core_count"] == 12);
  const auto unix_now = [](std::chrono::system_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
  };
  CHECK(record["last_seen"].get<std::int64_t>() >= unix_now(before_listen) - 1);

  // The agent reconnects: at most two writes (closed, open again; one when
  // they come close together), whatever else the replica does meanwhile.
  const unsigned writes_before = rs.relays[0]->gauge("clusterconnect_relay_store_writes_total");
  CHECK(writes_before >= 3);  // the lease, the member record, the channel record
  listener->close();
  REQUIRE(wait_until([&] { return rs.etcd.get_json(key).value("count", -1) == 0; }, 20s));
  // Closed: the record stays (for when the agent was last seen) with the report.
  CHECK(rs.etcd.get_json(key)["agent"]["node_count"] == 3);
  listener = rs.listen_unpublished(agent_host, agent, 0, 1, report);
  REQUIRE(wait_until([&] { return rs.etcd.get_json(key).value("count", -1) == 1; }, 20s));
  const unsigned writes = rs.relays[0]->gauge("clusterconnect_relay_store_writes_total") - writes_before;
  CHECK(writes >= 1);
  CHECK(writes <= 2);
  // A registry change after them: once both replicas have it, they have seen
  // every channel record before it (a watch delivers in revision order), and
  // that one change is the only new snapshot.
  auto added = run(relay_bin() + " cluster add -s 00000000-0000-0000-0000-0000000000bb -g team -n gamma --store " +
                   rs.etcd.store());
  INFO(added.output);
  REQUIRE(added.status == 0);
  const std::vector<unsigned> one_more{snapshots_before[0] + 1, snapshots_before[1] + 1};
  REQUIRE(wait_until([&] {
    const auto now = snapshots();
    return now[0] >= one_more[0] && now[1] >= one_more[1];
  }, 20s));
  CHECK(snapshots() == one_more);
  listener->close();
}

TEST_CASE("replicas: a replica stopped with SIGTERM has the replica holding the agent's channel pass its drain notice on",
          "[relay][replicas][etcd][drain]") {
  if (!have_etcd()) return;
  Replicas rs(2);
  ModuleHost agent_host{"tls"}, client_host{"tls"};
  Agent agent;
  // The agent's only control channel is on replica 0; the session is spliced on replica 1.
  auto listener = rs.listen(agent_host, agent, 0);
  auto client = rs.dial(client_host, 1);
  OpenResult held;
  REQUIRE(wait_until(
      [&] {
        held = open_stream(*client);
        return !held.ec;
      },
      20s));
  REQUIRE(rs.paired(1, "tls") == 1);
  auto stopped = std::async(std::launch::async, [&] { return rs.relays[1]->stop(SIGTERM, std::chrono::seconds(60)); });
  const bool passed = wait_until([&] { return rs.relays[1]->log().find("notice(s) passed on by other replicas") != std::string::npos; }, 20s);
  INFO(rs.relays[1]->log());
  INFO(rs.relays[0]->log());
  REQUIRE(passed);
  CHECK(rs.relays[1]->log().find("drain: notice on 0 control channel(s) here") != std::string::npos);
  // The stream goes on through the draining replica, then its session ends by itself.
  auto x = exchange(held.stream, 64 * 1024, 3, 30s);
  CHECK_FALSE(x.ec);
  CHECK(x.received_sha == x.sent_sha);
  CHECK(stopped.get() == 0);
  CHECK(rs.relays[1]->log().find("drain: 1 rendezvous ended by themselves, 0 cut") != std::string::npos);
  CHECK(rs.relays[0]->log().find("drain notice for cluster") != std::string::npos);
  client->close();
  listener->close();
}

TEST_CASE("replicas: a ws rendezvous waiting at a replica when it drains is named in its drain notice and still pairs",
          "[relay][replicas][etcd][drain][ws]") {
  if (!have_etcd()) return;
  Replicas rs(2);
  // The cluster's listener on replica 0; a sender parked on replica 1, its
  // accept passed to replica 0's control channel.
  ControlClient agent(*rs.relays[0], demo_path, rs.relays[0]->listen_token());
  REQUIRE(wait_until([&] { return rs.etcd.count(channels) == 1; }, 20s));
  RawWs sender(*rs.relays[1]);
  auto connecting = park_sender(sender, *rs.relays[1], demo_path, rs.relays[1]->connect_token());
  const auto accept = next_accept(agent);
  auto stopped = std::async(std::launch::async, [&] { return rs.relays[1]->stop(SIGTERM, std::chrono::seconds(60)); });
  // Replica 1 splices nothing yet; the rendezvous waiting there is reason
  // enough to have replica 0 pass its drain notice to the cluster's agents.
  const bool passed =
      wait_until([&] { return rs.relays[0]->log().find("drain notice for cluster") != std::string::npos; }, 20s);
  INFO(rs.relays[1]->log());
  INFO(rs.relays[0]->log());
  REQUIRE(passed);
  // The listener's accept reaches the draining replica and pairs.
  RawWs listener(*rs.relays[1]);
  pair_and_pass(listener, *rs.relays[1], accept, connecting, sender, "through a draining replica");
  sender.close(1000, "done");
  CHECK_FALSE(listener.read());
  CHECK(stopped.get() == 0);
  CHECK(rs.relays[1]->log().find("drain: 1 rendezvous ended by themselves, 0 cut") != std::string::npos);
}
