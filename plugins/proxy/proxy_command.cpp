#include "proxy_command.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <iostream>
#include <optional>
#include <set>
#include <thread>

#include <CLI/CLI.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "child_process.hpp"
#include "clusterconnect/certificates.hpp"
#include "clusterconnect/credential.hpp"
#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/kubeconfig.hpp"
#include "clusterconnect/registry.hpp"
#include "clusterconnect/tls.hpp"
#include "clusterconnect/tls_context.hpp"
#include "clusterconnect/transport.hpp"
#include "listen_failure.hpp"
#include "local_endpoint.hpp"
#include "clusterconnect/arm_audience.hpp"
#include "cluster_selection.hpp"
#include "management_client.hpp"
#include "progress.hpp"
#include "proxy_status.hpp"
#include "running_proxies.hpp"
#include "stream_opener.hpp"
#include "token_refresher.hpp"

namespace fs = std::filesystem;

namespace clusterconnect::proxy {
namespace {

// Idle tunnel streams kept per cluster for the next requests (client-go keeps
// up to 25 idle connections per host); one held open costs a stream's state
// here and at the agent.
constexpr std::size_t kIdleTunnelStreams = 32;

fs::path default_kubeconfig() {
  if (const char* k = std::getenv("KUBECONFIG"); k && *k) {
    std::string first(k);
    first = first.substr(0, first.find(':'));
    if (!first.empty()) return first;
  }
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : ".") / ".kube" / "config";
}

// The service-account token from a file, or from standard input for "-":
// surrounding whitespace removed, at most 64 KiB, not empty.
Result<std::string> read_token_file(const std::string& path) {
  constexpr std::size_t max_token_size = 64 * 1024;
  const std::string what = path == "-" ? std::string("standard input") : "the token file " + path;
  std::string token;
  int fd = path == "-" ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("cannot read " + what + " (--token-file): " + std::strerror(errno));
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      if (fd != STDIN_FILENO) ::close(fd);
      return fail("cannot read " + what + " (--token-file): " + std::strerror(err));
    }
    if (n == 0) break;
    token.append(buf, static_cast<std::size_t>(n));
    if (token.size() > max_token_size) {
      if (fd != STDIN_FILENO) ::close(fd);
      return fail(what + " (--token-file) is larger than 64 KiB: it should hold one bearer token");
    }
  }
  if (fd != STDIN_FILENO) ::close(fd);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  std::size_t start = 0;
  while (start < token.size() && std::isspace(static_cast<unsigned char>(token[start]))) ++start;
  token.erase(0, start);
  if (token.empty()) return fail(what + " (--token-file) is empty: it should hold the service-account bearer token");
  if (token.find_first_of(" \t\r\n") != std::string::npos)
    return fail(what + " (--token-file) holds more than one line or word: it should hold one bearer token");
  return token;
}

// SIGINT, SIGTERM and SIGHUP while the proxy serves: the first one stops it;
// with a child command running, each one is passed on to the child instead.
// The handler runs on an I/O thread and the state it touches is shared with
// it, so nothing it reaches lives on the stack of run_proxy(); stop() returns
// only after the signal set was cancelled on the I/O context, so no handler
// runs once the command has returned. The signals stay caught until the watch
// is gone: a second one during the shutdown (`timeout` and service managers
// signal the process and then its whole group) must not end the process by
// the default action, with 143 in place of the clean stop's 0.
class SignalWatch : public std::enable_shared_from_this<SignalWatch> {
 public:
  static std::shared_ptr<SignalWatch> start(asio::io_context& io) {
    auto w = std::shared_ptr<SignalWatch>(new SignalWatch(io));
    w->arm();
    return w;
  }

  void forward_to(pid_t child) { child_.store(child); }

  // Blocks until a signal asks the proxy to stop; returns the exit status.
  int wait() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return stop_requested_; });
    return 0;
  }

  void stop() {
    auto done = std::make_shared<std::promise<void>>();
    auto finished = done->get_future();
    asio::post(io_, [self = shared_from_this(), done] {
      error_code ignored;
      self->signals_.cancel(ignored);  // later signals are queued in the set, and dropped with it
      done->set_value();
    });
    // The host's I/O threads run until the command returns; the bound only
    // keeps a wedged I/O thread from hanging the exit (the state is shared,
    // so a late cancellation is still safe).
    finished.wait_for(std::chrono::seconds(10));
  }

 private:
  explicit SignalWatch(asio::io_context& io) : io_(io), signals_(io, SIGINT, SIGTERM, SIGHUP) {}

  void arm() {
    signals_.async_wait([self = shared_from_this()](error_code ec, int sig) { self->on_signal(ec, sig); });
  }

  void on_signal(error_code ec, int sig) {
    if (ec) return;
    if (pid_t c = child_.load()) {
      ::kill(c, sig);  // the command decides; we stop when it exits
      return arm();
    }
    {
      std::lock_guard lock(mutex_);
      stop_requested_ = true;
    }
    cv_.notify_all();
  }

  asio::io_context& io_;
  asio::signal_set signals_;
  std::atomic<pid_t> child_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_requested_ = false;
};

}  // namespace

