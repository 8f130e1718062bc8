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
#include "management_client.hpp"
#include "progress.hpp"
#include "stream_opener.hpp"
#include "token_refresher.hpp"

namespace fs = std::filesystem;

namespace clusterconnect::proxy {
namespace {

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
// runs once the command has returned.
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
      self->signals_.cancel(ignored);
      self->signals_.clear(ignored);
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
  auto* sub = root.add_subcommand("proxy", "Open a local kubectl endpoint for a connected cluster");
  sub->add_option("-n,--name", opts_.name, "Name of the connected cluster")->required();
  sub->add_option("-g,--resource-group", opts_.resource_group, "Resource group of the connected cluster")->required();
  sub->add_option("--subscription", opts_.subscription, "Subscription ID")->envname("AZURE_SUBSCRIPTION_ID");
  sub->add_option("--token", opts_.token,
                  "Service-account bearer token: forwarded unchanged instead of your Entra token (other local users can "
                  "read it in the process list: prefer --token-file)");
  sub->add_option("--token-file", opts_.token_file,
                  "File holding the service-account bearer token ('-': read it from standard input)");
  sub->add_option("-f,--file", opts_.file,
                  "Kubeconfig to update (default: $KUBECONFIG's first path or ~/.kube/config; '-' prints it)");
  sub->add_option("--port", opts_.port, "Local port for the API-server endpoint (0: any free port)")->check(CLI::Range(0, 65535))
      ->capture_default_str();
  sub->add_option("--kube-context", opts_.kube_context, "Name of the kubeconfig context (default: the cluster name)");
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
                  "Sign-in: auto, client-secret, client-certificate, workload-identity, azure-cli, device-code")
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
  sub->add_option("command", opts_.command, "After '--': run this command with KUBECONFIG set, then exit with its status");
  return sub;
} catch (...) {
  return nullptr;
}

