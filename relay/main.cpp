// clusterconnect-relay: the connectivity service between clients and agents:
// switches client streams onto agent tunnels.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <mutex>
#include <thread>

#include <CLI/CLI.hpp>
#include <boost/asio/signal_set.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/certificates.hpp"
#include "clusterconnect/host/runtime.hpp"
#include "clusterconnect/tls_context.hpp"
#include "clusterconnect/version.hpp"
#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/registry.hpp"
#include "admin_commands.hpp"
#include "front_end.hpp"
#include "rendezvous_port.hpp"
#include "management_api.hpp"
#include "registry_store.hpp"
#include "relay_config.hpp"
#include "replica_directory.hpp"

using namespace clusterconnect;
using namespace clusterconnect::relay;

namespace {

struct TlsFiles {
  std::string cert_pem;
  std::string key_pem;
  std::string ca_file;  // for the ready file (dev mode)
};

// Dev mode: a CA kept in DIR (reused across restarts) and a fresh server
// certificate for 127.0.0.1, ::1 and localhost.
TlsFiles make_dev_tls(const std::filesystem::path& dir) {
  auto ca = tls::load_or_create_ca(dir, "clusterconnect-relay dev CA");
  if (!ca) throw std::runtime_error("--dev-tls: " + ca.error());
  auto server = tls::issue_server_cert(ca.value(), {"localhost"}, {"127.0.0.1", "::1"}, 30);
  if (!server) throw std::runtime_error("--dev-tls: " + server.error());
  if (auto r = tls::write_private_file(dir / "server.key", server->key); !r) throw std::runtime_error("--dev-tls: " + r.error());
  if (auto r = tls::write_private_file(dir / "server.crt", server->cert); !r) throw std::runtime_error("--dev-tls: " + r.error());
  return TlsFiles{server->cert, server->key, std::filesystem::absolute(dir / "ca.crt").string()};
}

void write_ready_file(const std::string& path, unsigned short port, const std::string& ca_file, unsigned short metrics_port,
                      unsigned short rendezvous_port) {
  nlohmann::json j{{"port", port}, {"ca_file", ca_file}};
  if (metrics_port) j["metrics_port"] = metrics_port;
  if (rendezvous_port) j["rendezvous_port"] = rendezvous_port;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump() << "\n";
    if (!out) throw std::runtime_error("cannot write --ready-file " + path);
  }
  std::filesystem::rename(tmp, path);
}

