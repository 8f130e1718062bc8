#pragma once
// A real clusterconnect-relay process (dev TLS, port 0, ready file) plus the
// tunnel-ws module loaded into a host runtime, and stream helpers: an echo
// agent and a client that sends pseudo-random bytes and checks the sha256 of
// what comes back.

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <future>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "clusterconnect/certificates.hpp"
#include "clusterconnect/host/runtime.hpp"
#include "clusterconnect/sas_token.hpp"
#include "clusterconnect/transport.hpp"
#include "test_env.hpp"

namespace clusterconnect::test {

inline const std::string demo_path = "clusters/00000000-0000-0000-0000-000000000000/sandbox/demo";
inline const std::string other_path = "clusters/00000000-0000-0000-0000-000000000000/sandbox/other";

// An agent's key pair and the pin the relay's registry keeps for it.
struct AgentKey {
  tls::PemPair pem;
  std::string pin;
  explicit AgentKey(const std::string& name) {
    auto p = tls::create_ca(name, 1);
    if (!p) throw std::runtime_error("agent key: " + p.error());
    pem = p.value();
    auto pin_or = tls::public_key_pin(pem.cert);
    if (!pin_or) throw std::runtime_error("agent key pin: " + pin_or.error());
    pin = pin_or.value();
  }
};

// A loopback port nothing listens on, taken below the kernel's ephemeral
// range (32768 and up): a port the kernel hands out for bind(0) or for a
// connect's source may be taken again by any other process before the caller
// binds it; one below that range is taken only by another such pick.
inline unsigned short free_port() {
  static std::mt19937 pick{std::random_device{}()};
  std::uniform_int_distribution<int> range(20000, 32000);
  for (int attempt = 0; attempt < 200; ++attempt) {
    const auto port = static_cast<unsigned short>(range(pick));
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) break;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    if (free) return port;
  }
  throw std::runtime_error("no free loopback port between 20000 and 32000");
}

// In a child just forked by the test's main thread: it dies with the test,
// so that a test that aborts leaves no relay or etcd running (and busy).
inline void die_with_parent(pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);
}

// The default relay: clusters demo and other, demo's agent key (agent.crt,
// agent.key beside the configuration) pinned, a rendezvous port.
class RelayProcess {
 public:
  explicit RelayProcess(std::vector<std::string> extra_args = {}, unsigned short port = 0) : extra_(std::move(extra_args)) {
    write_file(dir_.path() / "listen.key", "listen-secret\n");
    write_file(dir_.path() / "connect.key", "connect-secret\n");
    write_file(dir_.path() / "other.key", "other-secret\n");
    AgentKey agent("demo agent");
    write_file(dir_.path() / "agent.crt", agent.pem.cert);
    write_file(dir_.path() / "agent.key", agent.pem.key);
    agent_pin_ = agent.pin;
    extra_.insert(extra_.end(), {"--rendezvous-listen", "127.0.0.1:0"});
    nlohmann::json cfg = {
        {"clusters",
         {{{"subscription", "00000000-0000-0000-0000-000000000000"},
           {"resource_group", "sandbox"},
           {"name", "demo"},
           {"hybrid_connection", demo_path},
           {"agent_key_pins", {agent.pin}},
           {"keys",
            {{{"name", "listen"}, {"rights", {"listen"}}, {"secret_file", "listen.key"}},
             {{"name", "connect"}, {"rights", {"connect"}}, {"secret_file", "connect.key"}}}}},
          {{"subscription", "00000000-0000-0000-0000-000000000000"},
           {"resource_group", "sandbox"},
           {"name", "other"},
           {"hybrid_connection", other_path},
           {"keys", {{{"name", "listen"}, {"rights", {"listen"}}, {"secret_file", "other.key"}}}}}}}};
    write_file(dir_.path() / "relay.json", cfg.dump(2));
    start(port);
  }
  // A relay with the caller's registry; `files` (name -> content, e.g. key
  // files) are written beside the configuration.
  // `port` 0: one the kernel picks (a relay that is restarted at its port
  // should be given one from free_port()).
  RelayProcess(const nlohmann::json& config, const std::map<std::string, std::string>& files,
               std::vector<std::string> extra_args = {}, unsigned short port = 0)
      : extra_(std::move(extra_args)) {
    for (const auto& [name, content] : files) write_file(dir_.path() / name, content);
    write_file(dir_.path() / "relay.json", config.dump(2));
    start(port);
  }
  ~RelayProcess() { stop(SIGTERM); }

