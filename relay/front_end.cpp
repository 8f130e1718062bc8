#include "front_end.hpp"

#include "protocol/ws_stream.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <deque>
#include <mutex>
#include <optional>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/ascii.hpp"
#include "clusterconnect/certificates.hpp"
#include "clusterconnect/sas_token.hpp"
#include "clusterconnect/url.hpp"
#include "clusterconnect/version.hpp"
#include "rendezvous/client_hello.hpp"
#include "rendezvous/control_message.hpp"
#include "rendezvous_book.hpp"
#include "registry_store.hpp"
#include "rendezvous_port.hpp"
#include "replica_peers.hpp"
#include "ws_pump.hpp"

namespace clusterconnect::relay {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

namespace {

constexpr std::size_t header_limit = 16 * 1024;
// Management requests are small JSON documents; tunnel handshakes carry none.
constexpr std::size_t body_limit = 16 * 1024;
constexpr auto handshake_timeout = std::chrono::seconds(10);
constexpr auto idle_timeout = std::chrono::seconds(60);

// How the relay answers a WebSocket upgrade: its Server header, the chosen
// subprotocol if any, the handshake bounded. A control channel the relay
// keeps alive itself (pings, dropped after `idle` of silence); a paired leg
// neither, its peers own its liveness.
void configure_upgrade(tunnel::WsStream& ws, std::string subprotocol,
                       std::optional<std::chrono::seconds> idle = std::nullopt) {
  websocket::stream_base::timeout t{};
  t.handshake_timeout = handshake_timeout;
  t.idle_timeout = idle ? *idle : websocket::stream_base::none();
  t.keep_alive_pings = idle.has_value();
  ws.set_option(t);
  ws.set_option(websocket::stream_base::decorator([subprotocol = std::move(subprotocol)](websocket::response_type& res) {
    if (!subprotocol.empty()) res.set(http::field::sec_websocket_protocol, subprotocol);
    res.set(http::field::server, std::string("clusterconnect-relay/") + CLUSTERCONNECT_VERSION);
  }));
}

// 16 KiB, 4 MiB, 1000 bytes.
std::string size_text(std::size_t n) {
  if (n > 0 && n % (1024 * 1024) == 0) return std::to_string(n / (1024 * 1024)) + " MiB";
  if (n > 0 && n % 1024 == 0) return std::to_string(n / 1024) + " KiB";
  return std::to_string(n) + " bytes";
}

// Text fit for a status line's reason phrase: visible ASCII and spaces, at
// most 200 characters; empty when nothing is left.
std::string reason_phrase(std::string_view text) {
  std::string out;
  for (char c : text)
    if (out.size() < 200 && c >= ' ' && c <= '~') out += c;
  while (!out.empty() && out.back() == ' ') out.pop_back();
  while (!out.empty() && out.front() == ' ') out.erase(0, 1);
  return out;
}

std::string error_body(std::string_view code, std::string_view message) {
  return nlohmann::json{{"error", {{"code", code}, {"message", message}}}}.dump();
}

std::string_view status_code_name(unsigned status) {
  switch (status) {
    case 400: return "BadRequest";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "NotFound";
    case 413: return "RequestEntityTooLarge";
    case 429: return "TooManyRequests";
    case 503: return "ServiceUnavailable";
    default: return "Error";
  }
}

// Query parameters of a request target, decoded ('+' is a space).
std::map<std::string, std::string> parse_query(std::string_view q) {
  std::map<std::string, std::string> out;
  while (!q.empty()) {
    auto amp = q.find('&');
    std::string_view kv = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
    auto eq = kv.find('=');
    std::string k(kv.substr(0, eq)), v(eq == std::string_view::npos ? std::string_view{} : kv.substr(eq + 1));
    for (auto& c : v)
      if (c == '+') c = ' ';
    std::string dk, dv;
    if (percent_decode(k, dk) && percent_decode(v, dv)) out.emplace(std::move(dk), std::move(dv));
  }
  return out;
}

// Whether a Sec-WebSocket-Protocol list offers `name`.
bool offers_subprotocol(std::string_view header, std::string_view name) {
  while (!header.empty() && !name.empty()) {
    auto comma = header.find(',');
    std::string_view item = header.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (item == name) return true;
    header = comma == std::string_view::npos ? std::string_view{} : header.substr(comma + 1);
  }
  return false;
}

// The verdict on a token, the same at the handshake and for renewToken.
struct TokenCheck {
  bool ok = false;
  unsigned status = 200;  // 401 missing/invalid/expired, 403 wrong path or no right
  std::string label;      // metrics label
  std::string reason;     // one line, never containing the token
  std::chrono::system_clock::time_point expiry{};
};
// Checks a token for the path and action a channel was opened for.
using TokenVerifier = std::function<TokenCheck(std::string_view token)>;

std::string sas_failure_label(SasError e) {
  switch (e) {
    case SasError::missing: return "token_missing";
    case SasError::malformed: return "token_malformed";
    case SasError::unknown_key: return "unknown_key";
    case SasError::bad_signature: return "bad_signature";
    case SasError::expired: return "token_expired";
    case SasError::wrong_resource: return "wrong_path";
    case SasError::none: break;
  }
  return "other";
}

// The one check of a token, at the handshake and for renewToken: signature,
// expiry, the resource covers `requested_resource`, the key grants `action`.
TokenCheck check_tunnel_token(const ClusterEntry& cluster, const std::string& requested_resource, const std::string& action,
                              std::string_view token, std::chrono::system_clock::time_point now = std::chrono::system_clock::now()) {
  TokenCheck c;
  SasVerdict v = verify_sas_token(
      token, requested_resource,
      [&cluster](std::string_view name) -> std::optional<std::string> {
        if (const RelayKey* k = cluster.key(name)) return k->secret;
        return std::nullopt;
      },
      now);
  if (!v.ok()) {
    c.status = v.http_status;
    c.label = sas_failure_label(v.error);
    c.reason = v.reason;
    return c;
  }
  const RelayKey* key = cluster.key(v.key_name);
  if (!key || !key->has_right(action)) {
    c.status = 403;
    c.label = "no_right";
    c.reason = "key '" + v.key_name + "' does not grant the '" + action + "' right";
    return c;
  }
  c.ok = true;
  c.expiry = v.expiry;
  return c;
}

class FrontEndImpl;

class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(tcp::socket socket, std::shared_ptr<FrontEndImpl> front, std::string address);
  ~HttpConnection();
  void run();

  // A parked Hybrid Connections sender (ws form), from any thread: the
  // listener's accept WebSocket is up (`subprotocol`: what it chose), it
  // rejected the rendezvous, or none came in time.
  // `forming` (from ws_take) is let go once the pair is up or failed.
  void sender_accepted(tunnel::WsStream listener, std::string subprotocol, std::shared_ptr<void> forming);
  // `rejected`: the listener's own rejection (its statusDescription).
  void sender_refused(unsigned status, std::string description, bool rejected = false);

  // An HTTP-mode request's outcome, from any thread: the listener's response
  // (passed on to the sender as it is, once), or a failure answered with
  // `status`. Either is ignored unless `id` is the request this connection
  // waits for.
  void hc_respond(std::string id, tunnel::rendezvous::ResponseMessage response, std::string body);
  void hc_fail(std::string id, unsigned status, std::string why);

 private:
  void on_tls(error_code ec);
  void do_read();
  void on_header(error_code ec);
  void on_read(error_code ec);
  void route();
  void handle_tunnel();
  void handle_rendezvous_connect(const ClusterEntry* cluster, const std::string& token);
  void park_sender(const ClusterEntry* cluster, const std::string& token, const std::string& host);
  void handle_listener_accept(std::map<std::string, std::string>& query);
  // Another replica's request to announce a connect on a control channel here.
  void handle_replica_accept();
  // A refused handshake: counted under `label`, one log line naming `what`.
  void refuse_handshake(std::string_view what, unsigned status, const std::string& label, std::string_view message);
  void refuse_listener(unsigned status, std::string message);
  void accept_control_channel(const ClusterEntry* cluster, std::chrono::system_clock::time_point expiry,
                              const std::string& requested);
  // The HTTP-mode cluster a target names, in the snapshot the connection
  // then holds (registry_).
  const ClusterEntry* http_mode_cluster(std::string_view target);
  void read_body();
  void handle_hc_request(const ClusterEntry* cluster);
  void handle_listener_request(const ClusterEntry* cluster, std::map<std::string, std::string>& query);
  void hc_finish(const std::string& id);
  void handle_management();
  // `reason`: the status line's reason phrase, when not the standard one.
  void respond(unsigned status, std::string content_type, std::string body, std::string_view reason = {});
  void send_response(std::shared_ptr<http::response<http::string_body>> res, bool keep_alive);
  void respond_error(unsigned status, std::string_view message, std::string_view reason = {}) {
    respond(status, "application/json", error_body(status_code_name(status), message), reason);
  }
  void on_write(error_code ec, bool keep_alive);
  void do_close();

  beast::ssl_stream<beast::tcp_stream> stream_;
  std::optional<tunnel::WsStream> ws_;
  std::shared_ptr<FrontEndImpl> front_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  std::shared_ptr<http::response<http::string_body>> res_;
  std::string peer_;
  std::string address_;
  std::optional<asio::steady_timer> park_timer_;
  std::string hc_id_;  // the HTTP-mode request waiting for its response
  std::string ws_cluster_;  // a parked sender's cluster (its identity)
  bool hc_head_ = false;
  std::optional<asio::steady_timer> hc_timer_;
  bool released_ = false;  // authenticated: out of its address's pre-authentication budget
  // The registry snapshot this connection's cluster entry belongs to.
  std::shared_ptr<const Registry> registry_;
};

void front_log_upgrade_failure(FrontEndImpl& front, const std::string& peer, error_code ec);

class FrontEndImpl final : public FrontEnd, public std::enable_shared_from_this<FrontEndImpl> {
 public:
  FrontEndImpl(asio::io_context& io, std::shared_ptr<asio::ssl::context> tls, const RelayConfig& config,
               std::shared_ptr<RegistryStore> store, RelayMetrics& metrics, std::shared_ptr<spdlog::logger> logger)
      : io_(io),
        acceptor_(asio::make_strand(io)),
        tls_(std::move(tls)),
        config_(config),
        store_(std::move(store)),
        metrics_(metrics),
        logger_(std::move(logger)) {}

  Result<void> bind(const std::string& address, unsigned short port) {
    error_code ec;
    auto addr = asio::ip::make_address(address, ec);
    if (ec) return fail("--listen: '" + address + "' is not an IP address");
    tcp::endpoint ep(addr, port);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return fail(address + ":" + std::to_string(port) + ": " + ec.message());
    port_ = acceptor_.local_endpoint().port();
    return {};
  }

  void start() { do_accept(); }

