// clusterconnect-agent: runs in the cluster, dials out to the relay,
// authenticates callers and impersonates them to the API server.

#include <sys/stat.h>

#include <condition_variable>
#include <cstdio>
#include <exception>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "agent_metrics.hpp"
#include "agent_policy.hpp"
#include "api_server.hpp"
#include "audit_log.hpp"
#include "clusterconnect/certificates.hpp"
#include "clusterconnect/host/config_file.hpp"
#include "clusterconnect/host/runtime.hpp"
#include "clusterconnect/transport.hpp"
#include "clusterconnect/version.hpp"
#include "cluster_report.hpp"
#include "counted_stream.hpp"
#include "health_server.hpp"
#include "io_threads.hpp"
#include "relay_token.hpp"

using namespace clusterconnect;
using namespace clusterconnect::agent;

namespace {

const char* const arc_server_app = "6256c85f-0aad-4d50-b960-e6e9b21efe35";

struct AgentOptions {
  std::string relay_url;
  std::string relay_ca_file;
  bool relay_insecure_skip_verify = false;
  std::string listen_key_name = "listen";
  std::string listen_key_file;
  std::string relay_token_file;
  unsigned tunnels = 2;
  std::string transport = "tls";
  std::string identity_cert_file;
  std::string identity_key_file;
  bool print_key_pin = false;
  std::string mode = "entra";
  std::string auth = "entra";
  std::string oidc_issuer_url;
  std::string oidc_client_id;
  std::string oidc_username_claim = "sub";
  std::string oidc_username_prefix;
  std::string oidc_groups_claim;
  std::string oidc_groups_prefix;
  std::vector<std::string> oidc_required_claims;
  std::string oidc_signing_algs = "RS256,ES256";
  std::string oidc_ca_file;
  bool oidc_allow_http_loopback = false;
  std::vector<std::string> tenants;
  std::vector<std::string> audiences{arc_server_app};
  std::string authority;
  std::string authority_ca_file;
  bool allow_http_loopback_authority = false;
  std::string username_claim = "upn";
  std::string username_prefix;
  std::string groups_prefix;
  unsigned clock_skew = 300;
  bool pop = false;
  std::string cluster_resource_id;
  ApiServerOptions api;
  std::string health_listen = "0.0.0.0:8081";
  std::string ready_file;
  std::string audit_log = "-";
  unsigned threads = 1;
  unsigned upstream_idle_max = 256;
  unsigned upstream_idle_timeout = 90;
  std::string upstream_http2 = "auto";
  unsigned upstream_http2_ping_after = 30;
  unsigned upstream_http2_ping_timeout = 15;
  std::string distribution;    // empty: guessed from the API server
  std::string infrastructure;  // empty: guessed from the nodes
};

void add_options(CLI::App& app, AgentOptions& o) {
  app.add_option("--relay-url", o.relay_url, "Relay endpoint: wss://HOST[:PORT]/$hc/HYBRID_CONNECTION (required)")
      ->envname("CLUSTERCONNECT_RELAY_URL");
  app.add_option("--relay-ca-file", o.relay_ca_file, "CA bundle that verifies the relay (default: system store)")
      ->envname("CLUSTERCONNECT_RELAY_CA_FILE");
  app.add_flag("--relay-insecure-skip-verify", o.relay_insecure_skip_verify,
               "Do not verify the relay's certificate (development only; logged as a warning)");
  app.add_option("--listen-key-name", o.listen_key_name, "Name of the relay key with the listen right")
      ->envname("CLUSTERCONNECT_LISTEN_KEY_NAME")->capture_default_str();
  app.add_option("--listen-key-file", o.listen_key_file,
                 "File holding the listen key; the agent signs short-lived tokens with it")
      ->envname("CLUSTERCONNECT_LISTEN_KEY_FILE");
  app.add_option("--relay-token-file", o.relay_token_file,
                 "File holding a listen token (SharedAccessSignature ...), re-read when it changes")
      ->envname("CLUSTERCONNECT_RELAY_TOKEN_FILE");
  app.add_option("--tunnels", o.tunnels,
                 "Control channels kept open to the relay")
      ->check(CLI::Range(1, 16))->capture_default_str();
  app.add_option("--transport", o.transport,
                 "How proxies reach this agent through the relay; either way TLS and the stream mux run end to end "
                 "(the relay sees ciphertext only). tls: raw TCP legs the relay splices; ws: WebSocket legs in Azure "
                 "Relay Hybrid Connections' shape (for HTTP proxies, and Azure Relay). The agent answers both")
      ->check(CLI::IsMember({"tls", "ws"}))->envname("CLUSTERCONNECT_TRANSPORT")->capture_default_str();
  app.add_option("--identity-cert-file", o.identity_cert_file,
                 "The agent's certificate (PEM); proxies require the key whose pin the relay's registry holds")
      ->envname("CLUSTERCONNECT_IDENTITY_CERT_FILE");
  app.add_option("--identity-key-file", o.identity_key_file, "The agent's private key (PEM, mode 0600)")
      ->envname("CLUSTERCONNECT_IDENTITY_KEY_FILE");
  app.add_flag("--print-key-pin", o.print_key_pin,
               "Print the pin of --identity-cert-file's key (what the relay's registry lists in agent_key_pins) and exit");
  app.add_option("--mode", o.mode,
                 "entra (or authenticate): authenticate tokens with the --auth backend and impersonate; token: pass "
                 "service-account tokens through; both: authenticate when the token is the backend's, else pass through")
      ->check(CLI::IsMember({"entra", "authenticate", "token", "both"}))->envname("CLUSTERCONNECT_MODE")->capture_default_str();
  app.add_option("--auth", o.auth,
                 "Identity backend that authenticates callers: entra (Microsoft Entra ID, the authenticator:entra "
                 "module) or oidc (any OpenID Connect provider, the authenticator:oidc module; see the --oidc-* options)")
      ->check(CLI::IsMember({"entra", "oidc"}))->envname("CLUSTERCONNECT_AUTH")->capture_default_str();
  app.add_option("--oidc-issuer-url", o.oidc_issuer_url,
                 "OIDC: the provider's issuer URL, exactly as tokens carry it (as kube-apiserver's --oidc-issuer-url)")
      ->envname("CLUSTERCONNECT_OIDC_ISSUER_URL");
  app.add_option("--oidc-client-id", o.oidc_client_id, "OIDC: the audience every accepted token must carry (--oidc-client-id)")
      ->envname("CLUSTERCONNECT_OIDC_CLIENT_ID");
  app.add_option("--oidc-username-claim", o.oidc_username_claim, "OIDC: claim the user name comes from (--oidc-username-claim)")
      ->capture_default_str();
  app.add_option("--oidc-username-prefix", o.oidc_username_prefix,
                 "OIDC: prefix for user names; default ISSUER# for claims other than email, '-' for none (--oidc-username-prefix)");
  app.add_option("--oidc-groups-claim", o.oidc_groups_claim, "OIDC: claim the groups come from; none when empty (--oidc-groups-claim)");
  app.add_option("--oidc-groups-prefix", o.oidc_groups_prefix, "OIDC: prefix for group names (--oidc-groups-prefix)");
  app.add_option("--oidc-required-claim", o.oidc_required_claims,
                 "OIDC: claim=value every accepted token must carry (repeatable; --oidc-required-claim)");
  app.add_option("--oidc-signing-algs", o.oidc_signing_algs, "OIDC: accepted signing algorithms, among RS256 and ES256")
      ->capture_default_str();
  app.add_option("--oidc-ca-file", o.oidc_ca_file, "OIDC: CA bundle that verifies the issuer (default: system store)");
  app.add_flag("--oidc-allow-http-loopback", o.oidc_allow_http_loopback,
               "OIDC: accept an http:// issuer on a loopback address (test identity providers only)");
  app.add_option("--tenant", o.tenants, "Entra tenant ID whose tokens are accepted (repeatable)")->envname("AZURE_TENANT_ID");
  app.add_option("--audience", o.audiences, "Accepted token audience (repeatable; default: the Arc cluster-connect server app)")
      ->capture_default_str();
  app.add_option("--authority", o.authority, "Entra authority host (default https://login.microsoftonline.com)")
      ->envname("AZURE_AUTHORITY_HOST");
  app.add_option("--authority-ca-file", o.authority_ca_file, "CA bundle that verifies the authority (default: system store)");
  app.add_flag("--allow-http-loopback-authority", o.allow_http_loopback_authority,
               "Accept an http:// authority on a loopback address (test identity providers only)");
  app.add_option("--username-claim", o.username_claim,
                 "Token claim the Kubernetes user name comes from, as kube-apiserver's --oidc-username-claim: "
                 "upn (upn, else oid, as Azure Arc does), oid, or any other claim (then required)")
      ->capture_default_str();
  app.add_option("--username-prefix", o.username_prefix,
                 "Prefix for user names, as kube-apiserver's --oidc-username-prefix (default: none)");
  app.add_option("--groups-prefix", o.groups_prefix,
                 "Prefix for group names, as kube-apiserver's --oidc-groups-prefix (default: none)");
  app.add_option("--clock-skew", o.clock_skew, "Seconds of clock skew allowed on exp/nbf")->check(CLI::Range(0, 600))
      ->capture_default_str();
  app.add_flag("--pop", o.pop,
               "Accept only proof-of-possession tokens signed for this cluster (connectedk8s proxy --pop, kubelogin "
               "--pop-enabled); bearer tokens are refused. Needs --cluster-resource-id")
      ->envname("CLUSTERCONNECT_POP");
  app.add_option("--cluster-resource-id", o.cluster_resource_id,
                 "This cluster's ARM resource ID, /subscriptions/S/resourceGroups/G/providers/Microsoft.Kubernetes/"
                 "connectedClusters/NAME: proof-of-possession tokens must be signed for it")
      ->envname("CLUSTERCONNECT_CLUSTER_RESOURCE_ID");
  app.add_option("--apiserver-url", o.api.url, "API server URL (default: in-cluster, from KUBERNETES_SERVICE_HOST/PORT)")
      ->envname("CLUSTERCONNECT_APISERVER_URL");
  app.add_option("--apiserver-ca-file", o.api.ca_file, "CA bundle for the API server (default: the pod's service-account CA)")
      ->envname("CLUSTERCONNECT_APISERVER_CA_FILE");
  app.add_option("--token-file", o.api.token_file,
                 "The agent's own service-account token (default: the pod's), re-read when it rotates")
      ->envname("CLUSTERCONNECT_TOKEN_FILE");
  app.add_option("--health-listen", o.health_listen, "ADDRESS:PORT for /healthz, /readyz, /metrics (plain HTTP)")
      ->capture_default_str();
  app.add_option("--distribution", o.distribution,
                 "Kubernetes distribution reported to the relay (Arc's names: generic, k3s, aks, eks, gke, openshift, ...); "
                 "default: guessed from the API server")
      ->envname("CLUSTERCONNECT_DISTRIBUTION");
  app.add_option("--infrastructure", o.infrastructure,
                 "Infrastructure reported to the relay (generic, azure, aws, gcp, vsphere, ...); default: guessed from the nodes")
      ->envname("CLUSTERCONNECT_INFRASTRUCTURE");
  app.add_option("--ready-file", o.ready_file, "Write {\"health_port\":N} to this file once a tunnel is up");
  app.add_option("--audit-log", o.audit_log, "Audit log file, one JSON line per request ('-' = stdout, '' = off)")
      ->capture_default_str();
  app.add_option("--threads", o.threads, "I/O threads")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--upstream-idle-max", o.upstream_idle_max,
                 "Idle connections to the API server kept for reuse, shared by all streams: a kubectl connection "
                 "held open between requests holds none. 0: one API server connection per stream, held for its life")
      ->check(CLI::Range(0, 4096))->envname("CLUSTERCONNECT_UPSTREAM_IDLE_MAX")->capture_default_str();
  app.add_option("--upstream-idle-timeout", o.upstream_idle_timeout,
                 "Seconds an idle API server connection is kept before it is closed")
      ->check(CLI::Range(1, 3600))->capture_default_str();
  app.add_option("--upstream-http2", o.upstream_http2,
                 "auto: requests other than exec/attach/port-forward go as HTTP/2 streams on shared connections "
                 "when the API server picks h2 by ALPN (a watch then holds a stream, not a connection); "
                 "off: HTTP/1.1 connections only")
      ->check(CLI::IsMember({"auto", "off"}))->envname("CLUSTERCONNECT_UPSTREAM_HTTP2")->capture_default_str();
  app.add_option("--upstream-http2-ping-after", o.upstream_http2_ping_after,
                 "Seconds without a frame from the API server on an HTTP/2 connection before a PING checks it is "
                 "still there (a peer gone without a FIN, such as a dropped NAT entry). 0: no PING")
      ->check(CLI::Range(0, 3600))->capture_default_str();
  app.add_option("--upstream-http2-ping-timeout", o.upstream_http2_ping_timeout,
                 "Seconds the API server has to answer that PING; without an answer the connection is closed, "
                 "requests not yet answered are sent again on a new one or get a 502")
      ->check(CLI::Range(1, 3600))->capture_default_str();
}