  void start(unsigned short port) {
    std::filesystem::remove(ready_file());
    std::vector<std::string> args = {(stage_dir() / "bin" / "clusterconnect-relay").string(),
                                     "--config", (dir_.path() / "relay.json").string(),
                                     "--dev-tls", (dir_.path() / "tls").string(),
                                     "--listen", "127.0.0.1:" + std::to_string(port),
                                     "--ready-file", ready_file().string(),
                                     "--metrics-listen", "127.0.0.1:0"};
    args.insert(args.end(), extra_.begin(), extra_.end());
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      die_with_parent(parent);
      int fd = ::open((dir_.path() / "relay.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      std::ifstream in(ready_file());
      auto j = nlohmann::json::parse(in, nullptr, false);
      if (j.is_object() && j.contains("port")) {
        port_ = j["port"].get<unsigned short>();
        ca_file_ = j["ca_file"].get<std::string>();
        metrics_port_ = j.value("metrics_port", static_cast<unsigned short>(0));
        rendezvous_port_ = j.value("rendezvous_port", static_cast<unsigned short>(0));
        return;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("relay exited early:\n" + log());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("relay not ready in 20 s:\n" + log());
  }

  bool running() const { return pid_ > 0; }
  // Returns the exit status (or -1 when it had to be killed).
  int stop(int sig, std::chrono::seconds wait = std::chrono::seconds(15)) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, sig);
    const auto deadline = std::chrono::steady_clock::now() + wait;
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return -1;
  }

  unsigned short port() const { return port_.load(); }
  // With --rendezvous-listen: where both legs of a rendezvous connect.
  unsigned short rendezvous_port() const { return rendezvous_port_.load(); }
  // Plain HTTP: /metrics, /healthz, /readyz.
  std::string metrics_url(const std::string& path = "/metrics") const {
    return "http://127.0.0.1:" + std::to_string(metrics_port_.load()) + path;
  }
  // One series of the relay's /metrics, 0 when absent.
  unsigned gauge(const std::string& series) const {
    const auto metrics = run("curl -sS --max-time 10 " + quote(metrics_url())).output;
    const std::string key = "\n" + series + " ";
    const auto at = metrics.find(key);
    return at == std::string::npos ? 0u : static_cast<unsigned>(std::strtoul(metrics.c_str() + at + key.size(), nullptr, 10));
  }
  // TLS connections that are not (yet) tunnels: the pre-authentication budget.
  unsigned connections_active() const { return gauge("clusterconnect_relay_connections_active"); }
  const std::string& ca_file() const { return ca_file_; }
  const std::filesystem::path& dir() const { return dir_.path(); }
  std::string host() const { return "127.0.0.1:" + std::to_string(port_.load()); }
  std::string url(const std::string& path = demo_path) const { return "wss://" + host() + "/$hc/" + path; }
  // Pinned to the default agent key.
  RelayEndpoint endpoint(const std::string& path = demo_path) const {
    return RelayEndpoint{url(path), ca_file_, false, agent_pin_.empty() ? std::vector<std::string>{} : std::vector<std::string>{agent_pin_}};
  }
  // The default agent's identity, as ListenOptions takes it.
  void set_agent_identity(ListenOptions& o) const {
    o.identity_cert_file = (dir_.path() / "agent.crt").string();
    o.identity_key_file = (dir_.path() / "agent.key").string();
  }
  unsigned listeners(const std::string& path = demo_path) const {
    return gauge("clusterconnect_relay_listeners{hybrid_connection=\"" + path + "\"}");
  }
  std::string token(const std::string& key_name, const std::string& secret, const std::string& path = demo_path,
                    std::chrono::seconds ttl = std::chrono::hours(1)) const {
    return make_sas_token("http://" + host() + "/" + path, key_name, secret, std::chrono::system_clock::now() + ttl);
  }
  std::string listen_token() const { return token("listen", "listen-secret"); }
  std::string connect_token() const { return token("connect", "connect-secret"); }
  std::string log() const {
    std::ifstream in(dir_.path() / "relay.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  static void write_file(const std::filesystem::path& p, const std::string& s) { std::ofstream(p) << s; }
  std::filesystem::path ready_file() const { return dir_.path() / "ready.json"; }

  TempDir dir_;
  std::vector<std::string> extra_;
  pid_t pid_ = -1;
  // Read by agents' token callbacks on I/O threads while a restart writes it.
  std::atomic<unsigned short> port_{0};
  std::atomic<unsigned short> metrics_port_{0};
  std::atomic<unsigned short> rendezvous_port_{0};
  std::string ca_file_;
  std::string agent_pin_;  // the default registry's demo agent
};

// Two clusters called "prod" in one subscription, in resource groups team-a
// and team-b, each with its own listen and connect keys (secrets "a-listen",
// "a-connect", "b-listen", "b-connect"): names repeat, identities do not.
inline const std::string prod_subscription = "00000000-0000-0000-0000-000000000000";
inline const std::string path_a = "clusters/" + prod_subscription + "/team-a/prod";
inline const std::string path_b = "clusters/" + prod_subscription + "/team-b/prod";
inline RelayProcess same_named_clusters(nlohmann::json limits = {{"max_tunnels_per_cluster", 2}},
                                        std::vector<std::string> extra_args = {}) {
  auto cluster = [](const std::string& group, const std::string& path, const std::string& key_prefix) {
    return nlohmann::json{{"subscription", prod_subscription},
                          {"resource_group", group},
                          {"name", "prod"},
                          {"hybrid_connection", path},
                          {"keys",
                           {{{"name", "listen"}, {"rights", {"listen"}}, {"secret_file", key_prefix + "-listen.key"}},
                            {{"name", "connect"}, {"rights", {"connect"}}, {"secret_file", key_prefix + "-connect.key"}}}}};
  };
  nlohmann::json config{{"clusters", {cluster("team-a", path_a, "a"), cluster("team-b", path_b, "b")}},
                        {"limits", limits}};
  return RelayProcess(config,
                      {{"a-listen.key", "a-listen\n"},
                       {"a-connect.key", "a-connect\n"},
                       {"b-listen.key", "b-listen\n"},
                       {"b-connect.key", "b-connect\n"}},
                      std::move(extra_args));
}

// A host runtime with one transport module (tunnel-ws by default, or
// tunnel-tls) loaded from the build's stage.
class ModuleHost {
 public:
  // `record`: the host's log lines of level info and above are kept for log().
  explicit ModuleHost(const std::string& transport = "ws", bool record = false)
      : ring_(record ? std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000) : nullptr), runtime_(make_logger(ring_), 2) {
    auto so = stage_dir() / "lib" / "connectedk8s" / "plugins" / ("tunnel-" + transport + ".so");
    if (!runtime_.loader().load_file(so, runtime_)) {
      std::string why = runtime_.loader().rejections().empty() ? "?" : runtime_.loader().rejections().back().reason;
      throw std::runtime_error("tunnel-" + transport + " not loaded: " + why);
    }
    transport_ = runtime_.capabilities().transport(transport);
    if (!transport_) throw std::runtime_error("no transport:" + transport + " capability");
    runtime_.start();
  }
  ~ModuleHost() { runtime_.stop(); }
  TransportCapability& transport() { return *transport_; }
  asio::io_context& io() { return runtime_.io_context(); }
  std::string log() const {
    std::string out;
    if (ring_)
      for (auto& line : ring_->last_formatted()) out += line;
    return out;
  }

 private:
  static std::shared_ptr<spdlog::logger> make_logger(const std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt>& ring) {
    auto l = host::make_logger("test", 0, host::LogFormat::text);
    l->set_level(spdlog::level::warn);
    if (ring) {
      // stderr keeps warnings only; the ring takes info too.
      for (auto& sink : l->sinks()) sink->set_level(spdlog::level::warn);
      ring->set_level(spdlog::level::info);
      ring->set_pattern("%l %v");
      l->sinks().push_back(ring);
      l->set_level(spdlog::level::info);
    }
    return l;
  }
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> ring_;
  host::Runtime runtime_;
  std::shared_ptr<TransportCapability> transport_;
};

// Deterministic pseudo-random bytes (xorshift64*).
class ByteSource {
 public:
  explicit ByteSource(std::uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  void fill(std::uint8_t* p, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      if (avail_ == 0) {
        state_ ^= state_ >> 12;
        state_ ^= state_ << 25;
        state_ ^= state_ >> 27;
        word_ = state_ * 0x2545F4914F6CDD1Dull;
        avail_ = 8;
      }
      p[i] = static_cast<std::uint8_t>(word_);
      word_ >>= 8;
      --avail_;
    }
  }

 private:
  std::uint64_t state_, word_ = 0;
  int avail_ = 0;
};

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* p, std::size_t n) { EVP_DigestUpdate(ctx_, p, n); }
  std::string hex() {
    unsigned char md[32];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
      out += digits[md[i] >> 4];
      out += digits[md[i] & 15];
    }
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

// Agent side: echoes ("echo"), or writes forever ("source"), by OPEN metadata.
class AgentStream : public std::enable_shared_from_this<AgentStream> {
 public:
  AgentStream(StreamPtr s, std::atomic<std::uint64_t>* source_bytes, std::atomic<std::uint64_t>* echoed_bytes = nullptr,
              std::atomic<int>* live = nullptr)
      : s_(std::move(s)), source_bytes_(source_bytes), echoed_bytes_(echoed_bytes), live_(live) {
    if (live_) ++*live_;
  }
  ~AgentStream() {
    if (live_) --*live_;
  }
  void echo() { read(); }
  // Reads to eof, then answers with the hex sha256 of what it read.
  void digest() {
    hash_ = std::make_shared<Sha256>();
    read_digest();
  }
  void source() {
    ByteSource(7).fill(buf_.data(), buf_.size());
    write_forever();
  }