  unsigned short port() const noexcept override { return port_; }
  void set_management_api(std::shared_ptr<ManagementApi> api) override {
    std::lock_guard lock(mutex_);
    api_ = std::move(api);
  }
  void set_ready(bool ready) noexcept override { ready_ = ready; }
  void set_rendezvous(std::shared_ptr<RendezvousPort> port, std::string advertise) override {
    std::lock_guard lock(mutex_);
    rendezvous_ = std::move(port);
    rendezvous_address_ = "tls://" + advertise;
  }
  void set_replicas(std::shared_ptr<ReplicaPeers> peers) override {
    listeners_.on_count_change(
        [weak = std::weak_ptr<ReplicaPeers>(peers)](const std::string& identity, const AgentStatus& here) {
          if (auto p = weak.lock()) p->channels_changed(identity, here);
        });
    std::lock_guard lock(mutex_);
    replicas_ = std::move(peers);
  }
  std::shared_ptr<ReplicaPeers> replicas() const {
    std::lock_guard lock(mutex_);
    return replicas_;
  }
  void close_control_channels(const std::string& reason) noexcept override {
    try {
      listeners_.close_all(1001, reason);
      close_ws_rendezvous(reason);
    } catch (...) {
    }
  }
  void close_listeners(const std::string& reason) noexcept override {
    try {
      listeners_.close_all(1001, reason);
    } catch (...) {
    }
  }
  void close_paired_websockets(const std::string& reason) noexcept override {
    try {
      close_ws_rendezvous(reason);
    } catch (...) {
    }
  }
  std::size_t announce_drain(const std::string& reason, std::chrono::steady_clock::time_point deadline) override {
    namespace rv = tunnel::rendezvous;
    auto [port, address] = rendezvous();
    auto peers = replicas();
    // The addresses accepts from here began with: the rendezvous port's
    // (tls form) and this replica's accept URLs (ws form) when they name a port.
    std::vector<std::string> notices;
    if (port) notices.push_back(rv::to_json(rv::DrainMessage{address, reason}));
    const std::string ws_host = peers ? peers->advertise_host() : config_.public_host;
    if (!ws_host.empty() && ws_host.find(':') != std::string::npos)
      notices.push_back(rv::to_json(rv::DrainMessage{"wss://" + ws_host, reason}));
    std::size_t here = 0;
    for (const auto& n : notices) here = std::max(here, listeners_.send_to_drain_takers(n));
    if (!peers) return here;
    // Clusters spliced here (either form) whose agents hold control channels elsewhere.
    std::vector<std::string> spliced = ws_rendezvous_clusters();
    if (port)
      for (auto& c : port->spliced_clusters())
        if (std::find(spliced.begin(), spliced.end(), ascii_lowered(c)) == spliced.end()) spliced.push_back(ascii_lowered(c));
    struct Answers {
      std::mutex mutex;
      std::condition_variable cv;
      std::size_t waiting = 0, passed = 0;
    };
    auto answers = std::make_shared<Answers>();
    const auto registry = store_->snapshot();
    for (const auto& rid : spliced) {
      const ClusterEntry* cluster = registry->cluster_by_identity(rid);
      if (!cluster || !peers->remote_channel(cluster->identity())) continue;
      for (const auto& n : notices) {
        {
          std::lock_guard lock(answers->mutex);
          ++answers->waiting;
        }
        peers->forward_accept(cluster->identity(), n, [answers](bool sent, std::string) {
          std::lock_guard lock(answers->mutex);
          --answers->waiting;
          answers->passed += sent ? 1 : 0;
          answers->cv.notify_all();
        });
      }
    }
    std::unique_lock lock(answers->mutex);
    if (!answers->cv.wait_until(lock, deadline, [&] { return answers->waiting == 0; }))
      logger_->info("drain: {} notice(s) to other replicas still unanswered", answers->waiting);
    if (answers->passed) logger_->info("drain: {} notice(s) passed on by other replicas", answers->passed);
    return here;
  }
  // A cluster gone from the registry loses its control channels (Hybrid
  // Connections' 1001 for a path that is gone). Its keys, roles and pins are
  // read from the current snapshot at each check: nothing else to do.
  void registry_changed(const Registry&, const Registry& after) noexcept override {
    try {
      const auto n = listeners_.close_unless(
          [&](const std::string& identity) { return after.cluster_by_identity(identity) != nullptr; }, 1001,
          "the cluster was removed from the relay's registry");
      if (n) logger_->info("registry change: closed {} control channel(s) of removed clusters", n);
    } catch (...) {
    }
  }
  std::shared_ptr<const Registry> registry() const { return store_->snapshot(); }
  std::pair<std::shared_ptr<RendezvousPort>, std::string> rendezvous() const {
    std::lock_guard lock(mutex_);
    return {rendezvous_, rendezvous_address_};
  }
  ListenerRegistry& listeners() { return listeners_; }

  // The ws form's pending rendezvous: senders parked by id until their
  // listener accepts, rejects, or the ttl passes (then they get 504).
  bool ws_open(const std::string& id, const ClusterEntry& cluster, const std::string& client,
               std::shared_ptr<HttpConnection> sender, std::string& why) {
    ws_expire();
    std::lock_guard lock(ws_mutex_);
    if (draining_) {
      // Checked with the book under one lock: what stop_accepting saw
      // pending is all a listener may still accept here.
      why = "the relay is shutting down; retry";
      return false;
    }
    const auto now = RendezvousBook<std::shared_ptr<HttpConnection>>::Clock::now();
    if (!ws_book_.open(id, cluster.resource_id(), client, now, why)) return false;
    ws_book_.present(id, LegSide::proxy, std::move(sender), now);
    return true;
  }
  // The sender parked under `id`, taken (the id is spent); null when none is.
  // With it, a lease that counts the pair as forming until ws_paired took it
  // or its upgrades failed: a drain waits for it like for a paired one.
  // (Each change to what is pending wakes drain_pending_websockets.)
  std::pair<std::shared_ptr<HttpConnection>, std::shared_ptr<void>> ws_take(const std::string& id,
                                                                             std::shared_ptr<HttpConnection> listener) {
    std::shared_ptr<HttpConnection> sender;
    std::string cluster;
    {
      std::lock_guard lock(ws_mutex_);
      auto r = ws_book_.present(id, LegSide::agent, std::move(listener), RendezvousBook<std::shared_ptr<HttpConnection>>::Clock::now());
      if (auto* paired = std::get_if<RendezvousBook<std::shared_ptr<HttpConnection>>::Paired>(&r)) {
        sender = std::move(paired->proxy);
        cluster = ascii_lowered(paired->cluster);
        ws_forming_.push_back(cluster);
      }
    }
    if (!sender) return {};
    ws_ended_.notify_all();
    std::shared_ptr<void> forming(nullptr, [weak = weak_from_this(), cluster](void*) {
      auto self = weak.lock();
      if (!self) return;
      {
        std::lock_guard lock(self->ws_mutex_);
        if (auto it = std::find(self->ws_forming_.begin(), self->ws_forming_.end(), cluster); it != self->ws_forming_.end())
          self->ws_forming_.erase(it);
      }
      self->ws_ended_.notify_all();
    });
    return {std::move(sender), std::move(forming)};
  }
  // True when the sender was still waiting (it is the caller's to answer).
  bool ws_cancel(const std::string& id) {
    bool waiting = false;
    {
      std::lock_guard lock(ws_mutex_);
      waiting = ws_book_.cancel(id).has_value();
    }
    if (waiting) ws_ended_.notify_all();
    return waiting;
  }
  void ws_expire() {
    std::vector<RendezvousBook<std::shared_ptr<HttpConnection>>::Expired> gone;
    {
      std::lock_guard lock(ws_mutex_);
      gone = ws_book_.expire(RendezvousBook<std::shared_ptr<HttpConnection>>::Clock::now());
    }
    if (!gone.empty()) ws_ended_.notify_all();
    for (auto& e : gone) {
      ws_counters_.expired.fetch_add(1);
      e.leg->sender_refused(504, "no agent answered within " + std::to_string(ws_limits_.ttl.count() / 1000) + " s");
    }
  }
  std::chrono::milliseconds ws_ttl() const { return ws_limits_.ttl; }
  void ws_paired(tunnel::WsStream sender, tunnel::WsStream listener, std::string cluster) {
    // The pair's two connections count as open until the pump lets them go.
    metrics_.connections_active.fetch_add(2);
    {
      std::lock_guard lock(ws_mutex_);
      ++ws_live_;
    }
    // `held` keeps this front end alive until the lease is let go.
    std::shared_ptr<void> lease(nullptr, [this, held = connection_lease()](void*) mutable {
      metrics_.connections_active.fetch_sub(2);
      {
        std::lock_guard lock(ws_mutex_);
        --ws_live_;
        if (draining_ && !ws_cutting_) ws_drained_.fetch_add(1);
      }
      ws_ended_.notify_all();
      held.reset();
    });
    auto pump = start_ws_pump(std::move(sender), std::move(listener), ws_counters_, std::move(lease));
    ws_counters_.paired.fetch_add(1);
    std::lock_guard lock(ws_mutex_);
    std::erase_if(ws_pumps_, [](const WsPair& w) { return w.pump.expired(); });
    ws_pumps_.push_back(WsPair{pump, std::move(cluster)});
  }
  bool drain_paired_websockets(std::chrono::steady_clock::time_point deadline) override {
    std::unique_lock lock(ws_mutex_);
    return ws_ended_.wait_until(lock, deadline, [this] { return ws_live_ == 0 && ws_forming_.empty(); });
  }
  std::pair<std::uint64_t, std::uint64_t> drain_outcome() const override {
    auto [port, address] = rendezvous();
    return {(port ? port->counters().drained.load() : 0) + ws_drained_.load(), (port ? port->counters().cut.load() : 0) + ws_cut_.load()};
  }
  // The clusters of the WebSocket pairs open now, forming or still waiting
  // for their listener's accept (identities, once each).
  std::vector<std::string> ws_rendezvous_clusters() {
    std::vector<std::string> out;
    auto add = [&out](std::string c) {
      if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(std::move(c));
    };
    std::lock_guard lock(ws_mutex_);
    for (const auto& w : ws_pumps_)
      if (!w.pump.expired()) add(w.cluster);
    for (const auto& c : ws_forming_) add(c);
    for (auto& c : ws_book_.pending_clusters()) add(ascii_lowered(c));
    return out;
  }
  WsRendezvousCounters& ws_counters() { return ws_counters_; }

  // Hybrid Connections HTTP mode: requests waiting for their listener's
  // response, by id (random, single use: it is what a listener's response or
  // rendezvous names). `request` and `body` are kept only for a request that
  // was announced and is delivered on the listener's rendezvous WebSocket.
  struct HttpPending {
    std::weak_ptr<HttpConnection> sender;
    std::string cluster;  // its identity
    std::string request;
    std::optional<std::string> body;
    std::uint64_t listener = 0;  // the control channel it went to, once known
  };
  bool http_open(const std::string& id, HttpPending pending, std::string& why) {
    std::lock_guard lock(http_mutex_);
    if (http_pending_.size() >= ws_limits_.pending_total) {
      why = "the relay has " + std::to_string(http_pending_.size()) + " HTTP requests pending, its maximum; retry shortly";
      return false;
    }
    auto& n = http_per_cluster_[pending.cluster];
    if (n >= ws_limits_.pending_per_cluster) {
      why = "the hybrid connection has " + std::to_string(n) + " HTTP requests pending, its maximum; retry shortly";
      return false;
    }
    if (!http_pending_.emplace(id, std::move(pending)).second) {
      why = "request id in use";
      return false;
    }
    ++n;
    return true;
  }
  // The request pending under `id` for `cluster`, taken (its id is spent).
  std::optional<HttpPending> http_take(const std::string& id, const std::string& cluster_identity) {
    std::lock_guard lock(http_mutex_);
    auto it = http_pending_.find(id);
    if (it == http_pending_.end() || it->second.cluster != cluster_identity) return std::nullopt;
    HttpPending out = std::move(it->second);
    http_pending_.erase(it);
    if (--http_per_cluster_[out.cluster] == 0) http_per_cluster_.erase(out.cluster);
    return out;
  }
  void http_sent_to(const std::string& id, std::uint64_t listener) {
    std::lock_guard lock(http_mutex_);
    if (auto it = http_pending_.find(id); it != http_pending_.end()) it->second.listener = listener;
  }
  // The requests a control channel took and had not answered when it ended:
  // their senders get 502 now rather than a timeout later.
  void http_listener_gone(std::uint64_t listener) {
    std::vector<std::pair<std::string, std::shared_ptr<HttpConnection>>> orphans;
    {
      std::lock_guard lock(http_mutex_);
      for (auto it = http_pending_.begin(); it != http_pending_.end();) {
        if (it->second.listener != listener || !it->second.request.empty()) {
          ++it;
          continue;
        }
        if (auto sender = it->second.sender.lock()) orphans.emplace_back(it->first, std::move(sender));
        if (--http_per_cluster_[it->second.cluster] == 0) http_per_cluster_.erase(it->second.cluster);
        it = http_pending_.erase(it);
      }
    }
    for (auto& [id, sender] : orphans) sender->hc_fail(id, 502, "the listener went away before it responded");
  }
  struct HttpCounters {
    std::atomic<std::uint64_t> responded{0};
    std::atomic<std::uint64_t> failed{0};  // no listener, refused, timed out, or a malformed response
    std::atomic<std::uint64_t> over_rendezvous{0};
  };
  HttpCounters& http_counters() { return http_counters_; }
  void close_ws_rendezvous(const std::string& reason) {
    std::vector<WsPair> pumps;
    {
      std::lock_guard lock(ws_mutex_);
      pumps.swap(ws_pumps_);
      if (draining_ && !ws_cutting_) ws_cut_.fetch_add(ws_live_);
      ws_cutting_ = draining_.load();
    }
    for (auto& w : pumps)
      if (auto p = w.pump.lock()) p->close(reason);
  }