CLI::App* ProxyCommand::add_to(CLI::App& root) noexcept try {
  auto* sub = root.add_subcommand("proxy", "Open local kubectl endpoints for connected clusters");
  sub->add_option("-n,--name", opts_.names,
                  "Connected cluster: NAME (in the group of -g) or GROUP/NAME; repeat for several clusters, each on its "
                  "own local port and context")
      ->allow_extra_args(false);
  sub->add_flag("--all", opts_.all,
                "Every connected cluster you can read in the subscription (in the group of -g, when given)");
  sub->add_option("-g,--resource-group", opts_.resource_group, "Resource group of the clusters named without GROUP/");
  sub->add_option("--subscription", opts_.subscription, "Subscription ID")->envname("AZURE_SUBSCRIPTION_ID");
  sub->add_option("--token", opts_.token,
                  "Service-account bearer token: forwarded unchanged instead of your Entra token (other local users can "
                  "read it in the process list: prefer --token-file)");
  sub->add_option("--token-file", opts_.token_file,
                  "File holding the service-account bearer token ('-': read it from standard input)");
  sub->add_option("-f,--file", opts_.file,
                  "Kubeconfig to update (default: $KUBECONFIG's first path or ~/.kube/config; '-' prints it)");
  sub->add_option("--port", opts_.port,
                  "Local port for the first cluster's API-server endpoint; further clusters take the next free ports "
                  "above it (0: any free port for each)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  sub->add_option("--kube-context", opts_.kube_context, "Name of the kubeconfig context (one cluster only; default: the cluster name)");
  sub->add_option("--endpoint", opts_.endpoint, "Relay management endpoint, https://HOST[:PORT]")
      ->envname("CONNECTEDK8S_ENDPOINT");
  sub->add_option("--ca-file", opts_.ca_file, "CA bundle that verifies the relay (default: $SSL_CERT_FILE, else the system store)")
      ->envname("CONNECTEDK8S_CA_FILE");
  sub->add_option("--authority-ca-file", opts_.authority_ca_file,
                  "CA bundle that verifies the identity provider (default: $SSL_CERT_FILE, else the system store)")
      ->envname("CONNECTEDK8S_AUTHORITY_CA_FILE");
  sub->add_option("--ready-file", opts_.ready_file, "Write this file (JSON) once the proxy is ready");
  sub->add_option("-o,--output", opts_.output, "Progress format on stderr: text or json (with --log-format json, every stderr line is JSON)")
      ->check(CLI::IsMember({"text", "json"}));
  sub->add_option("--auth-method", opts_.auth_method,
                  "Sign-in: auto, client-secret, client-certificate, workload-identity, github-actions, azure-cli, device-code")
      ->envname("CONNECTEDK8S_AUTH_METHOD")->capture_default_str();
  sub->add_option("--management-resource", opts_.management_resource,
                  "Token audience of the relay's management API (default: the one it publishes at /metadata/endpoints)")
      ->envname("CONNECTEDK8S_MANAGEMENT_RESOURCE");
  sub->add_option("--server-app-id", opts_.server_app_id, "Entra application the cluster's agent accepts tokens for")
      ->envname("CONNECTEDK8S_SERVER_APP_ID")->capture_default_str();
  sub->add_flag("--allow-http-loopback-authority", opts_.allow_http_loopback_authority,
                "Accept an http:// identity provider on a loopback address (local test setups only)")
      ->envname("CONNECTEDK8S_ALLOW_HTTP_LOOPBACK_AUTHORITY");
  sub->add_flag(
         "--pop", opts_.pop,
         "Use a proof-of-possession token bound to a key this process holds, and sign every request for this cluster "
         "with it (the agent must run with --pop)")
      ->envname("CONNECTEDK8S_POP");
  sub->add_option("--refresh-interval", opts_.refresh_seconds,
                  "Longest time in seconds between token checks (each token is also renewed at half its lifetime)")
      ->check(CLI::Range(1, 3600))->capture_default_str();
  sub->add_option("--transport", opts_.transport,
                  "How to reach the cluster's agent through the relay; either way TLS runs end to end with it, whose key "
                  "the relay's registry pins (the relay sees ciphertext only). tls: a raw TCP leg the relay splices; "
                  "ws: a WebSocket in Azure Relay Hybrid Connections' shape (through HTTP proxies, and Azure Relay)")
      ->check(CLI::IsMember({"tls", "ws"}))->envname("CONNECTEDK8S_TRANSPORT")->capture_default_str();
  sub->add_option("command", opts_.command,
                  "After '--': run this command with KUBECONFIG set (every cluster's context), then exit with its status");
  status_ = sub->add_subcommand("status", "List the proxies you run: PID, clusters, local addresses, kubeconfig contexts");
  status_->add_option("-o,--output", status_output_, "text or json")->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  return sub;
} catch (...) {
  return nullptr;
}

int ProxyCommand::run() noexcept {
  try {
    if (status_ && status_->parsed()) return run_status();
    return run_proxy();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "connectedk8s proxy: %s\n", e.what());
    return 1;
  }
}