 private:
  void read() {
    s_->async_read_some(asio::buffer(buf_), [self = shared_from_this()](error_code ec, std::size_t n) {
      if (ec == asio::error::eof) {
        self->s_->async_shutdown_send([self](error_code) {});
        return;
      }
      if (ec) return;
      self->write(0, n);
    });
  }
  void write(std::size_t off, std::size_t n) {
    asio::const_buffer b(buf_.data() + off, n - off);
    s_->async_write_some(std::span<const asio::const_buffer>(&b, 1), [self = shared_from_this(), off, n](error_code ec, std::size_t k) {
      if (ec) return;
      if (self->echoed_bytes_) self->echoed_bytes_->fetch_add(k);
      if (off + k < n) return self->write(off + k, n);
      self->read();
    });
  }
  void read_digest() {
    s_->async_read_some(asio::buffer(buf_), [self = shared_from_this()](error_code ec, std::size_t n) {
      if (ec == asio::error::eof) {
        self->answer_ = self->hash_->hex();
        asio::const_buffer b(self->answer_.data(), self->answer_.size());
        self->s_->async_write_some(std::span<const asio::const_buffer>(&b, 1), [self](error_code e, std::size_t) {
          if (!e) self->s_->async_shutdown_send([self](error_code) {});
        });
        return;
      }
      if (ec) return;
      self->hash_->update(self->buf_.data(), n);
      self->read_digest();
    });
  }
  void write_forever() {
    asio::const_buffer b(buf_.data(), buf_.size());
    s_->async_write_some(std::span<const asio::const_buffer>(&b, 1), [self = shared_from_this()](error_code ec, std::size_t k) {
      if (ec) return;
      self->source_bytes_->fetch_add(k);
      self->write_forever();
    });
  }