  void stop_accepting() noexcept override {
    bool pending = false;
    {
      std::lock_guard lock(ws_mutex_);
      draining_ = true;
      pending = ws_book_.pending() > 0;
    }
    // A ws-form rendezvous announced before the drain has its listener's
    // accept on the way to this address: it may still connect, until
    // drain_pending_websockets lets go. (The tls form's legs go to the
    // rendezvous port, which drains on its own.)
    if (!pending) close_acceptor();
    // The metrics listener stays up while the relay drains: /readyz says so.
  }
  bool drain_pending_websockets(std::chrono::steady_clock::time_point until) override {
    ws_expire();
    bool none = false;
    {
      std::unique_lock lock(ws_mutex_);
      none = ws_ended_.wait_until(lock, until, [this] { return ws_book_.pending() == 0; });
    }
    close_acceptor();
    return none;
  }
  void close_acceptor() noexcept {
    try {
      asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
        error_code ignored;
        self->acceptor_.close(ignored);
      });
    } catch (...) {
    }
  }

  std::shared_ptr<ManagementApi> api() const {
    std::lock_guard lock(mutex_);
    return api_;
  }
  // Connections that are not tunnels, per client address: one address cannot
  // take the whole pre-authentication budget.
  bool admit(const std::string& address) {
    std::lock_guard lock(mutex_);
    auto& n = pending_by_address_[address];
    if (n >= config_.limits.max_connections_per_address) {
      if (n == 0) pending_by_address_.erase(address);
      return false;
    }
    ++n;
    return true;
  }
  // A listen handshake from `address` was refused with a 4xx: how long to
  // hold the answer. Microsoft's SDKs reconnect at once (hyco-ws twice per
  // failure), so the second refusal within a minute waits 250 ms, each further
  // one twice as long, up to 10 s; the held connections stay in the address's
  // pre-authentication budget, which bounds them.
  std::chrono::milliseconds listen_refused(const std::string& address) {
    using namespace std::chrono_literals;
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(mutex_);
    auto it = listen_refusals_.find(address);
    if (it != listen_refusals_.end() && now - it->second.last > 60s) {
      listen_refusals_.erase(it);
      it = listen_refusals_.end();
    }
    if (it == listen_refusals_.end()) {
      if (listen_refusals_.size() >= 10000)
        std::erase_if(listen_refusals_, [&](const auto& kv) { return now - kv.second.last > 60s; });
      if (listen_refusals_.size() < 10000) listen_refusals_.emplace(address, ListenRefusals{1, now});
      return 0ms;
    }
    auto& r = it->second;
    r.last = now;
    r.count = std::min<unsigned>(r.count + 1, 64);
    return std::min<std::chrono::milliseconds>(250ms * (1u << std::min(r.count - 2, 6u)), 10s);
  }
  void release(const std::string& address) {
    std::lock_guard lock(mutex_);
    auto it = pending_by_address_.find(address);
    if (it != pending_by_address_.end() && --it->second == 0) pending_by_address_.erase(it);
  }
  Result<unsigned short> serve_metrics(const std::string& address, unsigned short port) override;
  bool ready() const noexcept { return ready_ && !draining_; }
  bool draining() const noexcept { return draining_; }
  asio::ssl::context& tls() { return *tls_; }
  const RelayConfig& config() const { return config_; }
  // Held by every connection the relay keeps past its handshake (control
  // channels, paired WebSockets) until it is closed, for shutdown to wait on.
  std::shared_ptr<void> connection_lease() {
    {
      std::lock_guard lock(lease_mutex_);
      ++leased_;
    }
    return std::shared_ptr<void>(nullptr, [self = shared_from_this()](void*) {
      std::lock_guard lock(self->lease_mutex_);
      if (--self->leased_ == 0) self->all_closed_.notify_all();
    });
  }
  bool wait_closed(std::chrono::steady_clock::time_point deadline) override {
    std::unique_lock lock(lease_mutex_);
    return all_closed_.wait_until(lock, deadline, [this] { return leased_ == 0; });
  }
  unsigned listeners(const std::string& hybrid_connection) const override {
    const auto counts = listeners_.counts();
    auto it = counts.find(hybrid_connection);
    return it == counts.end() ? 0u : static_cast<unsigned>(it->second);
  }
  // This replica's agents and what the others published of theirs: the
  // management API answers the same whichever replica serves it.
  AgentStatus agent_status(const std::string& identity) const override {
    AgentStatus here = listeners_.status(identity);
    auto peers = replicas();
    if (!peers) return here;
    AgentStatus there = peers->remote_status(identity);
    const bool there_newer =
        there.last_connected && (!here.last_connected || (here.control_channels == 0 && *there.last_connected > *here.last_connected));
    if (there_newer || here.report.empty()) {
      if (!there.report.empty()) here.report = there.report;
    }
    if (there.last_connected && (!here.last_connected || *there.last_connected > *here.last_connected))
      here.last_connected = there.last_connected;
    here.control_channels += there.control_channels;
    return here;
  }
  RelayMetrics& metrics() { return metrics_; }
  spdlog::logger& log() { return *logger_; }
  const std::shared_ptr<spdlog::logger>& logger() { return logger_; }

  std::string render_rendezvous_metrics() const {
    std::string out =
        "# HELP clusterconnect_relay_listeners Agents' control channels (rendezvous listeners), by cluster.\n"
        "# TYPE clusterconnect_relay_listeners gauge\n";
    std::map<std::string, std::size_t> by_hc;
    for (const auto& c : registry()->clusters) by_hc[c.hybrid_connection] = 0;
    for (const auto& [hc, n] : listeners_.counts()) by_hc[hc] = n;
    for (const auto& [hc, n] : by_hc)
      out += "clusterconnect_relay_listeners{hybrid_connection=\"" + hc + "\"} " + std::to_string(n) + "\n";
    // One family in Prometheus' text format: HELP, TYPE, then `{labels} value` samples.
    auto family = [&out](std::string_view name, std::string_view type, std::string_view help,
                         std::initializer_list<std::pair<std::string_view, std::int64_t>> samples) {
      out.append("# HELP ").append(name).append(" ").append(help).append("\n");
      out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
      for (const auto& [labels, value] : samples) out.append(name).append(labels).append(" ").append(std::to_string(value)).append("\n");
    };
    auto n = [](const auto& counter) { return static_cast<std::int64_t>(counter.load()); };
    const auto& w = ws_counters_;
    family("clusterconnect_relay_ws_rendezvous_total", "counter", "WebSocket rendezvous (Hybrid Connections senders), by outcome.",
           {{"{outcome=\"paired\"}", n(w.paired)}, {"{outcome=\"rejected\"}", n(w.rejected)}, {"{outcome=\"expired\"}", n(w.expired)}});
    family("clusterconnect_relay_ws_rendezvous_active", "gauge", "Paired WebSocket rendezvous whose messages the relay passes on now.",
           {{"", n(w.active)}});
    family("clusterconnect_relay_ws_rendezvous_bytes_total", "counter", "Message bytes passed between paired WebSockets, by direction.",
           {{"{direction=\"sender_to_listener\"}", n(w.bytes_sender_to_listener)},
            {"{direction=\"listener_to_sender\"}", n(w.bytes_listener_to_sender)}});
    const auto& h = http_counters_;
    family("clusterconnect_relay_http_requests_total", "counter",
           "Hybrid Connections HTTP-mode requests, by outcome (responded: the listener's response was passed on).",
           {{"{outcome=\"responded\"}", n(h.responded)}, {"{outcome=\"failed\"}", n(h.failed)}});
    family("clusterconnect_relay_http_rendezvous_total", "counter",
           "HTTP-mode requests or responses too large for the control channel, carried on a rendezvous WebSocket.",
           {{"", n(h.over_rendezvous)}});
    auto [port, address] = rendezvous();
    const auto [drained, cut] = drain_outcome();
    family("clusterconnect_relay_rendezvous_shutdown_total", "counter",
           "Rendezvous (either form) open at shutdown, by how they ended: drained (their session closed after GOAWAY) or cut.",
           {{"{outcome=\"drained\"}", static_cast<std::int64_t>(drained)}, {"{outcome=\"cut\"}", static_cast<std::int64_t>(cut)}});
    if (!port) return out;
    const auto& c = port->counters();
    family("clusterconnect_relay_rendezvous_total", "counter", "Rendezvous legs, by outcome.",
           {{"{outcome=\"paired\"}", n(c.paired)}, {"{outcome=\"expired\"}", n(c.expired)}, {"{outcome=\"refused\"}", n(c.refused)}});
    family("clusterconnect_relay_rendezvous_unpaired", "gauge", "Rendezvous legs connected and not yet paired.",
           {{"", n(c.unpaired)}});
    family("clusterconnect_relay_rendezvous_spliced", "gauge", "Paired rendezvous whose bytes the relay moves now.",
           {{"", n(c.splices_active)}});
    family("clusterconnect_relay_rendezvous_bytes_total", "counter", "Bytes spliced between ended rendezvous legs, by direction.",
           {{"{direction=\"proxy_to_agent\"}", n(c.bytes_proxy_to_agent)},
            {"{direction=\"agent_to_proxy\"}", n(c.bytes_agent_to_proxy)}});
    return out;
  }

  std::string render_metrics() const {
    std::string out;
    out += "# HELP clusterconnect_relay_connections_active TLS connections open.\n"
           "# TYPE clusterconnect_relay_connections_active gauge\n"
           "clusterconnect_relay_connections_active " + std::to_string(metrics_.connections_active.load()) + "\n";
    out += "# HELP clusterconnect_relay_handshake_failures_total Refused tunnel handshakes, by reason.\n"
           "# TYPE clusterconnect_relay_handshake_failures_total counter\n";
    for (const auto& [reason, n] : metrics_.handshake_failures())
      out += "clusterconnect_relay_handshake_failures_total{reason=\"" + reason + "\"} " + std::to_string(n) + "\n";
    out += "# HELP clusterconnect_relay_open_failures_total Connects refused or not paired, by reason.\n"
           "# TYPE clusterconnect_relay_open_failures_total counter\n";
    for (const auto& [reason, n] : metrics_.open_failures())
      out += "clusterconnect_relay_open_failures_total{reason=\"" + reason + "\"} " + std::to_string(n) + "\n";
    out += "# HELP clusterconnect_relay_registry_records_refused_total Registry records refused (malformed or colliding), each counted once per revision.\n"
           "# TYPE clusterconnect_relay_registry_records_refused_total counter\n"
           "clusterconnect_relay_registry_records_refused_total " + std::to_string(metrics_.registry_records_refused_total.load()) + "\n"
           "# HELP clusterconnect_relay_registry_snapshots_total Registries built from the store's records (one per change to clusters or roles).\n"
           "# TYPE clusterconnect_relay_registry_snapshots_total counter\n"
           "clusterconnect_relay_registry_snapshots_total " + std::to_string(metrics_.registry_snapshots_total.load()) + "\n"
           "# HELP clusterconnect_relay_store_writes_total Requests this relay made that changed etcd (puts, deletes, transactions, lease grants and revocations; keepalives not counted).\n"
           "# TYPE clusterconnect_relay_store_writes_total counter\n"
           "clusterconnect_relay_store_writes_total " + std::to_string(metrics_.store_writes_total.load()) + "\n"
           "# HELP clusterconnect_relay_store_lease_keepalives_total Keepalives of this replica's etcd lease (three per --replica-ttl).\n"
           "# TYPE clusterconnect_relay_store_lease_keepalives_total counter\n"
           "clusterconnect_relay_store_lease_keepalives_total " + std::to_string(metrics_.store_keepalives_total.load()) + "\n"
           "# HELP clusterconnect_relay_registry_records_refused Registry records refused now.\n"
           "# TYPE clusterconnect_relay_registry_records_refused gauge\n"
           "clusterconnect_relay_registry_records_refused " + std::to_string(metrics_.registry_records_refused.load()) + "\n";
    out += render_rendezvous_metrics();
    return out;
  }

 private:
  void do_accept() {
    acceptor_.async_accept(asio::make_strand(io_), [self = shared_from_this()](error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
      if (!ec) {
        error_code e;
        const auto address = socket.remote_endpoint(e).address().to_string();
        if (static_cast<std::size_t>(self->metrics_.connections_active.load()) >= self->config_.limits.max_connections) {
          self->logger_->warn("connection limit ({}) reached: refusing a connection", self->config_.limits.max_connections);
          self->metrics_.handshake_failure("connection_limit");
          socket.close(e);
        } else if (!self->admit(address)) {
          self->logger_->info("{} has {} connections that are not tunnels: refusing another", address,
                              self->config_.limits.max_connections_per_address);
          self->metrics_.handshake_failure("address_limit");
          socket.close(e);
        } else {
          std::make_shared<HttpConnection>(std::move(socket), self, address)->run();
        }
      } else {
        self->logger_->warn("accept: {}", ec.message());
      }
      self->do_accept();
    });
  }

  asio::io_context& io_;
  tcp::acceptor acceptor_;
  std::shared_ptr<asio::ssl::context> tls_;
  const RelayConfig& config_;
  std::shared_ptr<RegistryStore> store_;
  RelayMetrics& metrics_;
  std::shared_ptr<spdlog::logger> logger_;
  mutable std::mutex mutex_;
  std::shared_ptr<ManagementApi> api_;
  std::map<std::string, std::size_t> pending_by_address_;
  struct ListenRefusals {
    unsigned count;
    std::chrono::steady_clock::time_point last;
  };
  std::map<std::string, ListenRefusals> listen_refusals_;
  std::shared_ptr<tcp::acceptor> metrics_acceptor_;
  ListenerRegistry listeners_{config_.limits.max_tunnels_per_cluster};
  std::shared_ptr<RendezvousPort> rendezvous_;
  std::string rendezvous_address_;
  std::shared_ptr<ReplicaPeers> replicas_;
  RendezvousLimits ws_limits_;
  std::mutex ws_mutex_;
  RendezvousBook<std::shared_ptr<HttpConnection>> ws_book_{ws_limits_};
  WsRendezvousCounters ws_counters_;
  struct WsPair {
    std::weak_ptr<WsPump> pump;
    std::string cluster;  // its identity
  };
  std::vector<WsPair> ws_pumps_;
  std::size_t ws_live_ = 0;  // pairs whose pump has not let its lease go
  std::vector<std::string> ws_forming_;  // taken from the book, their upgrades not yet done: their clusters
  std::condition_variable ws_ended_;
  bool ws_cutting_ = false;  // draining, and the pairs left were closed
  std::atomic<std::uint64_t> ws_drained_{0}, ws_cut_{0};  // pairs that ended while draining, by how
  std::mutex http_mutex_;
  std::map<std::string, HttpPending> http_pending_;
  std::map<std::string, std::size_t> http_per_cluster_;  // by cluster identity
  HttpCounters http_counters_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::mutex lease_mutex_;
  std::condition_variable all_closed_;
  std::size_t leased_ = 0;
  unsigned short port_ = 0;
};