int ProxyCommand::run_status() {
  auto dir = RuntimeDirectory::open();
  if (!dir) {
    std::fprintf(stderr, "connectedk8s proxy status: %s\n", dir.error().c_str());
    return 1;
  }
  const auto running = dir->running();
  if (status_output_ == "json") std::cout << status_json(running).dump(2) << "\n";
  else std::cout << status_text(running);
  std::cout << std::flush;
  return 0;
}

namespace {

// One served cluster: its relay token and tunnel, its local endpoint, and the
// refresher that keeps its relay token fresh.
struct ClusterLink {
  ServedCluster served;
  std::shared_ptr<ClusterCredential> details;
  std::shared_ptr<ForwardedToken> relay_token = std::make_shared<ForwardedToken>();
  std::shared_ptr<std::atomic<std::chrono::system_clock::time_point>> relay_expiry;
  std::shared_ptr<Refresher> refresher;
  std::shared_ptr<TunnelClient> client;
  std::shared_ptr<LocalPolicy> policy;
  std::shared_ptr<tls::TlsServer> server;
  // Idle tunnel streams shared by the local endpoint's connections.
  std::shared_ptr<http::UpstreamPool> upstreams;
  std::string server_url;
  std::string secret;  // the local credential its kubeconfig user holds
};

// Removes the private directory of `-- COMMAND` (and of `-f -` with several
// clusters) however the command ends.
struct PrivateDir {
  std::string path;
  ~PrivateDir() {
    if (path.empty()) return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  Result<void> create() {
    char tmpl[] = "/tmp/connectedk8s-XXXXXX";
    if (!::mkdtemp(tmpl)) return fail("cannot create a private temporary directory");
    path = tmpl;
    return {};
  }
};

// Stops every refresher before the state its renewals use goes away,
// whoever holds the last reference.
struct StopRefreshers {
  std::shared_ptr<RefreshPool> pool;
  std::vector<std::shared_ptr<Refresher>> all;
  ~StopRefreshers() {
    for (auto& r : all) r->stop();
    if (pool) pool->shutdown();
  }
};

}  // namespace

int ProxyCommand::run_proxy() {
  auto logger = host_.logger();
  auto& io = host_.io_context();
  const auto& caps = host_.capabilities();
  Progress progress(opts_.output == "json");
  if (!opts_.token.empty() && !opts_.token_file.empty()) {
    progress.failed("--token and --token-file both give the service-account token: use one of them");
    return 1;
  }
  if (!opts_.token_file.empty()) {
    auto t = read_token_file(opts_.token_file);
    if (!t) {
      progress.failed(t.error());
      return 1;
    }
    opts_.token = std::move(t.value());
  } else if (!opts_.token.empty()) {
    logger->warn(
        "--token puts the service-account token on the command line, where other local users can read it (ps, "
        "/proc); use --token-file FILE, or --token-file - to read it from standard input");
  }
  const bool token_mode = !opts_.token.empty();
  const bool ci_mode = !opts_.command.empty();

  auto fail_with = [&](const std::string& message) {
    progress.failed(message);
    return 1;
  };
  if (opts_.pop && token_mode)
    return fail_with(
        "--pop signs Entra ID tokens; a service-account token (--token, --token-file) cannot be used with it");
  if (opts_.all && !opts_.names.empty())
    return fail_with("--all and -n both choose the clusters: use one of them");
  if (opts_.all && !opts_.kube_context.empty())
    return fail_with("--kube-context names one context; with --all each context is named after its cluster");
  if (opts_.subscription.empty()) return fail_with("no subscription: pass --subscription or set AZURE_SUBSCRIPTION_ID");
  if (opts_.endpoint.empty()) return fail_with("no management endpoint: pass --endpoint or set CONNECTEDK8S_ENDPOINT");
  std::vector<ServedCluster> clusters;
  if (!opts_.all) {
    auto refs = select_clusters(opts_.names, opts_.resource_group, opts_.subscription);
    if (!refs) return fail_with(refs.error());
    auto named = name_contexts(refs.value(), opts_.kube_context);
    if (!named) return fail_with(named.error());
    clusters = std::move(named.value());
  }
  auto transport = caps.transport(opts_.transport);
  auto kubeconfig = caps.kubeconfig("yaml");
  auto credential_cap = caps.credential("entra");
  if (!transport || !kubeconfig || !credential_cap)
    return fail_with("a module is missing (transport:" + opts_.transport +
                     ", kubeconfig:yaml and credential:entra are needed); see 'connectedk8s plugin list'");

  // Where the contexts go: the user's kubeconfig, a private one for the
  // command after "--", or standard output.
  fs::path kubeconfig_path;
  PrivateDir ci_dir;
  if (ci_mode) {
    if (auto r = ci_dir.create(); !r) return fail_with(r.error());
    kubeconfig_path = fs::path(ci_dir.path) / "kubeconfig";
  } else if (opts_.file != "-") {
    kubeconfig_path = opts_.file.empty() ? default_kubeconfig() : fs::path(opts_.file);
    std::error_code ec;
    auto absolute = fs::weakly_canonical(fs::absolute(kubeconfig_path, ec), ec);
    if (!ec) kubeconfig_path = absolute;
  }

  // This proxy among the others the user runs: refused when it would take a
  // cluster one of them serves into the same kubeconfig or on the same port;
  // otherwise its state file lists it for `proxy status` until it exits.
  auto runtime = RuntimeDirectory::open();
  if (!runtime) logger->warn("'connectedk8s proxy status' will not list this proxy: {}", runtime.error());
  std::unique_ptr<OwnRecord> record;
  auto claim = [&]() -> std::optional<std::string> {
    if (!runtime) return std::nullopt;
    auto lock = runtime->lock();
    if (!lock) {
      logger->warn("'connectedk8s proxy status' will not list this proxy: {}", lock.error());
      return std::nullopt;
    }
    std::vector<ClusterRef> refs;
    for (const auto& c : clusters) refs.push_back(c.ref);
    const std::string shared_kubeconfig = ci_mode ? std::string() : kubeconfig_path.string();
    if (auto c = collision(runtime->running(), opts_.endpoint, refs, shared_kubeconfig, opts_.port)) return c;
    RunningProxy me;
    me.pid = ::getpid();
    me.process_start = process_start_time(me.pid);
    me.started = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    me.endpoint = opts_.endpoint;
    me.kubeconfig = kubeconfig_path.string();
    me.private_kubeconfig = ci_mode;
    me.port = opts_.port;
    for (const auto& c : clusters) me.clusters.push_back({c.ref, c.context, {}});
    record = std::make_unique<OwnRecord>(runtime.value(), std::move(me));
    if (auto w = record->update(); !w) logger->warn("'connectedk8s proxy status' will not list this proxy: {}", w.error());
    return std::nullopt;
  };
  if (!opts_.all)
    if (auto refused = claim()) return fail_with(*refused);

  // 1. Sign in, once for every cluster: one credential, one token cache.
  progress.begin("sign-in", "Signing in to Microsoft Entra ID");
  nlohmann::json cred_options{{"method", opts_.auth_method},
                              {"allow_http_loopback", opts_.allow_http_loopback_authority},
                              {"ca_file", opts_.authority_ca_file},
                              {"device_code_prompt", opts_.output == "json" ? "json" : "text"}};
  auto credential_made = credential_cap->create(cred_options);
  if (!credential_made) return fail_with(credential_made.error());
  std::shared_ptr<TokenCredential> credential = credential_made.value();
  // The relay's management API has its own audience; an ARM token is never sent to it.
  if (opts_.management_resource.empty()) {
    auto audience = discover_management_audience(ManagementClientOptions{opts_.endpoint, opts_.ca_file});
    if (!audience) return fail_with(audience.error());
    opts_.management_resource = audience.value();
  } else if (is_arm_audience(opts_.management_resource)) {
    return fail_with("--management-resource " + opts_.management_resource +
                     " is Azure Resource Manager's audience: a token for it is good for all your subscriptions and is "
                     "never sent to a relay; use the relay's application ID (leave the option out to ask the relay)");
  }
  auto management_token = credential->get_token(opts_.management_resource);
  if (!management_token) return fail_with(management_token.error());
  // Every cluster's agent accepts tokens for the same server application:
  // one forwarded token serves them all.
  auto forwarded = std::make_shared<ForwardedToken>();
  std::chrono::system_clock::time_point forwarded_expiry = std::chrono::system_clock::time_point::max();
  if (token_mode) {
    forwarded->set(opts_.token);
  } else {
    auto cluster_token = opts_.pop ? credential->get_pop_token(opts_.server_app_id) : credential->get_token(opts_.server_app_id);
    if (!cluster_token) return fail_with(cluster_token.error());
    forwarded->set(cluster_token->token);
    forwarded_expiry = cluster_token->expires_on;
  }
  // With --pop every request is signed with the key the token is bound to,
  // for its own cluster only.
  std::shared_ptr<PopSigner> pop_signer;
  if (opts_.pop) {
    pop_signer = credential->pop_signer();
    if (!pop_signer) return fail_with("the credential module holds no proof-of-possession key");
  }
  progress.done(credential->method() + (opts_.pop ? ", proof-of-possession" : ""));

  ManagementClientOptions mgmt{opts_.endpoint, opts_.ca_file};
  if (opts_.all) {
    const std::string scope =
        opts_.resource_group.empty() ? "subscription " + opts_.subscription : "resource group " + opts_.resource_group;
    progress.begin("clusters", "Listing the connected clusters you can read in " + scope);
    auto listed = list_connected_clusters(mgmt, opts_.subscription, opts_.resource_group, management_token->token);
    if (!listed) return fail_with(listed.error());
    if (listed->empty()) return fail_with("you can read no connected cluster in " + scope);
    auto named = name_contexts(listed.value(), "");
    if (!named) return fail_with(named.error());
    clusters = std::move(named.value());
    std::string names;
    for (const auto& c : clusters) names += (names.empty() ? "" : ", ") + display_name(c.ref);
    progress.done(names);
    if (auto refused = claim()) return fail_with(*refused);
  }

  // 2. Each cluster's connection details. With --all a cluster you may read
  // but not connect to is left out; a cluster named with -n must work.
  progress.begin("credentials", clusters.size() == 1 ? "Fetching the connection details of cluster " + clusters[0].ref.name
                                                     : "Fetching the connection details of " +
                                                           std::to_string(clusters.size()) + " clusters");
  std::vector<ClusterLink> links;
  for (const auto& c : clusters) {
    auto details = list_cluster_user_credential(mgmt, c.ref, management_token->token, token_mode);
    if (!details) {
      if (!opts_.all) return fail_with(clusters.size() == 1 ? details.error() : display_name(c.ref) + ": " + details.error());
      logger->warn("cluster {} left out: {}", display_name(c.ref), details.error());
      continue;
    }
    ClusterLink link;
    link.served = c;
    link.details = std::make_shared<ClusterCredential>(std::move(details.value()));
    link.relay_token->set(link.details->token);
    link.relay_expiry =
        std::make_shared<std::atomic<std::chrono::system_clock::time_point>>(link.details->expires_on);
    links.push_back(std::move(link));
  }
  if (links.empty()) return fail_with("none of the clusters you can read lets you connect (see the warnings above)");
  {
    std::set<std::string> relays;
    for (const auto& l : links) relays.insert(l.details->relay);
    std::string detail;
    for (const auto& r : relays) detail += (detail.empty() ? "relay " : ", ") + r;
    progress.done(detail);
  }

  // Keep the tokens fresh: each one is renewed at renew_at() (5 minutes
  // before expiry for the access token, 10 for a relay token, or at half the
  // lifetime of a shorter-lived one), whatever --refresh-interval says, and a
  // cluster's relay token at once when the relay refused it.
  using namespace std::chrono_literals;
  // One pool of renewal threads for every refresher: a few, so that one
  // cluster's slow renewal does not hold up the others.
  auto refresh_pool = std::make_shared<RefreshPool>(static_cast<unsigned>(std::min<std::size_t>(4, links.size() + 1)));
  StopRefreshers stop_refreshers;
  stop_refreshers.pool = refresh_pool;
  if (!token_mode) {
    auto forwarded_issued = std::chrono::system_clock::now();
    stop_refreshers.all.push_back(std::make_shared<Refresher>(
        std::chrono::seconds(opts_.refresh_seconds),
        [forwarded, forwarded_issued, forwarded_expiry, credential, logger, pop = opts_.pop,
         app = opts_.server_app_id](bool) mutable {
          auto now = std::chrono::system_clock::now();
          if (now >= renew_at(forwarded_issued, forwarded_expiry, 5min)) {
            if (auto t = pop ? credential->get_pop_token(app) : credential->get_token(app)) {
              forwarded->set(t->token);
              forwarded_expiry = t->expires_on;
              forwarded_issued = now;
              logger->info("access token renewed; valid until {}", std::chrono::system_clock::to_time_t(t->expires_on));
            } else {
              logger->warn("cannot renew the access token: {}", t.error());
            }
          }
          auto next = renew_at(forwarded_issued, forwarded_expiry, 5min);
          return next <= now ? now + 2s : next;  // failed: try again shortly
        },
        refresh_pool));
  }
  for (auto& link : links) {
    link.refresher = std::make_shared<Refresher>(
        std::chrono::seconds(opts_.refresh_seconds),
        [credential, logger, mgmt, token_mode, resource = opts_.management_resource, ref = link.served.ref,
         relay_token = link.relay_token, details = link.details, relay_expiry = link.relay_expiry,
         relay_issued = std::chrono::system_clock::now(),
         last_forced = std::chrono::system_clock::time_point{}](bool forced) mutable {
          auto now = std::chrono::system_clock::now();
          // A refused token forces a renewal, at most one every 2 s however
          // many requests were refused.
          const bool force = forced && now - last_forced >= 2s;
          if (force || now >= renew_at(relay_issued, details->expires_on, 10min)) {
            if (force) last_forced = now;
            auto mt = credential->get_token(resource);
            if (!mt) {
              logger->warn("cannot renew the relay token for {}: {}", display_name(ref), mt.error());
            } else if (auto d = list_cluster_user_credential(mgmt, ref, mt->token, token_mode)) {
              relay_token->set(d->token);
              details->expires_on = d->expires_on;
              relay_expiry->store(d->expires_on);
              relay_issued = now;
              logger->info("relay token renewed for {}; valid until {}", display_name(ref),
                           std::chrono::system_clock::to_time_t(d->expires_on));
            } else {
              logger->warn("cannot renew the relay token for {}: {}", display_name(ref), d.error());
            }
          }
          auto next = renew_at(relay_issued, details->expires_on, 10min);
          return next <= now ? now + 2s : next;
        },
        refresh_pool);
    stop_refreshers.all.push_back(link.refresher);
  }

  // 3. The tunnels. Each cluster's session is made by its first stream; with
  // one cluster the proxy makes it now, so a relay or agent problem is
  // reported before the kubeconfig is written.
  for (auto& link : links) {
    RelayEndpoint endpoint{"wss://" + link.details->relay + "/$hc/" + link.details->hybrid_connection, opts_.ca_file,
                           false, link.details->agent_key_pins};
    std::weak_ptr<Refresher> weak_refresher = link.refresher;
    // The tunnel asks for the token before every dial and renewal; one that
    // has expired is renewed at once (the refresher may have failed or be late).
    link.client = transport->dial(endpoint, [relay_token = link.relay_token, expiry = link.relay_expiry, weak_refresher] {
      if (std::chrono::system_clock::now() >= expiry->load())
        if (auto r = weak_refresher.lock()) r->renew_now(nullptr);
      return relay_token->get();
    });
    if (!link.client) return fail_with("the transport module could not dial " + endpoint.url);
  }
  auto close_clients = [&] {
    for (auto& l : links) l.client->close();
  };
  if (links.size() == 1) {
    auto& link = links.front();
    progress.begin("dial", "Connecting to the cluster's agent through the relay (end to end)");
    std::promise<error_code> connected;
    link.client->async_connect([&](error_code ec) { connected.set_value(ec); });
    auto f = connected.get_future();
    if (f.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      close_clients();
      return fail_with("timed out reaching the cluster's agent through the relay at " + link.details->relay);
    }
    if (auto ec = f.get()) {
      close_clients();
      return fail_with("cannot reach the cluster's agent through the relay at " + link.details->relay + ": " +
                       ec.message() + " (the reason is logged above)");
    }
    progress.done();
  }

  // 4. Listen locally: the first cluster on --port, the next ones on the next
  // free ports above the previous one (or any free port with --port 0).
  progress.begin("listen", "Starting the local endpoint" + std::string(links.size() == 1 ? "" : "s") +
                               " on 127.0.0.1:" + std::to_string(opts_.port));
  auto ca = tls::load_or_create_ca(host_.config_dir() / "proxy", "connectedk8s local CA");
  if (!ca) return fail_with("local CA: " + ca.error());
  auto leaf = tls::issue_server_cert(ca.value(), {"localhost"}, {"127.0.0.1"}, 30);
  if (!leaf) return fail_with("local certificate: " + leaf.error());
  auto server_ctx = tls::make_server_context_pem(leaf->cert, leaf->key);
  if (!server_ctx) return fail_with("local TLS: " + server_ctx.error());
  tls::disable_session_tickets(*server_ctx.value());
  auto close_servers = [&] {
    for (auto& l : links)
      if (l.server) l.server->close();
  };
  http::Limits limits;
  unsigned next_port = opts_.port;
  for (std::size_t i = 0; i < links.size(); ++i) {
    auto& link = links[i];
    PopSigning pop;
    if (pop_signer) pop = {pop_signer, cluster_resource_id(link.served.ref.subscription, link.served.ref.resource_group,
                                                           link.served.ref.name)};
    link.secret = random_secret();
    link.policy = std::make_shared<LocalPolicy>(link.secret, forwarded, logger, pop);
    // A stream the relay refuses because the tunnel's connect token expired
    // (HTTP 401 on a redial) is opened once more after the refresher fetched
    // a new token from the management API.
    http::UpstreamConnector connector = [io = &io, client = link.client,
                                         weak_refresher = std::weak_ptr<Refresher>(link.refresher)](http::ConnectHandler done) {
      open_stream(io, client, weak_refresher, std::move(done), false);
    };
    // A relay replica that dies takes the tunnel session with it; the next
    // stream opens on a new session. Reads in flight are sent again there,
    // and watches continue from the last event kubectl received.
    http::Recovery recovery;
    recovery.retry_safe = true;
    recovery.resume_watches = true;
    // A kubectl connection held open between requests holds no tunnel stream
    // (nor, at the agent, the stream's forwarding state): streams go back to
    // a pool after each clean exchange and serve the next request of any
    // connection. They carry no identity: the token travels per request.
    http::PoolOptions pool_options;
    pool_options.max_idle = kIdleTunnelStreams;
    link.upstreams = http::UpstreamPool::create(io, connector, pool_options, logger);
    auto serve = [policy = link.policy, engine = http::Server::create(io, link.upstreams, limits, logger, recovery)](
                     StreamPtr s) { engine->serve(std::move(s), policy); };
    // Later clusters skip busy ports; after 100 busy ones, any free port.
    for (int attempt = 0;; ++attempt) {
      const unsigned port = next_port > 65535 ? 0 : next_port;
      auto server = tls::TlsServer::listen(io, "127.0.0.1", static_cast<unsigned short>(port), server_ctx.value(), serve,
                                           logger);
      if (server) {
        link.server = server.value();
        break;
      }
      const int err = probe_listen_error("127.0.0.1", port);
      if (i == 0 || port == 0 || err != EADDRINUSE) {
        close_servers();
        close_clients();
        return fail_with(listen_failure_message(err, "127.0.0.1", port, server.error()));
      }
      next_port = attempt >= 100 ? 0 : next_port + 1;
    }
    link.server_url = "https://127.0.0.1:" + std::to_string(link.server->port());
    if (opts_.port != 0) next_port = link.server->port() + 1u;
  }
  progress.done();

  // 5. Kubeconfig: one context per cluster; the first is the current one.
  auto entry_of = [&](const ClusterLink& l, bool current) {
    KubeconfigEntry entry;
    entry.cluster = l.served.context;
    entry.server = l.server_url;
    entry.certificate_authority_data = ca->cert;
    entry.user = l.served.user;
    entry.token = l.secret;
    entry.context = l.served.context;
    entry.set_current = current;
    return entry;
  };
  progress.begin("kubeconfig", kubeconfig_path.empty() ? "Printing the kubeconfig"
                                                       : "Writing the kubeconfig " + kubeconfig_path.string());
  auto write_failed = [&](const std::string& message) {
    close_servers();
    close_clients();
    return fail_with(message);
  };
  if (kubeconfig_path.empty() && links.size() == 1) {
    auto text = kubeconfig->render(entry_of(links.front(), true));
    if (!text) return write_failed(text.error());
    std::cout << text.value() << std::flush;
  } else if (kubeconfig_path.empty()) {
    // Several contexts on stdout: merged into a private file, then printed.
    PrivateDir printed;
    if (auto r = printed.create(); !r) return write_failed(r.error());
    const fs::path file = fs::path(printed.path) / "kubeconfig";
    for (std::size_t i = 0; i < links.size(); ++i)
      if (auto r = kubeconfig->merge(file, entry_of(links[i], i == 0)); !r) return write_failed(r.error());
    std::ifstream in(file);
    std::cout << in.rdbuf() << std::flush;
  } else {
    for (std::size_t i = 0; i < links.size(); ++i)
      if (auto r = kubeconfig->merge(kubeconfig_path, entry_of(links[i], i == 0)); !r) return write_failed(r.error());
  }
  progress.done();

  const std::string where = kubeconfig_path.empty() ? "stdout" : kubeconfig_path.string();
  if (record) {
    record->record().state = "ready";
    record->record().clusters.clear();
    for (const auto& l : links) record->record().clusters.push_back({l.served.ref, l.served.context, l.server_url});
    if (auto w = record->update(); !w) logger->warn("'connectedk8s proxy status' will not list this proxy: {}", w.error());
  }
  nlohmann::json served = nlohmann::json::array();
  for (const auto& l : links)
    served.push_back({{"name", l.served.ref.name},
                      {"resourceGroup", l.served.ref.resource_group},
                      {"context", l.served.context},
                      {"server", l.server_url}});
  const auto& first = links.front();
  std::string ready_text;
  if (links.size() == 1) {
    ready_text = "Proxy is listening on " + first.server_url + " \u2014 context " + first.served.context + " in " + where;
  } else {
    ready_text = "Proxy is listening for " + std::to_string(links.size()) + " clusters in " + where + ":";
    for (const auto& l : links) ready_text += " context " + l.served.context + " on " + l.server_url + ";";
    ready_text.pop_back();
  }
  // Signals are watched before anyone is told the proxy is ready: a stop
  // asked for at once must be a clean stop, not the default end of the process.
  auto signals = SignalWatch::start(io);
  progress.event("ready", ready_text,
                 {{"server", first.server_url}, {"context", first.served.context}, {"kubeconfig", where}, {"clusters", served}});
  if (!opts_.ready_file.empty()) {
    auto tmp = opts_.ready_file + ".tmp";
    std::ofstream(tmp) << nlohmann::json{{"server", first.server_url}, {"context", first.served.context},
                                         {"kubeconfig", where}, {"pid", ::getpid()}, {"clusters", served}}
                              .dump()
                       << "\n";
    std::rename(tmp.c_str(), opts_.ready_file.c_str());
  }

  // 6. Serve until a signal, or run the command.
  int rc = 0;
  if (ci_mode) {
    std::vector<std::string> secrets{forwarded->get(), management_token->token};
    for (const auto& l : links) secrets.push_back(l.relay_token->get());
    auto pid = spawn_with_kubeconfig(opts_.command, kubeconfig_path.string(), secrets);
    if (!pid) {
      rc = 127;
      progress.failed(pid.error());
    } else {
      signals->forward_to(pid.value());
      rc = wait_for_exit(pid.value());
      signals->forward_to(0);
    }
  } else {
    rc = signals->wait();
  }

  // 7. Shut down: stop watching signals, stop accepting, let in-flight
  // requests finish briefly (5 s for all clusters together).
  signals->stop();
  close_servers();
  int in_flight = 0;
  for (const auto& l : links) in_flight += l.policy->in_flight();
  if (in_flight > 0) logger->info("stopping: {} request(s) in flight may finish within 5 s", in_flight);
  const auto idle_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (const auto& l : links) {
    auto left = idle_deadline - std::chrono::steady_clock::now();
    if (!l.policy->wait_idle(std::max<std::chrono::steady_clock::duration>(left, std::chrono::steady_clock::duration::zero())))
      logger->info("stopping with {} request(s) to {} still in flight", l.policy->in_flight(), display_name(l.served.ref));
  }
  for (auto& l : links)
    if (l.upstreams) l.upstreams->close();
  close_clients();
  return rc;
}

}  // namespace clusterconnect::proxy