  StreamPtr s_;
  std::atomic<std::uint64_t>* source_bytes_;
  std::atomic<std::uint64_t>* echoed_bytes_;
  std::atomic<int>* live_;
  std::array<std::uint8_t, 64 * 1024> buf_{};
  std::shared_ptr<Sha256> hash_;
  std::string answer_;
};

struct Agent {
  std::atomic<std::uint64_t> source_bytes{0};
  std::atomic<std::uint64_t> echoed_bytes{0};
  std::atomic<unsigned> streams{0};
  // Streams the agent still serves: one whose peer reset it lets go of it.
  std::atomic<int> live{0};
  AcceptHandler handler() {
    return [this](StreamPtr s, const std::map<std::string, std::string>& md) {
      ++streams;
      auto a = std::make_shared<AgentStream>(std::move(s), &source_bytes, &echoed_bytes, &live);
      auto it = md.find("mode");
      if (it != md.end() && it->second == "source") a->source();
      else if (it != md.end() && it->second == "sha256") a->digest();
      else a->echo();
    };
  }
};

inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

struct ExchangeResult {
  error_code ec;
  std::string what;
  std::uint64_t sent = 0, received = 0;
  std::string sent_sha, received_sha;
  std::string received_head;  // the first bytes received, for short answers
};

// Client side: writes `size` pseudo-random bytes then half-closes, while
// reading back until eof; hashes both directions.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(StreamPtr s, std::uint64_t size, std::uint64_t seed, std::function<void(ExchangeResult)> done)
      : s_(std::move(s)), size_(size), src_(seed), done_(std::move(done)) {}
  void start() {
    do_write();
    do_read();
  }