// The management API authenticates callers with the auth-entra module's
// authenticator, configured by the config file's "management" section (its
// tenants, audiences, authority...). Without that section it answers 503.
std::shared_ptr<ManagementApi> make_relay_management_api(host::Runtime& runtime, std::shared_ptr<RelayConfig> config,
                                                         std::shared_ptr<RegistryStore> store, std::weak_ptr<FrontEnd> front,
                                                         spdlog::logger& logger) {
  std::shared_ptr<Authenticator> authenticator;
  const auto& m = config->management;
  if (m.is_object() && m.contains("tenants")) {
    auto capability = runtime.capabilities().authenticator("entra");
    if (!capability) throw std::runtime_error("the management API needs the auth-entra module (authenticator:entra), which is not loaded");
    // The management API has an audience of its own: a token a user's tools
    // hold for ARM is good for every subscription the user can manage, and a
    // relay (or whoever runs it) must never be handed one.
    if (!m.contains("audiences") || !m["audiences"].is_array() || m["audiences"].empty())
      throw std::runtime_error(
          "management.audiences is required: the application ID (or ID URI) registered for this relay's management "
          "API (docs/operations.md, \"The management API's own application\")");
    for (const auto& a : m["audiences"]) {
      if (!a.is_string()) throw std::runtime_error("management.audiences must be an array of strings");
      if (is_arm_audience(a.get<std::string>()))
        throw std::runtime_error("management.audiences must not list Azure Resource Manager's audience (" +
                                 a.get<std::string>() +
                                 "): clients would hand the relay tokens valid for all their subscriptions; register an "
                                 "application for the relay and use its ID");
    }
    auto created = capability->create(m);
    if (!created) throw std::runtime_error("management authenticator: " + created.error());
    authenticator = created.value();
  } else {
    logger.warn("no \"management\" authenticator configured: the management API answers 503");
  }
  ManagementOptions options;
  options.public_host = config->public_host;
  if (m.is_object() && m.contains("audiences") && m["audiences"].is_array())
    for (const auto& a : m["audiences"])
      if (a.is_string()) options.audiences.push_back(a.get<std::string>());
  if (m.is_object()) {
    options.tenant = m.contains("tenants") && m["tenants"].is_array() && !m["tenants"].empty() && m["tenants"][0].is_string()
                         ? m["tenants"][0].get<std::string>()
                         : std::string();
    options.authority = m.value("authority", std::string());
    if (m.contains("location")) {
      if (!m["location"].is_string() || m["location"].get<std::string>().empty())
        throw std::runtime_error("management.location must be a region name (a non-empty string)");
      options.location = m["location"].get<std::string>();
    }
  }
  if (m.is_object() && m.contains("role_assignments")) {
    // Assignments at a subscription or resource group: they cover every
    // cluster below, and let their holders create clusters there (PUT).
    const auto& ra = m["role_assignments"];
    if (!ra.is_array()) throw std::runtime_error("management.role_assignments must be an array");
    for (const auto& a : ra) {
      if (!a.is_object() || !a.contains("scope") || !a["scope"].is_string() || !a.contains("principal") ||
          !a["principal"].is_string() || !a.contains("role") || !a["role"].is_string())
        throw std::runtime_error(
            "management.role_assignments entries are {\"scope\", \"principal\", \"role\"} strings");
      ManagementOptions::ScopedRoleAssignment s{a["scope"].get<std::string>(), a["principal"].get<std::string>(),
                                                a["role"].get<std::string>()};
      const auto slash = std::count(s.scope.begin(), s.scope.end(), '/');
      if (s.scope.rfind("/subscriptions/", 0) != 0 ||
          (slash != 2 && !(slash == 4 && s.scope.find("/resourceGroups/") != std::string::npos)))
        throw std::runtime_error("management.role_assignments scope \"" + s.scope +
                                 "\" must be /subscriptions/{id} or /subscriptions/{id}/resourceGroups/{name}");
      if (!store->snapshot()->role(s.role))
        throw std::runtime_error("management.role_assignments role \"" + s.role + "\" is not defined");
      options.scoped_role_assignments.push_back(std::move(s));
    }
  }
  if (m.is_object() && m.contains("token_lifetime_seconds")) {
    const auto& t = m["token_lifetime_seconds"];
    // A connect token must outlive its own delivery and not be a long-lived secret.
    if (!t.is_number_unsigned() || t.get<std::uint64_t>() < 30 || t.get<std::uint64_t>() > 86400)
      throw std::runtime_error("management.token_lifetime_seconds must be between 30 and 86400");
    options.token_lifetime = std::chrono::seconds(t.get<std::uint64_t>());
  }
  options.agent_status = [front](const std::string& identity) {
    auto f = front.lock();
    return f ? f->agent_status(identity) : AgentStatus{};
  };
  return make_management_api(
      store, options, std::move(authenticator),
      [front](const std::string& hc) -> unsigned {
        auto f = front.lock();
        return f ? f->listeners(hc) : 0u;
      },
      runtime.logger());
}

std::pair<std::string, unsigned short> split_listen(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("--listen must be ADDRESS:PORT, got '" + s + "'");
  std::string addr = s.substr(0, colon);
  if (addr.size() >= 2 && addr.front() == '[' && addr.back() == ']') addr = addr.substr(1, addr.size() - 2);
  unsigned long port = 0;
  try {
    port = std::stoul(s.substr(colon + 1));
  } catch (...) {
    port = 70000;
  }
  if (port > 65535) throw std::runtime_error("--listen: bad port in '" + s + "'");
  return {addr, static_cast<unsigned short>(port)};
}

}  // namespace