// An agent's control channel, in Hybrid Connections' shape: JSON text
// messages only (`accept` to the agent, `renewToken` from it) and WebSocket
// pings; it ends when its token expires unless a renewal came in time.
void front_log_upgrade_failure(FrontEndImpl& front, const std::string& peer, error_code ec) {
  front.metrics().handshake_failure("upgrade");
  front.log().info("WebSocket upgrade from {} failed: {}", peer, ec.message());
}

class ControlChannel final : public ControlChannelSink, public std::enable_shared_from_this<ControlChannel> {
 public:
  // Messages queued and not yet written; beyond it the channel takes no more.
  static constexpr std::size_t queue_limit = 256;

  ControlChannel(tunnel::WsStream ws, std::shared_ptr<FrontEndImpl> front, const ClusterEntry& cluster,
                 std::chrono::system_clock::time_point expiry, TokenVerifier verify, std::string peer, bool takes_drain)
      : ws_(std::move(ws)),
        front_(std::move(front)),
        identity_(cluster.identity()),
        resource_id_(cluster.resource_id()),
        expiry_(expiry),
        verify_(std::move(verify)),
        peer_(std::move(peer)),
        timer_(ws_.get_executor()),
        lease_(front_->connection_lease()),
        takes_drain_(takes_drain) {}

  bool takes_drain() const override { return takes_drain_; }

  void start(std::uint64_t id) {
    id_ = id;
    front_->log().info("control channel for cluster {} is up ({})", resource_id_, peer_);
    arm_expiry();
    do_read();
  }

  bool send(std::string text, std::optional<std::string> binary) override {
    {
      std::lock_guard lock(mutex_);
      if (closed_ || queued_ >= queue_limit) return false;
      queued_ += binary ? 2 : 1;
    }
    asio::post(ws_.get_executor(), [self = shared_from_this(), text = std::move(text), binary = std::move(binary)]() mutable {
      self->queue_.push_back(Outgoing{std::move(text), false});
      if (binary) self->queue_.push_back(Outgoing{std::move(*binary), true});
      self->flush();
    });
    return true;
  }

  void close(std::uint16_t code, std::string reason) override {
    asio::post(ws_.get_executor(), [self = shared_from_this(), code, reason = std::move(reason)]() mutable {
      self->do_close(code, std::move(reason));
    });
  }

 private:
  void do_read() {
    ws_.async_read(buffer_, [self = shared_from_this()](error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(error_code ec) {
    if (ec) return finish(ec == websocket::error::closed ? "closed by the agent" : "transport: " + ec.message());
    if (!ws_.got_text()) {
      // Only an HTTP-mode response's body, right after the response.
      if (!response_) {
        buffer_.consume(buffer_.size());
        return do_close(1003, "the control channel carries JSON text messages, and a binary body only after a response that announces one");
      }
      auto response = std::move(*response_);
      response_.reset();
      pass_response(std::move(response), beast::buffers_to_string(buffer_.data()));
      buffer_.consume(buffer_.size());
      return do_read();
    }
    if (response_) return do_close(1003, "a response announced a body, and a text message came instead");
    const std::string text = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    auto m = tunnel::rendezvous::parse_control_message(text);
    using State = tunnel::rendezvous::ControlParse::State;
    if (m.state == State::invalid) return do_close(1007, "invalid control message: " + m.error);
    if (m.state == State::unknown_kind) {
      front_->log().debug("control channel {}: ignored a '{}' message", peer_, m.kind);
    } else if (auto* response = std::get_if<tunnel::rendezvous::ResponseMessage>(&m.message)) {
      if (response->body) response_ = std::move(*response);
      else pass_response(std::move(*response), {});
    } else if (auto* renew = std::get_if<tunnel::rendezvous::RenewTokenMessage>(&m.message)) {
      TokenCheck c = verify_(renew->token);
      if (!c.ok) {
        // The channel keeps its current token and ends when it expires.
        front_->log().warn("control channel {}: token renewal refused ({}): {}", peer_, c.status, c.reason);
      } else if (c.expiry > expiry_) {
        expiry_ = c.expiry;
        arm_expiry();
      }
    } else {
      front_->log().debug("control channel {}: ignored a message only the relay sends", peer_);
    }
    do_read();
  }

  // An HTTP-mode response to the sender that waits for it; one to no
  // pending request of this cluster (it timed out, or never was) is dropped.
  void pass_response(tunnel::rendezvous::ResponseMessage response, std::string body) {
    auto pending = front_->http_take(response.request_id, identity_);
    auto sender = pending ? pending->sender.lock() : nullptr;
    if (!sender) return front_->log().debug("control channel {}: a response to no pending request", peer_);
    const std::string id = response.request_id;
    sender->hc_respond(id, std::move(response), std::move(body));
  }

  void flush() {
    if (writing_ || queue_.empty() || closing_) return;
    writing_ = true;
    ws_.text(!queue_.front().binary);
    ws_.async_write(asio::buffer(queue_.front().data), [self = shared_from_this()](error_code ec, std::size_t) {
      self->writing_ = false;
      self->queue_.pop_front();
      {
        std::lock_guard lock(self->mutex_);
        --self->queued_;
      }
      if (ec) return self->finish("transport: " + ec.message());
      if (self->queue_.empty() && self->close_after_queue_) {
        auto [code, reason] = std::move(*self->close_after_queue_);
        self->close_after_queue_.reset();
        return self->do_close(code, std::move(reason));
      }
      self->flush();
    });
  }

  void arm_expiry() {
    timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::max(expiry_ - std::chrono::system_clock::now(), std::chrono::system_clock::duration::zero())));
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) self->do_close(1008, "token expired");
    });
  }

  void do_close(std::uint16_t code, std::string reason) {
    if (closing_) return;
    mark_closed();
    // What was queued before the close (a drain notice) goes first; flush()
    // closes after the last of it.
    if (writing_ || !queue_.empty()) {
      if (!close_after_queue_) close_after_queue_ = std::make_pair(code, std::move(reason));
      return;
    }
    closing_ = true;
    front_->log().info("control channel for cluster {} ({}): closing ({}): {}", resource_id_, peer_, code, reason);
    beast::get_lowest_layer(ws_).expires_after(std::chrono::seconds(5));
    ws_.async_close(websocket::close_reason(static_cast<websocket::close_code>(code), reason), [self = shared_from_this()](error_code) { self->finish("closed"); });
  }

  void finish(const std::string& why) {
    if (finished_) return;
    finished_ = true;
    mark_closed();
    timer_.cancel();
    front_->listeners().remove(id_);
    front_->http_listener_gone(id_);
    front_->log().debug("control channel for cluster {} ({}) ended: {}", resource_id_, peer_, why);
    error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
  }

  void mark_closed() {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }

  tunnel::WsStream ws_;
  std::shared_ptr<FrontEndImpl> front_;
  // Its cluster, by name only: a channel holds no registry snapshot (with
  // many clusters each snapshot is large, and registry changes make new ones).
  std::string identity_;
  std::string resource_id_;
  std::chrono::system_clock::time_point expiry_;
  TokenVerifier verify_;
  std::string peer_;
  asio::steady_timer timer_;
  std::shared_ptr<void> lease_;
  beast::flat_buffer buffer_;
  struct Outgoing {
    std::string data;
    bool binary;
  };
  std::deque<Outgoing> queue_;
  std::optional<tunnel::rendezvous::ResponseMessage> response_;  // its body is the next message
  std::optional<std::pair<std::uint16_t, std::string>> close_after_queue_;
  bool takes_drain_ = false;
  std::uint64_t id_ = 0;
  bool writing_ = false, closing_ = false, finished_ = false;
  std::mutex mutex_;
  std::size_t queued_ = 0;
  bool closed_ = false;
};