// authenticator:entra's options from the flags.
nlohmann::json entra_options(const AgentOptions& o) {
  nlohmann::json options{{"tenants", o.tenants},
                         {"audiences", o.audiences},
                         {"allow_http_loopback", o.allow_http_loopback_authority},
                         {"clock_skew_seconds", o.clock_skew},
                         {"username_claim", o.username_claim},
                         {"username_prefix", o.username_prefix},
                         {"groups_prefix", o.groups_prefix},
                         {"ca_file", o.authority_ca_file}};
  if (!o.authority.empty()) options["authority"] = o.authority;
  options["pop"] = o.pop;
  if (!o.cluster_resource_id.empty()) options["cluster_resource_id"] = o.cluster_resource_id;
  return options;
}

// authenticator:oidc's options from the --oidc-* flags; --clock-skew only
// when given (the backend's own default is smaller than Entra's).
nlohmann::json oidc_options(const AgentOptions& o, bool clock_skew_given) {
  nlohmann::json options{{"issuer", o.oidc_issuer_url},
                         {"client_id", o.oidc_client_id},
                         {"username_claim", o.oidc_username_claim},
                         {"username_prefix", o.oidc_username_prefix},
                         {"groups_claim", o.oidc_groups_claim},
                         {"groups_prefix", o.oidc_groups_prefix},
                         {"required_claims", o.oidc_required_claims},
                         {"signing_algs", o.oidc_signing_algs},
                         {"allow_http_loopback", o.oidc_allow_http_loopback},
                         {"ca_file", o.oidc_ca_file}};
  if (clock_skew_given) options["clock_skew_seconds"] = o.clock_skew;
  return options;
}