int ProxyCommand::run() noexcept {
  try {
    return run_proxy();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "connectedk8s proxy: %s\n", e.what());
    return 1;
  }
}

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
  const std::string context = opts_.kube_context.empty() ? opts_.name : opts_.kube_context;

  auto fail_with = [&](const std::string& message) {
    progress.failed(message);
    return 1;
  };
  if (opts_.pop && token_mode)
    return fail_with(
        "--pop signs Entra ID tokens; a service-account token (--token, --token-file) cannot be used with it");
  if (opts_.subscription.empty()) return fail_with("no subscription: pass --subscription or set AZURE_SUBSCRIPTION_ID");
  if (opts_.endpoint.empty()) return fail_with("no management endpoint: pass --endpoint or set CONNECTEDK8S_ENDPOINT");
  auto transport = caps.transport(opts_.transport);
  auto kubeconfig = caps.kubeconfig("yaml");
  auto credential_cap = caps.credential("entra");
  if (!transport || !kubeconfig || !credential_cap)
    return fail_with("a module is missing (transport:" + opts_.transport +
                     ", kubeconfig:yaml and credential:entra are needed); see 'connectedk8s plugin list'");

  // 1. Sign in.
  progress.begin("sign-in", "Signing in to Microsoft Entra ID");
  nlohmann::json cred_options{{"method", opts_.auth_method},
                              {"allow_http_loopback", opts_.allow_http_loopback_authority},
                              {"ca_file", opts_.authority_ca_file},
                              {"device_code_prompt", opts_.output == "json" ? "json" : "text"}};
  auto credential = credential_cap->create(cred_options);
  if (!credential) return fail_with(credential.error());
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
  auto management_token = credential.value()->get_token(opts_.management_resource);
  if (!management_token) return fail_with(management_token.error());
  auto forwarded = std::make_shared<ForwardedToken>();
  std::chrono::system_clock::time_point forwarded_expiry = std::chrono::system_clock::time_point::max();
  if (token_mode) {
    forwarded->set(opts_.token);
  } else {
    auto cluster_token = opts_.pop ? credential.value()->get_pop_token(opts_.server_app_id)
                                   : credential.value()->get_token(opts_.server_app_id);
    if (!cluster_token) return fail_with(cluster_token.error());
    forwarded->set(cluster_token->token);
    forwarded_expiry = cluster_token->expires_on;
  }
  // With --pop every request is signed with the key the token is bound to,
  // for this cluster only.
  PopSigning pop;
  if (opts_.pop) {
    pop.signer = credential.value()->pop_signer();
    if (!pop.signer) return fail_with("the credential module holds no proof-of-possession key");
    pop.target = cluster_resource_id(opts_.subscription, opts_.resource_group, opts_.name);
  }
  progress.done(credential.value()->method() + (opts_.pop ? ", proof-of-possession" : ""));

  // 2. Cluster connection details.
  progress.begin("credentials", "Fetching the connection details of cluster " + opts_.name);
  ManagementClientOptions mgmt{opts_.endpoint, opts_.ca_file};
  ClusterRef cluster{opts_.subscription, opts_.resource_group, opts_.name};
  auto details = list_cluster_user_credential(mgmt, cluster, management_token->token, token_mode);
  if (!details) return fail_with(details.error());
  auto relay_token = std::make_shared<ForwardedToken>();
  relay_token->set(details->token);
  auto relay_expiry = std::make_shared<std::atomic<std::chrono::system_clock::time_point>>(details->expires_on);
  progress.done("relay " + details->relay);

  // Keep the tokens fresh: each one is renewed at renew_at() (5 minutes
  // before expiry for the access token, 10 for the relay token, or at half
  // the lifetime of a shorter-lived one), whatever --refresh-interval says,
  // and the relay token at once when the relay refused it.
  using namespace std::chrono_literals;
  auto forwarded_issued = std::chrono::system_clock::now();
  auto relay_issued = forwarded_issued;
  auto last_forced = std::chrono::system_clock::time_point{};
  auto refresher = std::make_shared<Refresher>(std::chrono::seconds(opts_.refresh_seconds), [&, credential = credential.value()](
                                                                                                bool forced) {
    auto now = std::chrono::system_clock::now();
    auto next_forwarded = std::chrono::system_clock::time_point::max();
    if (!token_mode) {
      if (now >= renew_at(forwarded_issued, forwarded_expiry, 5min)) {
        if (auto t = opts_.pop ? credential->get_pop_token(opts_.server_app_id)
                               : credential->get_token(opts_.server_app_id)) {
          forwarded->set(t->token);
          forwarded_expiry = t->expires_on;
          forwarded_issued = now;
          logger->info("access token renewed; valid until {}", std::chrono::system_clock::to_time_t(t->expires_on));
        } else {
          logger->warn("cannot renew the access token: {}", t.error());
        }
      }
      next_forwarded = renew_at(forwarded_issued, forwarded_expiry, 5min);
      if (next_forwarded <= now) next_forwarded = now + 2s;  // failed: try again shortly
    }
    // A refused token forces a renewal, at most one every 2 s however many
    // requests were refused.
    const bool force_relay = forced && now - last_forced >= 2s;
    if (force_relay || now >= renew_at(relay_issued, details->expires_on, 10min)) {
      if (force_relay) last_forced = now;
      auto mt = credential->get_token(opts_.management_resource);
      if (!mt) {
        logger->warn("cannot renew the relay token: {}", mt.error());
      } else if (auto d = list_cluster_user_credential(mgmt, cluster, mt->token, token_mode)) {
        relay_token->set(d->token);
        details->expires_on = d->expires_on;
        relay_expiry->store(d->expires_on);
        relay_issued = now;
        logger->info("relay token renewed; valid until {}", std::chrono::system_clock::to_time_t(d->expires_on));
      } else {
        logger->warn("cannot renew the relay token: {}", d.error());
      }
    }
    auto next_relay = renew_at(relay_issued, details->expires_on, 10min);
    if (next_relay <= now) next_relay = now + 2s;
    return std::min(next_forwarded, next_relay);
  });
  // Stopped before the state its renewals use goes out of scope, whoever
  // holds the last reference.
  struct StopRefresher {
    std::shared_ptr<Refresher> r;
    ~StopRefresher() { r->stop(); }
  } stop_refresher{refresher};
  std::weak_ptr<Refresher> weak_refresher = refresher;


  // 3. Dial the relay.
  progress.begin("dial", "Connecting to the cluster's agent through the relay (end to end)");
  RelayEndpoint endpoint{"wss://" + details->relay + "/$hc/" + details->hybrid_connection, opts_.ca_file, false,
                         details->agent_key_pins};
  // The tunnel asks for the token before every dial and renewal; one that has
  // expired is renewed at once (the refresher may have failed or be late).
  auto client = transport->dial(endpoint, [relay_token, details_expiry = relay_expiry, weak_refresher] {
    if (std::chrono::system_clock::now() >= details_expiry->load())
      if (auto r = weak_refresher.lock()) r->renew_now(nullptr);
    return relay_token->get();
  });
  if (!client) return fail_with("the transport module could not dial " + endpoint.url);
  {
    std::promise<error_code> connected;
    client->async_connect([&](error_code ec) { connected.set_value(ec); });
    auto f = connected.get_future();
    if (f.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      client->close();
      return fail_with("timed out reaching the cluster's agent through the relay at " + details->relay);
    }
    if (auto ec = f.get()) {
      client->close();
      return fail_with("cannot reach the cluster's agent through the relay at " + details->relay + ": " + ec.message() +
                       " (the reason is logged above)");
    }
  }
  progress.done();

  // 4. Listen locally.
  progress.begin("listen", "Starting the local endpoint on 127.0.0.1:" + std::to_string(opts_.port));
  auto ca = tls::load_or_create_ca(host_.config_dir() / "proxy", "connectedk8s local CA");
  if (!ca) return fail_with("local CA: " + ca.error());
  auto leaf = tls::issue_server_cert(ca.value(), {"localhost"}, {"127.0.0.1"}, 30);
  if (!leaf) return fail_with("local certificate: " + leaf.error());
  auto server_ctx = tls::make_server_context_pem(leaf->cert, leaf->key);
  if (!server_ctx) return fail_with("local TLS: " + server_ctx.error());
  const std::string secret = random_secret();
  auto policy = std::make_shared<LocalPolicy>(secret, forwarded, logger, pop);
  // A stream the relay refuses because the tunnel's connect token expired
  // (HTTP 401 on a redial) is opened once more after the refresher fetched
  // a new token from the management API.
  http::UpstreamConnector connector = [io = &io, client, weak_refresher](http::ConnectHandler done) {
    open_stream(io, client, weak_refresher, std::move(done), false);
  };
  http::Limits limits;
  auto server = tls::TlsServer::listen(
      io, "127.0.0.1", static_cast<unsigned short>(opts_.port), server_ctx.value(),
      [&io, policy, connector, limits, logger](StreamPtr s) { http::serve(io, std::move(s), policy, connector, limits, logger); },
      logger);
  if (!server) {
    client->close();
    return fail_with(listen_failure_message(probe_listen_error("127.0.0.1", opts_.port), "127.0.0.1", opts_.port, server.error()));
  }
  progress.done();

  // 5. Kubeconfig.
  KubeconfigEntry entry;
  entry.cluster = context;
  entry.server = "https://127.0.0.1:" + std::to_string(server.value()->port());
  entry.certificate_authority_data = ca->cert;
  entry.user = "clusterUser_" + opts_.resource_group + "_" + opts_.name;
  entry.token = secret;
  entry.context = context;
  entry.set_current = true;

  fs::path kubeconfig_path;
  std::string ci_dir;
  if (ci_mode) {
    char tmpl[] = "/tmp/connectedk8s-XXXXXX";
    if (!::mkdtemp(tmpl)) return fail_with("cannot create a private temporary directory");
    ci_dir = tmpl;
    kubeconfig_path = fs::path(ci_dir) / "kubeconfig";
  } else if (opts_.file != "-") {
    kubeconfig_path = opts_.file.empty() ? default_kubeconfig() : fs::path(opts_.file);
  }
  progress.begin("kubeconfig", kubeconfig_path.empty() ? "Printing the kubeconfig" : "Writing the kubeconfig " + kubeconfig_path.string());
  if (kubeconfig_path.empty()) {
    auto text = kubeconfig->render(entry);
    if (!text) return fail_with(text.error());
    std::cout << text.value() << std::flush;
  } else if (auto r = kubeconfig->merge(kubeconfig_path, entry); !r) {
    server.value()->close();
    client->close();
    return fail_with(r.error());
  }
  progress.done();

  std::string where = kubeconfig_path.empty() ? "stdout" : kubeconfig_path.string();
  progress.event("ready", "Proxy is listening on " + entry.server + " \u2014 context " + context + " in " + where,
                 {{"server", entry.server}, {"context", context}, {"kubeconfig", where}});
  if (!opts_.ready_file.empty()) {
    auto tmp = opts_.ready_file + ".tmp";
    std::ofstream(tmp) << nlohmann::json{{"server", entry.server}, {"context", context}, {"kubeconfig", where},
                                         {"pid", ::getpid()}}.dump()
                       << "\n";
    std::rename(tmp.c_str(), opts_.ready_file.c_str());
  }

  // 7. Serve until a signal, or run the command.
  int rc = 0;
  auto signals = SignalWatch::start(io);
  if (ci_mode) {
    auto pid = spawn_with_kubeconfig(opts_.command, kubeconfig_path.string(),
                                     {forwarded->get(), relay_token->get(), management_token->token});
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

  // 8. Shut down: stop watching signals, stop accepting, let in-flight
  // requests finish briefly.
  signals->stop();
  server.value()->close();
  if (!policy->wait_idle(std::chrono::seconds(5)))
    logger->info("stopping with {} request(s) still in flight", policy->in_flight());
  client->close();
  if (!ci_dir.empty()) {
    std::error_code ec;
    fs::remove_all(ci_dir, ec);
  }
  return rc;
}

}  // namespace clusterconnect::proxy