HttpConnection::HttpConnection(tcp::socket socket, std::shared_ptr<FrontEndImpl> front, std::string address)
    : stream_(std::move(socket), front->tls()), front_(std::move(front)), address_(std::move(address)) {
  front_->metrics().connections_active.fetch_add(1);
}

// A connection that became a control channel or a paired WebSocket is
// counted by its lease from then on; either way it leaves the
// pre-authentication budget here (a parked sender earlier), its address's
// place first, so a gauge that reads one less never hides a place still held.
HttpConnection::~HttpConnection() {
  if (!released_) front_->release(address_);
  front_->metrics().connections_active.fetch_sub(1);
}

void HttpConnection::run() {
  error_code ec;
  auto& sock = beast::get_lowest_layer(stream_).socket();
  sock.set_option(tcp::no_delay(true), ec);
  auto ep = sock.remote_endpoint(ec);
  if (!ec) peer_ = ep.address().to_string() + ":" + std::to_string(ep.port());
  beast::get_lowest_layer(stream_).expires_after(handshake_timeout);
  stream_.async_handshake(asio::ssl::stream_base::server, [self = shared_from_this()](error_code e) { self->on_tls(e); });
}

void HttpConnection::on_tls(error_code ec) {
  if (ec) {
    front_->log().debug("TLS handshake with {} failed: {}", peer_, ec.message());
    front_->metrics().handshake_failure("tls");
    return;
  }
  do_read();
}

void HttpConnection::do_read() {
  parser_.emplace();
  parser_->header_limit(header_limit);
  // The head is read under the largest limit; on_header applies the one
  // that holds for the request.
  parser_->body_limit(std::max<std::uint64_t>(body_limit, front_->config().limits.max_http_body));
  beast::get_lowest_layer(stream_).expires_after(idle_timeout);
  http::async_read_header(stream_, buffer_, *parser_,
                          [self = shared_from_this()](error_code ec, std::size_t) { self->on_header(ec); });
}

// The head decides what a body may be: none for a tunnel handshake, up to
// max_http_body for an HTTP-mode request (it goes to its listener), at most
// body_limit otherwise; a body too large is refused before a byte of it is
// read.
void HttpConnection::on_header(error_code ec) {
  if (ec) return on_read(ec);
  std::string_view target = parser_->get().target();
  const bool has_body = parser_->content_length().value_or(0) > 0 || parser_->chunked();
  if (target.rfind("/$hc/", 0) == 0 && has_body) {
    front_->metrics().handshake_failure("body");
    req_ = {};
    return respond_error(400, "a tunnel handshake carries no body");
  }
  const std::size_t limit = has_body && http_mode_cluster(target) ? front_->config().limits.max_http_body : body_limit;
  if (parser_->content_length().value_or(0) > limit) return on_read(http::error::body_limit);
  parser_->body_limit(limit);
  if (has_body && ascii_iequals(parser_->get()[http::field::expect], "100-continue")) {
    auto go_on = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
    return http::async_write(stream_, *go_on, [self = shared_from_this(), go_on](error_code e, std::size_t) {
      if (e) return;
      self->read_body();
    });
  }
  read_body();
}

void HttpConnection::read_body() {
  http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](error_code e, std::size_t) { self->on_read(e); });
}

void HttpConnection::on_read(error_code ec) {
  if (ec == http::error::end_of_stream) return do_close();
  if (ec == http::error::header_limit || ec == http::error::body_limit) {
    const auto limit = http_mode_cluster(parser_->get().target()) ? front_->config().limits.max_http_body : body_limit;
    req_ = {};
    return respond_error(ec == http::error::header_limit ? 431 : 413,
                         ec == http::error::header_limit ? "request header too large"
                                                         : "request body too large (limit " + size_text(limit) + ")");
  }
  if (ec) return;  // timeout or a peer gone: nothing to answer
  req_ = parser_->release();
  route();
}

void HttpConnection::route() {
  std::string_view target = req_.target();
  std::string_view path = target.substr(0, target.find('?'));
  if (path.rfind("/$hc/", 0) == 0) return handle_tunnel();
  if (req_.method() == http::verb::get && path == "/healthz") return respond(200, "text/plain", "ok\n");
  if (req_.method() == http::verb::get && path == "/readyz") {
    if (front_->ready()) return respond(200, "text/plain", "ready\n");
    return respond(503, "text/plain", front_->draining() ? "draining\n" : "starting\n");
  }
  if (req_.method() == http::verb::post && path == replica_accept_path) return handle_replica_accept();
  if (const ClusterEntry* cluster = http_mode_cluster(target)) return handle_hc_request(cluster);
  // /metrics names every cluster: it is served on the metrics listener only.
  handle_management();
}

void HttpConnection::handle_tunnel() {
  auto& metrics = front_->metrics();
  std::string_view target = req_.target();
  auto q = target.find('?');
  std::string_view raw_path = target.substr(5, q == std::string_view::npos ? std::string_view::npos : q - 5);
  auto query = parse_query(q == std::string_view::npos ? std::string_view{} : target.substr(q + 1));
  const std::string action = query.count("sb-hc-action") ? query["sb-hc-action"] : std::string{};
  auto refuse = [&](unsigned status, std::string label, std::string_view message) {
    metrics.handshake_failure(label);
    front_->log().info("tunnel handshake from {} refused ({}): {}", peer_, status, message);
    if (action == "listen") return refuse_listener(status, std::string(message));
    respond_error(status, message);
  };
  std::string hc;
  if (!percent_decode(raw_path, hc)) return refuse(400, "bad_path", "the path is not valid percent-encoding");
  while (!hc.empty() && hc.back() == '/') hc.pop_back();
  const auto& config = front_->config();
  // Tokens are checked against the registry as it is now.
  registry_ = front_->registry();
  // A listener names its hybrid connection exactly; a sender may add
  // segments after it (the longest registered prefix is the one).
  std::string_view rest;
  const ClusterEntry* cluster =
      action == "connect" ? registry_->cluster_by_path_prefix(hc, rest) : registry_->cluster_by_path(hc);
  if (!cluster) return refuse(404, "not_found", "no hybrid connection at /$hc/" + hc);
  hc = cluster->hybrid_connection;
  if (action != "listen" && action != "connect" && action != "accept" && action != "request")
    return refuse(400, "bad_action", "sb-hc-action must be 'listen', 'connect', 'accept' or 'request'");
  // A listener's answer to an accept, or its rendezvous for an HTTP-mode
  // request: the id is the credential (random, single-use), as the address
  // the relay sent names it. An accept is taken while the relay drains: its
  // sender waits here (stop_accepting).
  if (action == "accept") return handle_listener_accept(query);
  if (front_->draining()) return refuse(503, "draining", "the relay is shutting down; retry");
  if (action == "request") return handle_listener_request(cluster, query);

  std::string token(req_["ServiceBusAuthorization"]);
  if (token.empty() && query.count("sb-hc-token")) token = query["sb-hc-token"];
  const std::string host = config.public_host.empty() ? std::string(req_[http::field::host]) : config.public_host;
  const std::string requested = "https://" + host + "/" + hc;
  const bool upgrade = websocket::is_upgrade(req_);
  const bool rendezvous_connect = !upgrade && action == "connect" && req_.method() == http::verb::post;
  if (!upgrade && !rendezvous_connect)
    return refuse(400, "not_websocket", "hybrid connection endpoints take WebSocket upgrades, or a POST to connect by rendezvous");
  TokenCheck check = check_tunnel_token(*cluster, requested, action, token);
  if (!check.ok) return refuse(check.status, check.label, check.reason);
  if (rendezvous_connect) return handle_rendezvous_connect(cluster, token);
  // Hybrid Connections: a listener gets a control channel, a sender is
  // parked until one of the cluster's listeners accepts.
  if (action == "listen") return accept_control_channel(cluster, check.expiry, requested);
  // With replicas the accept address names this replica, where the parked
  // sender is, not the load balancer in front of them all.
  const auto peers = front_->replicas();
  park_sender(cluster, token, "wss://" + (peers ? peers->advertise_host() : host) + "/$hc/" + hc);
}

void HttpConnection::accept_control_channel(const ClusterEntry* cluster, std::chrono::system_clock::time_point expiry,
                                            const std::string& requested) {
  if (front_->listeners().count(cluster) >= front_->config().limits.max_tunnels_per_cluster) {
    front_->metrics().handshake_failure("listener_limit");
    return refuse_listener(429, "cluster " + cluster->name + " has its maximum of listeners");
  }
  beast::get_lowest_layer(stream_).expires_never();
  ws_.emplace(std::move(stream_));
  configure_upgrade(*ws_, {}, std::chrono::duration_cast<std::chrono::seconds>(front_->config().limits.idle_timeout));
  ws_->read_message_max(tunnel::rendezvous::max_control_message);
  if (auto peers = front_->replicas()) {
    // The replica id in the handshake: an agent behind one load-balanced
    // address spreads its control channels over distinct replicas with it.
    ws_->set_option(websocket::stream_base::decorator([id = peers->replica_id()](websocket::response_type& res) {
      res.set(http::field::server, std::string("clusterconnect-relay/") + CLUSTERCONNECT_VERSION);
      res.set(tunnel::rendezvous::replica_header, id);
    }));
  }
  // A renewal is checked against the registry as it is then: a rotated key
  // or a removed cluster refuses it.
  TokenVerifier verify = [front = front_, identity = cluster->identity(), requested](std::string_view t) {
    auto registry = front->registry();
    if (const ClusterEntry* now = registry->cluster_by_identity(identity))
      return check_tunnel_token(*now, requested, "listen", t);
    TokenCheck gone;
    gone.status = 404;
    gone.label = "not_found";
    gone.reason = "the cluster is no longer in the relay's registry";
    return gone;
  };
  ws_->async_accept(req_, [self = shared_from_this(), cluster, expiry, verify = std::move(verify)](error_code ec) mutable {
    if (ec) {
      self->front_->metrics().handshake_failure("upgrade");
      self->front_->log().info("WebSocket upgrade from {} failed: {}", self->peer_, ec.message());
      return;
    }
    const bool takes_drain = self->req_[beast::string_view(tunnel::rendezvous::drain_header.data(),
                                                           tunnel::rendezvous::drain_header.size())] == "1";
    auto channel = std::make_shared<ControlChannel>(std::move(*self->ws_), self->front_, *cluster, expiry,
                                                    std::move(verify), self->peer_, takes_drain);
    self->ws_.reset();
    // What the agent says of itself and its cluster (headers of its listen
    // handshake; none from other Hybrid Connections listeners).
    auto report = tunnel::rendezvous::agent_report_from_headers(
        [&req = self->req_](std::string_view name) { return std::string(req[beast::string_view(name.data(), name.size())]); });
    auto id = self->front_->listeners().add(cluster, channel, std::move(report));
    if (!id) return channel->close(1008, "the cluster has its maximum of listeners");
    channel->start(*id);
  });
}