void write_ready_file(const std::string& path, unsigned short health_port) {
  auto tmp = path + ".tmp";
  std::ofstream(tmp) << nlohmann::json{{"health_port", health_port}}.dump() << "\n";
  std::rename(tmp.c_str(), path.c_str());
}

}  // namespace

int main(int argc, char** argv) try {
  int verbosity = 0;
  host::LogFormat format = host::LogFormat::text;
  host::prescan_logging_flags(argc, argv, verbosity, format);
  auto logger = host::make_logger("agent", verbosity, format);

  CLI::App app{"clusterconnect-agent: connects a cluster to a relay; authenticates callers and impersonates them",
               "clusterconnect-agent"};
  app.set_version_flag("--version", std::string("clusterconnect-agent ") + CLUSTERCONNECT_VERSION);
  int verbose_count = 0;
  app.add_flag("-v,--verbose", verbose_count, "More log output (repeat for trace)");
  std::string log_format = "text";
  app.add_option("--log-format", log_format, "Log format: text or json")->check(CLI::IsMember({"text", "json"}));
  host::add_config_option(app, "YAML or JSON file of option values, keyed by long option name");
  AgentOptions o;
  add_options(app, o);
  CLI11_PARSE(app, argc, argv);

  if (o.print_key_pin) {
    if (o.identity_cert_file.empty()) {
      std::fprintf(stderr, "clusterconnect-agent: --print-key-pin needs --identity-cert-file\n");
      return 2;
    }
    auto pem = tls::read_small_file(o.identity_cert_file);
    auto pin = pem ? tls::public_key_pin(pem.value()) : Result<std::string>(fail(pem.error()));
    if (!pin) {
      std::fprintf(stderr, "clusterconnect-agent: %s: %s\n", o.identity_cert_file.c_str(), pin.error().c_str());
      return 2;
    }
    std::printf("%s\n", pin.value().c_str());
    return 0;
  }
  if (o.relay_url.empty()) {
    std::fprintf(stderr, "clusterconnect-agent: --relay-url is required (or CLUSTERCONNECT_RELAY_URL)\n");
    return 2;
  }
  if (o.listen_key_file.empty() == o.relay_token_file.empty()) {
    std::fprintf(stderr, "clusterconnect-agent: give exactly one of --listen-key-file and --relay-token-file\n");
    return 2;
  }
  AuthMode mode = o.mode == "token" ? AuthMode::token : o.mode == "both" ? AuthMode::both : AuthMode::entra;
  if (mode != AuthMode::token && o.auth == "oidc" && (o.oidc_issuer_url.empty() || o.oidc_client_id.empty())) {
    std::fprintf(stderr, "clusterconnect-agent: --auth oidc needs --oidc-issuer-url and --oidc-client-id\n");
    return 2;
  }
  if (o.pop && o.auth != "entra") {
    std::fprintf(stderr, "clusterconnect-agent: --pop needs --auth entra: proof-of-possession tokens are Entra ID's\n");
    return 2;
  }
  if (mode != AuthMode::token && o.auth == "entra" && o.tenants.empty()) {
    std::fprintf(stderr, "clusterconnect-agent: --tenant is required in %s mode (or set AZURE_TENANT_ID)\n", o.mode.c_str());
    return 2;
  }

  if (o.pop && mode == AuthMode::token) {
    std::fprintf(stderr,
                 "clusterconnect-agent: --pop needs --mode entra or both: token mode does not authenticate callers\n");
    return 2;
  }
  if (o.pop && o.cluster_resource_id.empty()) {
    std::fprintf(stderr,
                 "clusterconnect-agent: --pop needs --cluster-resource-id (or CLUSTERCONNECT_CLUSTER_RESOURCE_ID): "
                 "this cluster's ARM resource ID, which proof-of-possession tokens are signed for\n");
    return 2;
  }

  {
    if (o.identity_cert_file.empty() || o.identity_key_file.empty()) {
      std::fprintf(stderr,
                   "clusterconnect-agent: --identity-cert-file and --identity-key-file are required: the key proxies "
                   "pin (its pin goes in the relay's registry as agent_key_pins)\n");
      return 2;
    }
    struct stat st {};
    // Group read is allowed: Kubernetes gives a Secret's files to the pod's
    // fsGroup (0440); other users may not read it, nor the group write it.
    if (::stat(o.identity_key_file.c_str(), &st) == 0 && (st.st_mode & 027) != 0) {
      std::fprintf(stderr,
                   "clusterconnect-agent: the identity key %s is open to other users (mode %03o); make it 0600 (or "
                   "0440 for a Kubernetes Secret read through fsGroup)\n",
                   o.identity_key_file.c_str(), static_cast<unsigned>(st.st_mode & 0777));
      return 2;
    }
  }

  host::Runtime runtime(logger, o.threads);
  runtime.load_plugins();
  auto& io = runtime.io_context();

  auto transport = runtime.capabilities().transport(o.transport);
  if (!transport) {
    std::fprintf(stderr, "clusterconnect-agent: no transport:%s module was loaded; see the warnings above\n",
                 o.transport.c_str());
    return 1;
  }
  std::shared_ptr<Authenticator> authenticator;
  if (mode != AuthMode::token) {
    auto cap = runtime.capabilities().authenticator(o.auth);
    if (!cap) {
      std::fprintf(stderr, "clusterconnect-agent: no authenticator:%s module was loaded; see the warnings above\n", o.auth.c_str());
      return 1;
    }
    auto made = cap->create(o.auth == "oidc" ? oidc_options(o, app.count("--clock-skew") > 0) : entra_options(o));
    if (!made) {
      std::fprintf(stderr, "clusterconnect-agent: %s\n", made.error().c_str());
      return 2;
    }
    authenticator = made.value();
  }

  auto api = ApiServer::create(o.api);
  if (!api) {
    std::fprintf(stderr, "clusterconnect-agent: %s\n", api.error().c_str());
    return 2;
  }
  auto relay_token = RelayToken::create(o.relay_url, o.listen_key_name, o.listen_key_file, o.relay_token_file);
  if (!relay_token) {
    std::fprintf(stderr, "clusterconnect-agent: %s\n", relay_token.error().c_str());
    return 2;
  }
  auto audit = AuditLog::open(o.audit_log);
  if (!audit) {
    std::fprintf(stderr, "clusterconnect-agent: %s\n", audit.error().c_str());
    return 2;
  }
  auto metrics = std::make_shared<AgentMetrics>();
  auto policy = std::make_shared<AgentPolicy>(mode, authenticator, api.value(), std::shared_ptr<AuditLog>(std::move(audit.value())),
                                              metrics, logger, o.auth);
  if (o.relay_insecure_skip_verify)
    logger->warn("--relay-insecure-skip-verify: the relay's certificate is NOT verified; use this only in development");

  // Everything the io threads' handlers read is constructed before the
  // threads start: the listener and the health server are complete objects
  // by then, and nothing assigns them later.
  ListenOptions listen_options;
  listen_options.endpoint = {o.relay_url, o.relay_ca_file, o.relay_insecure_skip_verify, {}};
  listen_options.identity_cert_file = o.identity_cert_file;
  listen_options.identity_key_file = o.identity_key_file;
  listen_options.token = [rt = relay_token.value()] { return rt->current(); };
  listen_options.tunnels = o.tunnels;
  // What the relay shows on the cluster's resource: learned once before the
  // first control channel opens (bounded; startup waits at most ~10 s for a
  // silent API server), then refreshed every 5 minutes for the channels
  // opened after that.
  auto report = std::make_shared<ClusterReport>(CLUSTERCONNECT_VERSION, o.distribution, o.infrastructure);
  {
    asio::io_context startup;
    report->async_refresh(api.value()->connector(startup), api.value(), [] {});
    startup.run_for(std::chrono::seconds(12));
  }
  listen_options.handshake_headers = [report] { return tunnel::rendezvous::to_headers(report->latest()); };
  http::Limits limits;
  auto connector = api.value()->connector(io);
  // With HTTP/2 the engine's connections are virtual (see h2_upstream.hpp):
  // the pool keeps those, and the TLS connections are the H2Upstream's.
  // The readiness probe and the cluster report keep `connector`: a real
  // TLS connection each.
  std::shared_ptr<http::H2Upstream> h2;
  http::UpstreamConnector engine_connector = connector;
  if (o.upstream_http2 == "auto") {
    http::H2Options h2_options;
    h2_options.ping_after = std::chrono::seconds(o.upstream_http2_ping_after);
    h2_options.ping_timeout = std::chrono::seconds(o.upstream_http2_ping_timeout);
    // An HTTP/2 connection without streams is an idle connection.
    h2_options.idle_timeout = std::chrono::seconds(o.upstream_idle_timeout);
    h2 = http::H2Upstream::create(io, api.value()->h2_connector(io), connector, h2_options, logger);
    engine_connector = h2->connector();
  }
  // One pool: every connection to the API server is interchangeable (one
  // endpoint, one TLS context, no client certificate); the credential and
  // the impersonation headers travel in each request.
  std::shared_ptr<http::UpstreamPool> upstream_pool;
  if (o.upstream_idle_max > 0)
    upstream_pool = http::UpstreamPool::create(
        io, engine_connector, {o.upstream_idle_max, std::chrono::seconds(o.upstream_idle_timeout)}, logger);
  const auto server = upstream_pool ? http::Server::create(io, upstream_pool, limits, logger)
                                    : http::Server::create(io, engine_connector, limits, logger);
  const std::shared_ptr<TunnelListener> listener = transport->listen(
      listen_options, [policy, server, metrics](StreamPtr stream, const std::map<std::string, std::string>&) {
        // One policy per stream: it remembers the token last verified there.
        server->serve(std::make_shared<CountedStream>(std::move(stream), metrics), policy->for_connection());
      });
  if (!listener) {
    std::fprintf(stderr, "clusterconnect-agent: the transport could not start listening\n");
    return 1;
  }

  std::atomic<bool> api_reachable{false};
  auto health = HealthServer::listen(io, o.health_listen, [&listener, &api_reachable, metrics, upstream_pool, h2](
                                                              const std::string& path) -> HealthReply {
    if (path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
    if (path == "/readyz") {
      unsigned up = listener->status().tunnels_up;
      if (up > 0 && api_reachable) return {200, "text/plain; charset=utf-8", "ok\n"};
      return {503, "text/plain; charset=utf-8",
              std::string(up ? "" : "no tunnel to the relay\n") + (api_reachable ? "" : "API server not reachable\n")};
    }
    if (path == "/metrics") {
      UpstreamCounts upstream;
      if (upstream_pool) {
        auto s = upstream_pool->stats();
        upstream = {true, s.opened, s.reused, s.idle};
      }
      if (h2) {
        auto s = h2->stats();
        upstream.http2 = true;
        upstream.h2_connections_opened = s.connections_opened;
        upstream.h2_connections = s.connections;
        upstream.h2_streams_opened = s.streams_opened;
        upstream.h2_streams_active = s.active_streams;
        upstream.h2_streams_reset = s.streams_reset;
        upstream.h2_streams_retried = s.streams_retried;
        upstream.h2_ping_timeouts = s.ping_timeouts;
        upstream.h2_connects_retried = s.connects_retried;
      }
      return {200, "text/plain; version=0.0.4; charset=utf-8", metrics->render(listener->status().tunnels_up, upstream)};
    }
    return {404, "text/plain; charset=utf-8", "not found\n"};
  });
  if (!health) {
    std::fprintf(stderr, "clusterconnect-agent: %s\n", health.error().c_str());
    listener->close();
    return 2;
  }

  std::promise<int> stop;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](error_code ec, int sig) {
    if (ec) return;
    logger->info("signal {}: closing tunnels", sig);
    stop.set_value(0);
  });
  asio::steady_timer probe_timer(io);
  auto probe_strand = asio::make_strand(io);
  // The agent runs the io threads itself (not runtime.start()) so that at
  // shutdown it can let them finish the work in flight, close frames and
  // stream resets included, instead of stopping them mid-write.
  IoThreads io_threads(io, o.threads);
  logger->info("agent {} started: relay {}, mode {}, auth {}{}, health on port {}", CLUSTERCONNECT_VERSION, o.relay_url, o.mode, o.auth,
               o.pop ? " (proof-of-possession tokens only, for " + o.cluster_resource_id + ")" : std::string(),
               health.value()->port());

  // Readiness: the API server must accept a verified TLS connection; probed
  // every few seconds. The ready file appears once a tunnel is up too.
  // The probe and its timer live on one strand, as does their cancellation.
  bool stopping = false;
  std::function<void()> probe = [&] {
    connector([&](error_code ec, StreamPtr s, std::string reason) {
      asio::dispatch(probe_strand, [&, ec, s = std::move(s), reason = std::move(reason)] {
        if (ec) logger->debug("API server probe failed: {}", reason);
        api_reachable = !ec;
        if (s) s->reset("probe done");
        if (stopping) return;
        if (!o.ready_file.empty() && api_reachable && listener->status().tunnels_up > 0) {
          write_ready_file(o.ready_file, health.value()->port());
          o.ready_file.clear();
        }
        probe_timer.expires_after(o.ready_file.empty() ? std::chrono::seconds(10) : std::chrono::milliseconds(200));
        probe_timer.async_wait(asio::bind_executor(probe_strand, [&](error_code e) {
          if (!e && !stopping) probe();
        }));
      });
    });
  };
  asio::post(probe_strand, probe);
  asio::steady_timer report_timer(io);
  std::function<void()> refresh_report = [&] {
    report_timer.expires_after(std::chrono::minutes(5));
    report_timer.async_wait(asio::bind_executor(probe_strand, [&](error_code e) {
      if (e || stopping) return;
      report->async_refresh(connector, api.value(), [&] {
        asio::dispatch(probe_strand, [&] {
          if (!stopping) refresh_report();
        });
      });
    }));
  };
  asio::post(probe_strand, refresh_report);

  int rc = stop.get_future().get();
  listener->close();
  if (upstream_pool) upstream_pool->close();
  if (h2) h2->close();
  health.value()->close();
  asio::post(probe_strand, [&] {
    stopping = true;
    probe_timer.cancel();
    report_timer.cancel();
  });
  // Wait for the io threads to run out of work: the tunnels' close frames
  // written, in-flight streams reset, the probe and health server done;
  // bounded, so a peer that never reads cannot hold the agent up.
  if (!io_threads.finish(std::chrono::seconds(10)))
    logger->warn("shutdown: work still pending after 10 s (a peer not reading?); stopping anyway");
  runtime.stop();
  return rc;
} catch (const std::exception& e) {
  std::fprintf(stderr, "clusterconnect-agent: %s\n", e.what());
  return 1;
}