int main(int argc, char** argv) try {
  int verbosity = 0;
  host::LogFormat format = host::LogFormat::text;
  host::prescan_logging_flags(argc, argv, verbosity, format);
  auto logger = host::make_logger("relay", verbosity, format);
  CLI::App app{"clusterconnect-relay: switches client streams onto cluster agents", "clusterconnect-relay"};
  app.set_version_flag("--version", std::string("clusterconnect-relay ") + CLUSTERCONNECT_VERSION);
  int verbose_count = 0;
  app.add_flag("-v,--verbose", verbose_count, "More log output (repeat for trace)");
  std::string log_format = "text";
  app.add_option("--log-format", log_format, "Log format: text or json")->check(CLI::IsMember({"text", "json"}));
  std::string config_file, listen, ready_file, dev_tls, cert_file, key_file, public_host, metrics_listen;
  std::string rendezvous_listen, rendezvous_advertise;
  app.add_option("--config", config_file, "Relay configuration file (JSON): clusters, keys, limits")->check(CLI::ExistingFile);
  app.add_option("--listen", listen, "Listen address ADDRESS:PORT (port 0: any free port); default from the config or 127.0.0.1:8443");
  app.add_option("--ready-file", ready_file,
                 "When ready, write {\"port\":N,\"ca_file\":\"...\",\"metrics_port\":N} to this file");
  app.add_option("--metrics-listen", metrics_listen,
                 "ADDRESS:PORT for /metrics, /healthz, /readyz over plain HTTP (port 0: any free port); /metrics names "
                 "every cluster, so keep it off the public network. Default: from the config, else none");
  app.add_option("--rendezvous-listen", rendezvous_listen,
                 "ADDRESS:PORT where proxies' and agents' rendezvous legs meet (port 0: any free port); the relay "
                 "splices them and never terminates the TLS inside. Default: none (WebSocket tunnels only)");
  app.add_option("--rendezvous-advertise", rendezvous_advertise,
                 "HOST:PORT agents dial for a rendezvous; HOST (a DNS name or IPv4 address) also follows the ticket in "
                 "their TLS server name. Default: the public host's name and the rendezvous port");
  app.add_option("--dev-tls", dev_tls, "Development TLS: keep a self-signed CA in DIR and issue a server certificate for 127.0.0.1/localhost");
  app.add_option("--cert-file", cert_file, "Server certificate chain (PEM)");
  app.add_option("--key-file", key_file, "Server private key (PEM)");
  app.add_option("--public-host", public_host, "HOST[:PORT] clients and agents use (tokens are checked against it); default: the request's Host");
  std::optional<std::size_t> max_tunnels, max_connections;
  std::optional<double> drain_timeout, idle_timeout;
  app.add_option("--max-tunnels-per-cluster", max_tunnels, "Agents' control channels per cluster (default 25)");
  app.add_option("--max-connections", max_connections, "Open TLS connections not yet authenticated");
  app.add_option("--drain-timeout", drain_timeout,
                 "Seconds after SIGTERM for spliced sessions to end after GOAWAY (then they are cut) and connections to finish closing (default 30)");
  app.add_option("--idle-timeout", idle_timeout, "Seconds a control channel may leave a ping unanswered (default 45)");
  std::string advertise_url, replica_id;
  unsigned replica_ttl = 10;
  app.add_option("--advertise-url", advertise_url,
                 "With --store etcd: https://HOST:PORT where other replicas and agents reach this replica (not the load "
                 "balancer); accept addresses it hands out name HOST. Default: https:// and the public host");
  app.add_option("--replica-id", replica_id, "With --store etcd: this replica's id (default: random)");
  app.add_option("--replica-ttl", replica_ttl, "With --store etcd: seconds this replica's records outlive it (default 10)")
      ->check(CLI::Range(2u, 300u));
  unsigned threads = 1;
  app.add_option("--threads", threads, "I/O threads")->check(CLI::Range(1u, 256u));
  StoreFlags store_flags;
  add_store_options(app, store_flags);
  add_admin_commands(app, store_flags, config_file);
  CLI11_PARSE(app, argc, argv);
  if (app.get_subcommands().size() > 0) return run_admin_command(app, store_flags, config_file, *logger);

  // Shared with the management API, which keeps a reference for its lifetime.
  auto config_ptr = std::make_shared<RelayConfig>(
      config_file.empty() ? parse_relay_config(nlohmann::json::object(), std::filesystem::current_path())
                          : load_relay_config(config_file));
  RelayConfig& config = *config_ptr;
  RelayMetrics metrics;
  std::shared_ptr<RegistryStore> store = open_store(store_flags, config_file, logger, &metrics);
  if (!store_flags.url.empty() && !config.clusters.empty())
    logger->warn("--store is set: the clusters in {} are not used (move them with `clusterconnect-relay import`)", config_file);
  if (!listen.empty()) config.listen = listen;
  if (!cert_file.empty()) config.cert_file = cert_file;
  if (!key_file.empty()) config.key_file = key_file;
  if (!public_host.empty()) config.public_host = public_host;
  if (!metrics_listen.empty()) config.metrics_listen = metrics_listen;
  auto secs = [](double s) { return std::chrono::milliseconds(static_cast<long long>(s * 1000)); };
  if (max_tunnels) config.limits.max_tunnels_per_cluster = *max_tunnels;
  if (max_connections) config.limits.max_connections = *max_connections;
  if (drain_timeout) config.limits.drain_timeout = secs(*drain_timeout);
  if (idle_timeout) config.limits.idle_timeout = secs(*idle_timeout);
  if (store->snapshot()->clusters.empty()) logger->warn("no clusters configured: every hybrid connection handshake will get 404");

  TlsFiles tls_files;
  std::shared_ptr<asio::ssl::context> tls_context;
  if (!dev_tls.empty()) {
    tls_files = make_dev_tls(dev_tls);
    std::printf("dev CA: %s\n", tls_files.ca_file.c_str());
    std::fflush(stdout);
    logger->warn("development TLS: clients must trust {}", tls_files.ca_file);
    auto ctx = tls::make_server_context_pem(tls_files.cert_pem, tls_files.key_pem);
    if (!ctx) throw std::runtime_error("TLS: " + ctx.error());
    tls_context = ctx.value();
  } else {
    if (config.cert_file.empty() || config.key_file.empty())
      throw std::runtime_error("TLS is required: give --cert-file and --key-file (or tls in the config), or --dev-tls DIR");
    auto ctx = tls::make_server_context_files(config.cert_file, config.key_file);
    if (!ctx) throw std::runtime_error("TLS: " + ctx.error());
    tls_context = ctx.value();
  }

  host::Runtime runtime(logger, threads);
  runtime.load_plugins();
  auto [address, port] = split_listen(config.listen);
  auto front = FrontEnd::listen(runtime.io_context(), address, port, tls_context, config, store, metrics, logger);
  if (!front) throw std::runtime_error(front.error());
  store->on_change([weak = std::weak_ptr<FrontEnd>(front.value()), logger](const Registry& before, const Registry& after) {
    logger->info("registry changed: {} cluster(s), was {}", after.clusters.size(), before.clusters.size());
    if (auto f = weak.lock()) f->registry_changed(before, after);
  });
  store->start_watching();
  logger->info("registry: {}", store->describe());
  // Development TLS certifies 127.0.0.1: that is the name clients use then.
  if (config.public_host.empty() && !dev_tls.empty())
    config.public_host = "127.0.0.1:" + std::to_string(front.value()->port());
  if (config.public_host.empty() && config.management.is_object() && !config.management.empty())
    throw std::runtime_error(
        "the management API needs public_host (--public-host HOST[:PORT]): the name clients dial, signed into every "
        "connect token");
  front.value()->set_management_api(make_relay_management_api(runtime, config_ptr, store, front.value(), *logger));
  // Replicas: registered in etcd under a lease, before any agent can connect.
  std::shared_ptr<ReplicaDirectory> replicas;
  if (!store_flags.url.empty()) {
    ReplicaOptions ro;
    ro.id = replica_id;
    ro.advertise_url = advertise_url.empty() ? "https://" + config.public_host : advertise_url;
    if (advertise_url.empty() && config.public_host.empty())
      throw std::runtime_error("--store etcd needs --advertise-url https://HOST:PORT (or --public-host): where other replicas reach this one");
    std::string cert_pem = tls_files.cert_pem;
    if (cert_pem.empty()) {
      std::ifstream in(config.cert_file);
      cert_pem.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    auto pin = tls::public_key_pin(cert_pem);
    if (!pin) throw std::runtime_error("replicas: the pin of this relay's certificate: " + pin.error());
    ro.key_pin = pin.value();
    ro.ttl = std::chrono::seconds(replica_ttl);
    ro.metrics = &metrics;
    replicas = ReplicaDirectory::start(etcd_options(store_flags), std::move(ro), logger);
    front.value()->set_replicas(replicas);
  }
  std::shared_ptr<RendezvousPort> rendezvous;
  if (!rendezvous_listen.empty()) {
    auto [raddress, rport] = split_listen(rendezvous_listen);
    error_code ec;
    const auto raddr = asio::ip::make_address(raddress, ec);
    if (ec) throw std::runtime_error("--rendezvous-listen: '" + raddress + "' is not an IP address");
    RendezvousPortOptions ro;
    std::string advertise = rendezvous_advertise;
    std::string host = !advertise.empty()          ? advertise
                       : replicas                   ? replicas->advertise_host()
                       : config.public_host.empty() ? raddress
                                                    : config.public_host;
    if (auto colon = host.rfind(':'); colon != std::string::npos && host.find(':') == colon) host.erase(colon);
    if (host.empty() || host.find_first_of("[]:") != std::string::npos)
      throw std::runtime_error("--rendezvous-advertise: the host must be a DNS name or an IPv4 address, got '" + host + "'");
    ro.relay_host = host;
    rendezvous = RendezvousPort::listen(runtime.io_context(), {raddr, rport}, ro, logger, ec);
    if (!rendezvous) throw std::runtime_error("--rendezvous-listen " + rendezvous_listen + ": " + ec.message());
    if (advertise.empty()) advertise = host + ":" + std::to_string(rendezvous->port());
    front.value()->set_rendezvous(rendezvous, advertise);
    logger->info("rendezvous on {}:{}, announced as tls://{}", raddress, rendezvous->port(), advertise);
  }
  unsigned short metrics_port = 0;
  if (!config.metrics_listen.empty()) {
    auto [maddress, mport] = split_listen(config.metrics_listen);
    auto served = front.value()->serve_metrics(maddress, mport);
    if (!served) throw std::runtime_error(served.error());
    metrics_port = served.value();
  }

  // Shutdown: the signal handler only records the request; the main thread drains.
  std::mutex mutex;
  std::condition_variable cv;
  bool stop_requested = false;
  asio::signal_set signals(runtime.io_context(), SIGTERM, SIGINT);
  signals.async_wait([&](error_code ec, int sig) {
    if (ec) return;
    logger->info("signal {}: draining", sig);
    std::lock_guard lock(mutex);
    stop_requested = true;
    cv.notify_all();
  });

  runtime.start();
  front.value()->set_ready(true);
  const unsigned short bound = front.value()->port();
  logger->info("clusterconnect-relay {} listening on {}:{} ({} cluster(s))", CLUSTERCONNECT_VERSION, address, bound,
               store->snapshot()->clusters.size());
  std::printf("listening on %s:%u\n", address.c_str(), static_cast<unsigned>(bound));
  if (metrics_port) std::printf("metrics on http://%s:%u/metrics\n", split_listen(config.metrics_listen).first.c_str(), static_cast<unsigned>(metrics_port));
  std::fflush(stdout);
  if (!ready_file.empty())
    write_ready_file(ready_file, bound, tls_files.ca_file, metrics_port, rendezvous ? rendezvous->port() : 0);

  {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return stop_requested; });
  }
  // Drain (docs/operations.md): no new connects or control channels here;
  // the agents whose sessions this relay splices send GOAWAY on them, so
  // their proxies open new rendezvous elsewhere and these end once their
  // streams are done; what is left at --drain-timeout is cut.
  const auto drain_deadline = std::chrono::steady_clock::now() + config.limits.drain_timeout;
  front.value()->set_ready(false);
  front.value()->stop_accepting();
  // From here a session that ends counts as drained.
  if (rendezvous) rendezvous->begin_drain();
  const std::size_t told = front.value()->announce_drain(
      "relay is shutting down",
      std::min(drain_deadline, std::chrono::steady_clock::now() + std::chrono::seconds(3)));
  logger->info("drain: notice on {} control channel(s) here", told);
  // Gone from etcd: the other replicas stop routing here, and agents that
  // reconnect through the load balancer land elsewhere.
  if (replicas) replicas->withdraw();
  front.value()->close_listeners("relay is shutting down");
  // A ws-form rendezvous announced before the drain pairs when its listener's
  // accept arrives (the grace the rendezvous port gives the tls form's legs);
  // then no connection is accepted here any more.
  if (!front.value()->drain_pending_websockets(
          std::min(drain_deadline, std::chrono::steady_clock::now() + RendezvousPortOptions{}.drain_pending)))
    logger->info("drain: a ws rendezvous announced before the drain was not accepted in time");
  // Both forms' rendezvous end by themselves once the agents' GOAWAY has
  // emptied their sessions; what is left at the drain timeout is cut.
  bool all = rendezvous ? rendezvous->drain(drain_deadline) : true;
  all = front.value()->drain_paired_websockets(drain_deadline) && all;
  if (rendezvous) rendezvous->close();
  front.value()->close_paired_websockets("relay is shutting down");
  const auto [drained, cut] = front.value()->drain_outcome();
  logger->info("drain: {} rendezvous ended by themselves, {} cut{}", drained, cut, all ? "" : " at the drain timeout");
  // Every control channel and paired WebSocket got a close frame; each ends
  // when its peer answers it, or its WebSocket's close timeout passes.
  if (!front.value()->wait_closed(std::chrono::steady_clock::now() +
                                  std::min<std::chrono::steady_clock::duration>(config.limits.drain_timeout, std::chrono::seconds(10))))
    logger->debug("some connections did not finish their closing handshake");
  store->stop();
  runtime.stop();
  logger->info("relay stopped");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "clusterconnect-relay: %s\n", e.what());
  return 1;
}