void HttpConnection::handle_rendezvous_connect(const ClusterEntry* cluster, const std::string& token) {
  auto refuse = [&](unsigned status, std::string label, std::string_view message) {
    front_->metrics().open_failure(label);
    front_->log().info("rendezvous connect from {} for {} refused ({}): {}", peer_, cluster->resource_id(), status, message);
    respond_error(status, message);
  };
  auto [port, address] = front_->rendezvous();
  if (!port) return refuse(404, "no_rendezvous", "this relay does not serve rendezvous; connect with a WebSocket tunnel");
  const auto peers = front_->replicas();
  const bool local = front_->listeners().count(cluster) > 0;
  if (!local && !(peers && peers->remote_channel(cluster->identity())))
    return refuse(404, "no_agent", "no agent connected for cluster " + cluster->name + " (" + cluster->resource_id() + ")");
  std::string why;
  // Pending rendezvous are also counted per connect token (by its signature).
  auto sas = parse_sas_token(token);
  const std::string ticket = port->open(cluster->resource_id(), sas ? sas->signature : token, why);
  if (ticket.empty()) return refuse(503, "rendezvous_limit", why);
  tunnel::rendezvous::AcceptMessage accept;
  accept.address = address;
  accept.id = ticket;
  error_code ignored;
  const auto remote = beast::get_lowest_layer(stream_).socket().remote_endpoint(ignored);
  accept.remote_endpoint = tunnel::rendezvous::RemoteEndpoint{remote.address().to_string(), remote.port()};
  // The pin of the proxy's ephemeral key, which the agent then requires of
  // the TLS server its leg meets; passed on as given, when it is a pin.
  if (auto pin = req_[tunnel::rendezvous::proxy_key_pin_header]; !pin.empty()) {
    if (!tls::is_public_key_pin(pin)) return refuse(400, "bad_proxy_key", "the proxy key pin is not 64 hex digits");
    accept.connect_headers.emplace(std::string(tunnel::rendezvous::proxy_key_pin_header), ascii_lowered(std::string(pin)));
  }
  const auto ttl = std::chrono::duration_cast<std::chrono::seconds>(port->ttl()).count();
  nlohmann::json body{{"rendezvous", {{"address", address}, {"ticket", ticket}, {"expiresInSeconds", ttl}}}};
  if (!local) {
    // The agents are on another replica: it announces the rendezvous, whose
    // address is this replica's port, where the proxy's leg comes.
    peers->forward_accept(cluster->identity(), tunnel::rendezvous::to_json(accept),
                          [self = shared_from_this(), port, ticket, body = body.dump(), name = cluster->name,
                           id = cluster->resource_id()](bool sent, std::string failure) {
                            asio::dispatch(self->stream_.get_executor(), [=] {
                              if (sent) return self->respond(200, "application/json", body);
                              port->cancel(ticket);
                              self->front_->metrics().open_failure("no_agent");
                              self->front_->log().info("rendezvous connect from {} for {} not forwarded: {}", self->peer_, id,
                                                       failure);
                              self->respond_error(404, "no agent of cluster " + name + " (" + id + ") took the rendezvous; retry");
                            });
                          });
    return;
  }
  if (!front_->listeners().send_to_one(cluster, tunnel::rendezvous::to_json(accept))) {
    port->cancel(ticket);
    return refuse(404, "no_agent", "no agent of cluster " + cluster->name + " (" + cluster->resource_id() +
                                       ") took the rendezvous; retry");
  }
  respond(200, "application/json", body.dump());
}

void HttpConnection::handle_replica_accept() {
  auto peers = front_->replicas();
  auto refuse = [&](unsigned status, const std::string& label, std::string_view message) {
    refuse_handshake("replica accept", status, label, message);
  };
  if (!peers) return refuse(404, "not_found", "this relay runs without replicas");
  if (!peers->authentic(req_[replica_secret_header])) return refuse(401, "replica_auth", "not a replica of this relay");
  auto body = nlohmann::json::parse(req_.body(), nullptr, false);
  if (!body.is_object() || !body.contains("cluster") || !body["cluster"].is_string() || !body.contains("message") ||
      !body["message"].is_string())
    return refuse(400, "bad_request", "expected {\"cluster\": identity, \"message\": accept}");
  const std::string message = body["message"].get<std::string>();
  auto parsed = tunnel::rendezvous::parse_control_message(message);
  const bool accept = parsed.state == tunnel::rendezvous::ControlParse::State::ok &&
                      std::holds_alternative<tunnel::rendezvous::AcceptMessage>(parsed.message);
  const bool drain = parsed.state == tunnel::rendezvous::ControlParse::State::ok &&
                     std::holds_alternative<tunnel::rendezvous::DrainMessage>(parsed.message);
  if (!accept && !drain) return refuse(400, "bad_request", "the message is not an accept or a drain notice");
  registry_ = front_->registry();
  const ClusterEntry* cluster = registry_->cluster_by_identity(body["cluster"].get<std::string>());
  if (!cluster) return refuse(404, "not_found", "no such cluster in the registry");
  if (drain) {
    // Another replica drains: the cluster's agents here that take drain
    // notices pass it on to their sessions through that replica.
    const auto identity = cluster->identity();
    const auto n = front_->listeners().send_to_drain_takers(
        message, [&](const std::string& of) { return of == identity; });
    front_->log().info("drain notice for cluster {} from another replica: passed to {} control channel(s)",
                       cluster->resource_id(), n);
    return respond(200, "application/json", "{}");
  }
  if (!front_->listeners().send_to_one(cluster, message))
    return refuse(404, "no_agent", "no control channel of the cluster here took the rendezvous");
  respond(200, "application/json", "{}");
}

void HttpConnection::park_sender(const ClusterEntry* cluster, const std::string& token, const std::string& address) {
  auto refuse = [&](unsigned status, std::string label, std::string_view message) {
    front_->metrics().open_failure(label);
    front_->log().info("connect from {} for {} refused ({}): {}", peer_, cluster->resource_id(), status, message);
    respond_error(status, message);
  };
  const auto peers = front_->replicas();
  const bool local = front_->listeners().count(cluster) > 0;
  if (!local && !(peers && peers->remote_channel(cluster->identity())))
    return refuse(404, "no_agent", "no agent connected for cluster " + cluster->name + " (" + cluster->resource_id() + ")");
  tunnel::rendezvous::AcceptMessage accept;
  accept.id = tunnel::rendezvous::make_ticket();
  accept.address = address + "?sb-hc-action=accept&sb-hc-id=" + accept.id;
  // The sender's headers go to the listener, as Hybrid Connections passes
  // them (the WebSocket key, version, protocols), except its credentials.
  for (const auto& field : req_) {
    const std::string name(field.name_string());
    if (ascii_iequals(name, "ServiceBusAuthorization") || ascii_iequals(name, "Authorization") || ascii_iequals(name, "Cookie"))
      continue;
    if (ascii_iequals(name, tunnel::rendezvous::proxy_key_pin_header)) {
      if (!tls::is_public_key_pin(field.value())) return refuse(400, "bad_proxy_key", "the proxy key pin is not 64 hex digits");
      accept.connect_headers[std::string(tunnel::rendezvous::proxy_key_pin_header)] = ascii_lowered(std::string(field.value()));
      continue;
    }
    auto [it, fresh] = accept.connect_headers.emplace(name, std::string(field.value()));
    if (!fresh) it->second += ", " + std::string(field.value());
  }
  error_code ignored;
  const auto remote = beast::get_lowest_layer(stream_).socket().remote_endpoint(ignored);
  accept.remote_endpoint = tunnel::rendezvous::RemoteEndpoint{remote.address().to_string(), remote.port()};
  std::string why;
  auto sas = parse_sas_token(token);
  if (!front_->ws_open(accept.id, *cluster, sas ? sas->signature : token, shared_from_this(), why))
    return refuse(503, front_->draining() ? "draining" : "rendezvous_limit", why);
  ws_cluster_ = cluster->identity();
  if (!local) {
    // The agents are on another replica: it announces the rendezvous, whose
    // address is this replica, where the sender is parked.
    peers->forward_accept(cluster->identity(), tunnel::rendezvous::to_json(accept),
                          [self = shared_from_this(), id = accept.id, name = cluster->name,
                           rid = cluster->resource_id()](bool sent, std::string failure) {
                            if (sent || !self->front_->ws_cancel(id)) return;
                            self->front_->metrics().open_failure("no_agent");
                            self->front_->log().info("connect for {} not forwarded: {}", rid, failure);
                            self->sender_refused(404, "no agent of cluster " + name + " (" + rid + ") took the rendezvous; retry");
                          });
  } else if (!front_->listeners().send_to_one(cluster, tunnel::rendezvous::to_json(accept))) {
    front_->ws_cancel(accept.id);
    return refuse(404, "no_agent", "no agent of cluster " + cluster->name + " (" + cluster->resource_id() + ") took the rendezvous; retry");
  }
  // Parked: nothing is read until the listener answers; the book's ttl ends it.
  front_->release(address_);
  released_ = true;
  beast::get_lowest_layer(stream_).expires_never();
  park_timer_.emplace(stream_.get_executor());
  park_timer_->expires_after(front_->ws_ttl() + std::chrono::milliseconds(100));
  park_timer_->async_wait([self = shared_from_this()](error_code ec) {
    if (!ec) self->front_->ws_expire();
  });
}

void HttpConnection::sender_accepted(tunnel::WsStream listener, std::string subprotocol, std::shared_ptr<void> forming) {
  auto held = std::make_shared<tunnel::WsStream>(std::move(listener));
  asio::dispatch(stream_.get_executor(), [self = shared_from_this(), held, subprotocol = std::move(subprotocol),
                                          forming = std::move(forming)]() mutable {
    if (self->park_timer_) self->park_timer_->cancel();
    // The listener's choice of subprotocol, if the sender offered it.
    const std::string chosen =
        offers_subprotocol(self->req_[http::field::sec_websocket_protocol], subprotocol) ? subprotocol : std::string();
    self->ws_.emplace(std::move(self->stream_));
    configure_upgrade(*self->ws_, chosen);
    self->ws_->async_accept(self->req_, [self, held, forming = std::move(forming)](error_code ec) {
      if (ec) {
        front_log_upgrade_failure(*self->front_, self->peer_, ec);
        asio::dispatch(held->get_executor(), [held] {
          held->async_close(websocket::close_reason(websocket::close_code::going_away, "the sender went away"), [held](error_code) {});
        });
        return;
      }
      self->front_->ws_paired(std::move(*self->ws_), std::move(*held), self->ws_cluster_);
      self->ws_.reset();
    });
  });
}

void HttpConnection::sender_refused(unsigned status, std::string description, bool rejected) {
  asio::dispatch(stream_.get_executor(), [self = shared_from_this(), status, description = std::move(description), rejected] {
    if (self->park_timer_) self->park_timer_->cancel();
    if (status == 504) self->front_->metrics().open_failure("rendezvous_timeout");
    self->front_->log().info("connect from {} not paired ({}): {}", self->peer_, status, reason_phrase(description));
    // It left the pre-authentication budget when it was parked: it ends here.
    self->req_.keep_alive(false);
    // A listener's rejection also names its statusDescription in the status
    // line, where a sender that reads no body finds it.
    self->respond_error(status, description, rejected ? reason_phrase(description) : std::string());
  });
}

void HttpConnection::refuse_handshake(std::string_view what, unsigned status, const std::string& label,
                                      std::string_view message) {
  front_->metrics().handshake_failure(label);
  front_->log().info("{} from {} refused ({}): {}", what, peer_, status, message);
  respond_error(status, message);
}