 private:
  void do_write() {
    if (r_.sent == size_) {
      s_->async_shutdown_send([self = shared_from_this()](error_code ec) {
        if (ec) self->error(ec, "shutdown_send");
        self->writing_ = false;
        self->maybe_done();
      });
      return;
    }
    out_len_ = static_cast<std::size_t>(std::min<std::uint64_t>(out_.size(), size_ - r_.sent));
    src_.fill(out_.data(), out_len_);
    sent_hash_.update(out_.data(), out_len_);
    out_off_ = 0;
    write_some();
  }
  void write_some() {
    asio::const_buffer b(out_.data() + out_off_, out_len_ - out_off_);
    s_->async_write_some(std::span<const asio::const_buffer>(&b, 1), [self = shared_from_this()](error_code ec, std::size_t n) {
      if (ec) {
        self->error(ec, "write");
        self->writing_ = false;
        return self->maybe_done();
      }
      self->out_off_ += n;
      self->r_.sent += n;
      if (self->out_off_ < self->out_len_) return self->write_some();
      self->do_write();
    });
  }
  void do_read() {
    s_->async_read_some(asio::buffer(in_), [self = shared_from_this()](error_code ec, std::size_t n) {
      if (ec) {
        if (ec != asio::error::eof) self->error(ec, "read");
        self->reading_ = false;
        return self->maybe_done();
      }
      self->recv_hash_.update(self->in_.data(), n);
      if (self->r_.received_head.size() < 256)
        self->r_.received_head.append(reinterpret_cast<const char*>(self->in_.data()), std::min<std::size_t>(n, 256));
      self->r_.received += n;
      self->do_read();
    });
  }
  void error(error_code ec, const char* what) {
    if (!r_.ec) {
      r_.ec = ec;
      r_.what = what;
    }
  }
  void maybe_done() {
    if (writing_ || reading_) return;
    r_.sent_sha = sent_hash_.hex();
    r_.received_sha = recv_hash_.hex();
    auto d = std::move(done_);
    d(r_);
  }

  StreamPtr s_;
  std::uint64_t size_;
  ByteSource src_;
  std::function<void(ExchangeResult)> done_;
  ExchangeResult r_;
  Sha256 sent_hash_, recv_hash_;
  std::array<std::uint8_t, 64 * 1024> out_{}, in_{};
  std::size_t out_len_ = 0, out_off_ = 0;
  bool writing_ = true, reading_ = true;
};

struct OpenResult {
  error_code ec;
  StreamPtr stream;
  std::string reason;
};

inline OpenResult open_stream(TunnelClient& client, std::map<std::string, std::string> md = {},
                              std::chrono::seconds limit = std::chrono::seconds(20)) {
  auto p = std::make_shared<std::promise<OpenResult>>();
  auto f = p->get_future();
  client.async_open(OpenRequest{std::move(md)},
                    [p](error_code ec, StreamPtr s, std::string reason) { p->set_value(OpenResult{ec, std::move(s), std::move(reason)}); });
  if (f.wait_for(limit) != std::future_status::ready) return OpenResult{asio::error::timed_out, nullptr, "test: open did not complete"};
  return f.get();
}

inline ExchangeResult exchange(StreamPtr s, std::uint64_t size, std::uint64_t seed, std::chrono::seconds limit) {
  auto p = std::make_shared<std::promise<ExchangeResult>>();
  auto f = p->get_future();
  std::make_shared<Exchange>(std::move(s), size, seed, [p](ExchangeResult r) { p->set_value(std::move(r)); })->start();
  if (f.wait_for(limit) != std::future_status::ready) {
    ExchangeResult r;
    r.ec = asio::error::timed_out;
    r.what = "test: exchange did not complete";
    return r;
  }
  return f.get();
}

}  // namespace clusterconnect::test