void HttpConnection::handle_listener_accept(std::map<std::string, std::string>& query) {
  auto refuse = [&](unsigned status, const std::string& label, std::string_view message) {
    refuse_handshake("rendezvous accept", status, label, message);
  };
  const std::string id = query.count("sb-hc-id") ? query["sb-hc-id"] : std::string{};
  if (!tunnel::rendezvous::is_ticket(id)) return refuse(404, "unknown_rendezvous", "no rendezvous is pending under this id");
  // A rejection names its status (Hybrid Connections' parameter names, with
  // and without the sb-hc- prefix).
  auto param = [&query](const char* name) -> std::optional<std::string> {
    for (std::string key : {std::string("sb-hc-") + name, std::string(name)})
      if (auto it = query.find(key); it != query.end()) return it->second;
    return std::nullopt;
  };
  const auto status_text = param("statusCode");
  const bool upgrade = websocket::is_upgrade(req_);
  if (!status_text && !upgrade) return refuse(400, "not_websocket", "an accept is a WebSocket upgrade, or a rejection with a statusCode");
  auto [sender, forming] = front_->ws_take(id, shared_from_this());
  if (!sender) return refuse(404, "unknown_rendezvous", "no rendezvous is pending under this id (expired or already answered)");
  if (status_text) {
    unsigned status = 0;
    for (char c : *status_text) status = c >= '0' && c <= '9' && status < 1000 ? status * 10 + static_cast<unsigned>(c - '0') : 1000;
    if (status < 400 || status > 599) status = 502;
    std::string description = param("statusDescription").value_or("the listener rejected the connection");
    if (description.size() > 200) description.resize(200);
    front_->ws_counters().rejected.fetch_add(1);
    sender->sender_refused(status, std::move(description), true);
    // Hybrid Connections answers a rejection with 410: no WebSocket was made.
    return respond_error(410, "rejection passed to the sender");
  }
  // The listener names the subprotocol it chose for the sender by offering
  // it on its own upgrade (Microsoft's SDKs do), and expects it back.
  std::string subprotocol(req_[http::field::sec_websocket_protocol]);
  subprotocol = subprotocol.substr(0, subprotocol.find(','));
  while (!subprotocol.empty() && subprotocol.back() == ' ') subprotocol.pop_back();
  while (!subprotocol.empty() && subprotocol.front() == ' ') subprotocol.erase(0, 1);
  beast::get_lowest_layer(stream_).expires_never();
  ws_.emplace(std::move(stream_));
  configure_upgrade(*ws_, subprotocol);
  ws_->async_accept(req_, [self = shared_from_this(), sender, subprotocol, forming](error_code ec) {
    if (ec) {
      front_log_upgrade_failure(*self->front_, self->peer_, ec);
      return sender->sender_refused(502, "the listener's accept WebSocket failed: " + ec.message());
    }
    sender->sender_accepted(std::move(*self->ws_), subprotocol, forming);
    self->ws_.reset();
  });
}

// Hybrid Connections HTTP mode: a request to https://HOST/PATH[/…] whose
// path names a hybrid connection (the longest registered prefix).
const ClusterEntry* HttpConnection::http_mode_cluster(std::string_view target) {
  std::string_view path = target.substr(0, target.find('?'));
  if (path.size() < 2 || path.front() != '/' || path.rfind("/$hc/", 0) == 0) return nullptr;
  std::string decoded;
  if (!percent_decode(path.substr(1), decoded)) return nullptr;
  std::string_view rest;
  registry_ = front_->registry();
  return registry_->cluster_by_path_prefix(decoded, rest);
}

namespace {

// The request target as the listener gets it: the relay's own query
// parameters (sb-hc-token and the like) taken out.
std::string listener_target(std::string_view target) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) return std::string(target);
  std::string out(target.substr(0, q));
  std::string_view rest = target.substr(q + 1);
  char sep = '?';
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    std::string_view kv = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    if (kv.empty() || ascii_iequals(kv.substr(0, 6), "sb-hc-")) continue;
    out += sep;
    out.append(kv);
    sep = '&';
  }
  return out;
}

// Fields that belong to one hop, not to the request or response the relay
// passes on.
bool hop_by_hop(std::string_view name) {
  for (std::string_view h : {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"})
    if (ascii_iequals(name, h)) return true;
  return false;
}

bool header_name_ok(std::string_view name) {
  if (name.empty()) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos))
      return false;
  return true;
}

bool header_value_ok(std::string_view value) {
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

}  // namespace

// An HTTP-mode exchange on the listener's rendezvous WebSocket: the request,
// when it was only announced on the control channel, goes to the listener
// there; one response comes back and is passed to the sender; then the
// WebSocket is closed.
class HcRendezvous : public std::enable_shared_from_this<HcRendezvous> {
 public:
  HcRendezvous(tunnel::WsStream ws, std::shared_ptr<FrontEndImpl> front, std::shared_ptr<HttpConnection> sender, std::string id,
               std::string request, std::optional<std::string> body)
      : ws_(std::move(ws)),
        front_(std::move(front)),
        sender_(std::move(sender)),
        id_(std::move(id)),
        request_(std::move(request)),
        body_(std::move(body)),
        timer_(ws_.get_executor()),
        lease_(front_->connection_lease()) {}

  void start() {
    front_->http_counters().over_rendezvous.fetch_add(1);
    const auto& limits = front_->config().limits;
    ws_.read_message_max(std::max(limits.max_http_body, tunnel::rendezvous::max_control_message));
    timer_.expires_after(limits.http_response_timeout);
    timer_.async_wait([weak = weak_from_this()](error_code ec) {
      if (auto self = weak.lock(); self && !ec) self->fail(504, "the listener did not respond in time");
    });
    if (request_.empty()) return read();
    ws_.text(true);
    ws_.async_write(asio::buffer(request_), [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec) return self->fail(502, "the request could not be sent on the listener's rendezvous: " + ec.message());
      if (!self->body_) return self->read();
      self->ws_.binary(true);
      self->ws_.async_write(asio::buffer(*self->body_), [self](error_code ec, std::size_t) {
        if (ec) return self->fail(502, "the request body could not be sent on the listener's rendezvous: " + ec.message());
        self->body_.reset();
        self->read();
      });
    });
  }

 private:
  void read() {
    ws_.async_read(buffer_, [self = shared_from_this()](error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(error_code ec) {
    if (ec == websocket::error::message_too_big)
      return fail(502, "the listener's response is larger than the relay passes on (" +
                           size_text(front_->config().limits.max_http_body) + ")");
    if (ec) return fail(502, "the listener's rendezvous ended before its response: " + ec.message());
    std::string data = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    if (response_) {
      if (ws_.got_text()) return fail(502, "the listener sent text where its response body belongs");
      auto response = std::move(*response_);
      response_.reset();
      return deliver(std::move(response), std::move(data));
    }
    if (!ws_.got_text()) return fail(502, "the listener sent a binary message before its response");
    auto m = tunnel::rendezvous::parse_control_message(data);
    auto* response = std::get_if<tunnel::rendezvous::ResponseMessage>(&m.message);
    if (m.state != tunnel::rendezvous::ControlParse::State::ok || !response)
      return fail(502, "the listener's response is malformed" + (m.error.empty() ? std::string() : ": " + m.error));
    if (response->request_id != id_) return fail(502, "the listener responded to another request");
    if (!response->body) return deliver(std::move(*response), {});
    response_ = std::move(*response);
    read();
  }

  void deliver(tunnel::rendezvous::ResponseMessage response, std::string body) {
    timer_.cancel();
    sender_->hc_respond(id_, std::move(response), std::move(body));
    ws_.async_close(websocket::close_code::normal, [self = shared_from_this()](error_code) {});
  }

  void fail(unsigned status, std::string why) {
    if (failed_) return;
    failed_ = true;
    timer_.cancel();
    sender_->hc_fail(id_, status, std::move(why));
    error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
  }

  tunnel::WsStream ws_;
  std::shared_ptr<FrontEndImpl> front_;
  std::shared_ptr<HttpConnection> sender_;
  std::string id_;
  std::string request_;
  std::optional<std::string> body_;
  asio::steady_timer timer_;
  std::shared_ptr<void> lease_;
  beast::flat_buffer buffer_;
  std::optional<tunnel::rendezvous::ResponseMessage> response_;  // its body is the next message
  bool failed_ = false;
};

void HttpConnection::handle_hc_request(const ClusterEntry* cluster) {
  const std::string& hc = cluster->hybrid_connection;
  auto refuse = [&](unsigned status, std::string label, std::string_view message) {
    front_->metrics().open_failure(label);
    front_->http_counters().failed.fetch_add(1);
    front_->log().info("HTTP request from {} for {} refused ({}): {}", peer_, cluster->resource_id(), status, message);
    respond_error(status, message);
  };
  if (front_->draining()) return refuse(503, "draining", "the relay is shutting down; retry");
  std::string_view target = req_.target();
  const auto q = target.find('?');
  auto query = parse_query(q == std::string_view::npos ? std::string_view{} : target.substr(q + 1));
  std::string token(req_["ServiceBusAuthorization"]);
  if (token.empty() && query.count("sb-hc-token")) token = query["sb-hc-token"];
  const auto& config = front_->config();
  const std::string host = config.public_host.empty() ? std::string(req_[http::field::host]) : config.public_host;
  TokenCheck check = check_tunnel_token(*cluster, "https://" + host + "/" + hc, "connect", token);
  if (!check.ok) return refuse(check.status, check.label, check.reason);
  if (front_->listeners().count(cluster) == 0)
    return refuse(404, "no_agent", "no listener is connected to hybrid connection " + hc);

  tunnel::rendezvous::RequestMessage request;
  request.id = tunnel::rendezvous::make_ticket();
  request.address = "wss://" + host + "/$hc/" + hc + "?sb-hc-action=request&sb-hc-id=" + request.id;
  error_code ignored;
  const auto remote = beast::get_lowest_layer(stream_).socket().remote_endpoint(ignored);
  request.remote_endpoint = tunnel::rendezvous::RemoteEndpoint{remote.address().to_string(), remote.port()};
  tunnel::rendezvous::RequestMessage announced = request;  // address and id only
  request.target = listener_target(target);
  request.method = std::string(req_.method_string());
  // The sender's headers, except its credential for the relay and what
  // belongs to this hop.
  for (const auto& field : req_) {
    const std::string name(field.name_string());
    if (ascii_iequals(name, "ServiceBusAuthorization") || hop_by_hop(name)) continue;
    auto [it, fresh] = request.headers.emplace(name, std::string(field.value()));
    if (!fresh) it->second += ", " + std::string(field.value());
  }
  std::optional<std::string> body;
  if (!req_.body().empty()) {
    request.body = true;
    body = std::move(req_.body());
  }
  std::string message = tunnel::rendezvous::to_json(request);
  // What fits in one control-channel message with its body goes there;
  // anything larger is announced, and delivered on the listener's rendezvous.
  const bool on_channel = message.size() + (body ? body->size() : 0) <= tunnel::rendezvous::max_control_message;
  FrontEndImpl::HttpPending pending{weak_from_this(), cluster->identity(), {}, std::nullopt};
  if (!on_channel) {
    pending.request = message;
    pending.body = std::move(body);
  }
  std::string why;
  if (!front_->http_open(request.id, std::move(pending), why)) return refuse(503, "rendezvous_limit", why);
  const auto sent = on_channel ? front_->listeners().send_to_one(cluster, message, body)
                               : front_->listeners().send_to_one(cluster, tunnel::rendezvous::to_json(announced));
  if (sent) front_->http_sent_to(request.id, *sent);
  if (!sent) {
    front_->http_take(request.id, cluster->identity());
    return refuse(404, "no_agent", "no listener of hybrid connection " + hc + " took the request; retry");
  }
  // Authenticated and waiting: nothing is read until the response.
  if (!released_) {
    front_->release(address_);
    released_ = true;
  }
  hc_id_ = request.id;
  hc_head_ = req_.method() == http::verb::head;
  hc_timer_.emplace(stream_.get_executor());
  hc_timer_->expires_after(config.limits.http_response_timeout);
  hc_timer_->async_wait([self = shared_from_this(), id = request.id, cluster](error_code ec) {
    if (ec || !self->front_->http_take(id, cluster->identity())) return;
    self->hc_fail(id, 504, "the listener did not respond within " +
                               std::to_string(self->front_->config().limits.http_response_timeout.count() / 1000) + " s");
  });
}

void HttpConnection::hc_finish(const std::string& id) {
  if (hc_id_ != id) return;
  hc_id_.clear();
  if (hc_timer_) hc_timer_->cancel();
}

void HttpConnection::hc_respond(std::string id, tunnel::rendezvous::ResponseMessage response, std::string body) {
  asio::dispatch(stream_.get_executor(), [self = shared_from_this(), id = std::move(id), response = std::move(response),
                                          body = std::move(body)]() mutable {
    if (id.empty() || self->hc_id_ != id) return;
    self->hc_finish(id);
    auto bad = [&](std::string_view why) {
      self->front_->http_counters().failed.fetch_add(1);
      self->front_->log().info("HTTP response for {} refused: {}", self->peer_, why);
      self->respond_error(502, why);
    };
    if (response.status < 200) return bad("the listener's response has no final status (" + std::to_string(response.status) + ")");
    auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(response.status),
                                                                   self->req_.version() ? self->req_.version() : 11);
    if (!response.description.empty()) res->reason(response.description);
    const bool no_body = self->hc_head_ || response.status == 204 || response.status == 304;
    for (const auto& [name, value] : response.headers) {
      if (!header_name_ok(name) || !header_value_ok(value)) return bad("the listener's response has a malformed header");
      if (hop_by_hop(name) || (ascii_iequals(name, "content-length") && !self->hc_head_)) continue;
      res->insert(name, value);
    }
    if (!no_body) {
      res->body() = std::move(body);
      res->content_length(res->body().size());
    }
    self->front_->http_counters().responded.fetch_add(1);
    self->send_response(std::move(res), self->req_.keep_alive());
  });
}

void HttpConnection::hc_fail(std::string id, unsigned status, std::string why) {
  asio::dispatch(stream_.get_executor(), [self = shared_from_this(), id = std::move(id), status, why = std::move(why)] {
    if (id.empty() || self->hc_id_ != id) return;
    self->hc_finish(id);
    self->front_->http_counters().failed.fetch_add(1);
    self->front_->log().info("HTTP request from {} failed ({}): {}", self->peer_, status, why);
    self->respond_error(status, why);
  });
}

void HttpConnection::handle_listener_request(const ClusterEntry* cluster, std::map<std::string, std::string>& query) {
  auto refuse = [&](unsigned status, const std::string& label, std::string_view message) {
    refuse_handshake("request rendezvous", status, label, message);
  };
  const std::string id = query.count("sb-hc-id") ? query["sb-hc-id"] : std::string{};
  if (!tunnel::rendezvous::is_ticket(id)) return refuse(404, "unknown_request", "no request is pending under this id");
  if (!websocket::is_upgrade(req_)) return refuse(400, "not_websocket", "a request rendezvous is a WebSocket upgrade");
  auto pending = front_->http_take(id, cluster->identity());
  auto sender = pending ? pending->sender.lock() : nullptr;
  if (!sender) return refuse(404, "unknown_request", "no request is pending under this id (answered, expired or gone)");
  beast::get_lowest_layer(stream_).expires_never();
  ws_.emplace(std::move(stream_));
  configure_upgrade(*ws_, {});
  ws_->async_accept(req_, [self = shared_from_this(), sender, id, pending = std::move(*pending)](error_code ec) mutable {
    if (ec) {
      front_log_upgrade_failure(*self->front_, self->peer_, ec);
      return sender->hc_fail(id, 502, "the listener's rendezvous WebSocket failed: " + ec.message());
    }
    std::make_shared<HcRendezvous>(std::move(*self->ws_), self->front_, sender, id, std::move(pending.request), std::move(pending.body))
        ->start();
    self->ws_.reset();
  });
}

// A refused listener: answered at once the first time, later when its
// address keeps coming back refused (FrontEndImpl::listen_refused).
void HttpConnection::refuse_listener(unsigned status, std::string message) {
  const auto delay = status >= 400 && status < 500 ? front_->listen_refused(address_) : std::chrono::milliseconds(0);
  if (delay.count() == 0) return respond_error(status, message);
  front_->log().debug("listener {} refused again: answering in {} ms", peer_, delay.count());
  req_.keep_alive(false);
  park_timer_.emplace(stream_.get_executor());
  park_timer_->expires_after(delay);
  park_timer_->async_wait([self = shared_from_this(), status, message = std::move(message)](error_code ec) {
    if (!ec) self->respond_error(status, message);
  });
}

void HttpConnection::handle_management() {
  auto api = front_->api();
  if (!api) return respond_error(404, "no such endpoint: " + std::string(req_.target().substr(0, 200)));
  ManagementRequest mr;
  mr.method = std::string(req_.method_string());
  mr.target = std::string(req_.target());
  for (const auto& field : req_) {
    std::string name(field.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto [it, fresh] = mr.headers.emplace(name, std::string(field.value()));
    if (!fresh) it->second += ", " + std::string(field.value());
  }
  mr.body = std::move(req_.body());
  api->handle(std::move(mr), [self = shared_from_this()](ManagementResponse r) {
    asio::post(self->stream_.get_executor(), [self, r = std::move(r)]() mutable {
      auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(r.status),
                                                                     self->req_.version() ? self->req_.version() : 11);
      res->set(http::field::server, std::string("clusterconnect-relay/") + CLUSTERCONNECT_VERSION);
      res->set(http::field::content_type, r.content_type);
      for (const auto& [name, value] : r.headers)
        if (header_name_ok(name) && header_value_ok(value)) res->set(name, value);
      res->body() = std::move(r.body);
      res->prepare_payload();
      self->send_response(std::move(res), self->req_.keep_alive() && r.status < 500);
    });
  });
}

void HttpConnection::respond(unsigned status, std::string content_type, std::string body, std::string_view reason) {
  auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), req_.version() ? req_.version() : 11);
  if (!reason.empty()) res->reason(reason);
  res->set(http::field::server, std::string("clusterconnect-relay/") + CLUSTERCONNECT_VERSION);
  res->set(http::field::content_type, content_type);
  res->body() = std::move(body);
  res->prepare_payload();
  send_response(std::move(res), req_.keep_alive() && status < 500 && status != 413 && status != 431);
}

void HttpConnection::send_response(std::shared_ptr<http::response<http::string_body>> res, bool keep_alive) {
  res_ = std::move(res);
  res_->keep_alive(keep_alive);
  beast::get_lowest_layer(stream_).expires_after(idle_timeout);
  http::async_write(stream_, *res_, [self = shared_from_this(), keep_alive](error_code ec, std::size_t) {
    self->on_write(ec, keep_alive);
  });
}

void HttpConnection::on_write(error_code ec, bool keep_alive) {
  if (ec) return;
  if (!keep_alive) return do_close();
  do_read();
}

void HttpConnection::do_close() {
  beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(5));
  stream_.async_shutdown([self = shared_from_this()](error_code) {
    error_code ignored;
    beast::get_lowest_layer(self->stream_).socket().close(ignored);
  });
}

// One request per connection, plain HTTP, GET only: what a Prometheus scraper
// and a probe need, with a header limit and a timeout.
class MetricsConnection : public std::enable_shared_from_this<MetricsConnection> {
 public:
  MetricsConnection(tcp::socket socket, std::shared_ptr<FrontEndImpl> front)
      : stream_(std::move(socket)), front_(std::move(front)) {}
  void run() {
    parser_.header_limit(8 * 1024);
    parser_.body_limit(0);
    stream_.expires_after(std::chrono::seconds(10));
    http::async_read(stream_, buffer_, parser_, [self = shared_from_this()](error_code ec, std::size_t) { self->on_read(ec); });
  }

 private:
  void on_read(error_code ec) {
    if (ec == http::error::end_of_stream) return;
    if (ec && ec != http::error::header_limit && ec != http::error::body_limit) return;
    const auto& req = parser_.get();
    const std::string_view path = ec ? std::string_view{} : req.target().substr(0, req.target().find('?'));
    unsigned status = 404;
    std::string body = "not found\n", type = "text/plain";
    if (ec) {
      status = 400, body = "bad request\n";
    } else if (req.method() != http::verb::get) {
      status = 405, body = "GET only\n";
    } else if (path == "/metrics") {
      status = 200, body = front_->render_metrics(), type = "text/plain; version=0.0.4";
    } else if (path == "/healthz") {
      status = 200, body = "ok\n";
    } else if (path == "/readyz") {
      const bool ready = front_->ready();
      status = ready ? 200 : 503, body = ready ? "ready\n" : front_->draining() ? "draining\n" : "starting\n";
    }
    res_.result(static_cast<http::status>(status));
    res_.version(11);
    res_.set(http::field::content_type, type);
    res_.body() = std::move(body);
    res_.keep_alive(false);
    res_.prepare_payload();
    http::async_write(stream_, res_, [self = shared_from_this()](error_code, std::size_t) {
      error_code ignored;
      self->stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    });
  }

  beast::tcp_stream stream_;
  std::shared_ptr<FrontEndImpl> front_;
  beast::flat_buffer buffer_;
  http::request_parser<http::empty_body> parser_;
  http::response<http::string_body> res_;
};

Result<unsigned short> FrontEndImpl::serve_metrics(const std::string& address, unsigned short port) {
  error_code ec;
  auto addr = asio::ip::make_address(address, ec);
  if (ec) return fail("metrics listener: '" + address + "' is not an IP address");
  auto acceptor = std::make_shared<tcp::acceptor>(asio::make_strand(io_));
  tcp::endpoint ep(addr, port);
  acceptor->open(ep.protocol(), ec);
  if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor->bind(ep, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail("metrics listener " + address + ":" + std::to_string(port) + ": " + ec.message());
  metrics_acceptor_ = acceptor;
  struct Loop {
    static void accept(std::shared_ptr<tcp::acceptor> a, std::shared_ptr<FrontEndImpl> fe) {
      a->async_accept(asio::make_strand(fe->io_), [a, fe](error_code e, tcp::socket socket) {
        if (e == asio::error::operation_aborted || !a->is_open()) return;
        if (!e) std::make_shared<MetricsConnection>(std::move(socket), fe)->run();
        accept(a, fe);
      });
    }
  };
  Loop::accept(acceptor, shared_from_this());
  return acceptor->local_endpoint().port();
}

}  // namespace

Result<std::shared_ptr<FrontEnd>> FrontEnd::listen(asio::io_context& io, const std::string& address, unsigned short port,
                                                   std::shared_ptr<asio::ssl::context> tls, const RelayConfig& config,
                                                   std::shared_ptr<RegistryStore> registry, RelayMetrics& metrics,
                                                   std::shared_ptr<spdlog::logger> logger) {
  auto fe = std::make_shared<FrontEndImpl>(io, std::move(tls), config, std::move(registry), metrics, std::move(logger));
  if (auto r = fe->bind(address, port); !r) return fail(r.error());
  fe->start();
  return std::shared_ptr<FrontEnd>(fe);
}

}  // namespace clusterconnect::relay
