#pragma once
// Test plumbing for the forwarding engine: a plain TCP Stream, a front end
// that serves accepted connections with http::serve, a scripted upstream
// driven by blocking sockets on its own thread, and a blocking HTTP client.

#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/stream.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace clusterconnect::test {

using tcp = asio::ip::tcp;

// What the engine read from a set of streams: bytes, and reads that ended
// with an error or eof. Tests wait on these instead of sleeping.
struct ReadCounters {
  std::atomic<std::size_t> bytes{0};
  std::atomic<int> ends{0};
  std::atomic<std::size_t> last_asked{0};     // the room the latest read offered
  std::atomic<std::size_t> largest_asked{0};  // the most room any read offered
};

// A clusterconnect::Stream over a TCP socket, on its own strand.
class TcpStream final : public Stream, public std::enable_shared_from_this<TcpStream> {
 public:
  explicit TcpStream(tcp::socket s, std::shared_ptr<std::atomic<int>> writes = nullptr,
                     std::shared_ptr<ReadCounters> reads = nullptr)
      : socket_(std::move(s)), writes_(std::move(writes)), reads_(std::move(reads)) {
    error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
  }
  asio::any_io_executor get_executor() override { return socket_.get_executor(); }
  void async_read_some(asio::mutable_buffer b, IoHandler h) override {
    asio::dispatch(socket_.get_executor(), [self = shared_from_this(), b, h = std::move(h)]() mutable {
      if (!self->reads_) return self->socket_.async_read_some(b, std::move(h));
      self->reads_->last_asked = b.size();
      if (b.size() > self->reads_->largest_asked) self->reads_->largest_asked = b.size();
      self->socket_.async_read_some(b, [reads = self->reads_, h = std::move(h)](error_code ec, std::size_t n) mutable {
        reads->bytes += n;
        if (ec) ++reads->ends;
        h(ec, n);
      });
    });
  }
  void async_write_some(std::span<const asio::const_buffer> bufs, IoHandler h) override {
    if (writes_) ++*writes_;
    std::vector<asio::const_buffer> copy(bufs.begin(), bufs.end());
    asio::dispatch(socket_.get_executor(), [self = shared_from_this(), copy = std::move(copy), h = std::move(h)]() mutable {
      self->socket_.async_write_some(copy, std::move(h));
    });
  }
  void async_shutdown_send(DoneHandler h) override {
    asio::dispatch(socket_.get_executor(), [self = shared_from_this(), h = std::move(h)]() mutable {
      error_code ec;
      self->socket_.shutdown(tcp::socket::shutdown_send, ec);
      asio::post(self->socket_.get_executor(), [h = std::move(h), ec]() mutable { h(ec); });
    });
  }
  void reset(std::string_view) noexcept override {
    asio::dispatch(socket_.get_executor(), [self = shared_from_this()] {
      error_code ignored;
      self->socket_.close(ignored);
    });
  }

 private:
  tcp::socket socket_;
  std::shared_ptr<std::atomic<int>> writes_;  // counts write calls when set
  std::shared_ptr<ReadCounters> reads_;       // counts reads when set
};

// Runs an io_context on two threads for the lifetime of the object.
class IoThreads {
 public:
  IoThreads() : guard_(asio::make_work_guard(io)) {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io.run(); });
  }
  ~IoThreads() {
    guard_.reset();
    io.stop();
    for (auto& t : threads_) t.join();
  }
  asio::io_context io;

 private:
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::vector<std::thread> threads_;
};

// The engine's debug log on stderr when CLUSTERCONNECT_TEST_DEBUG is set.
inline std::shared_ptr<spdlog::logger> debug_logger() {
  static auto logger = [] {
    std::shared_ptr<spdlog::logger> l;
    if (std::getenv("CLUSTERCONNECT_TEST_DEBUG")) {
      l = spdlog::stderr_logger_mt("http-test");
      l->set_level(spdlog::level::debug);
    }
    return l;
  }();
  return logger;
}

// Accepts on 127.0.0.1:0 and serves each connection with the engine.
class Front {
 public:
  Front(asio::io_context& io, std::shared_ptr<http::ForwardPolicy> policy, http::UpstreamConnector connector,
        http::Limits limits = {}, http::Recovery recovery = {})
      : io_(io), acceptor_(io, {asio::ip::make_address("127.0.0.1"), 0}), policy_(std::move(policy)),
        connector_(std::move(connector)), limits_(limits), recovery_(recovery) {
    accept();
  }
  // Serves with upstream connections from `pool`.
  Front(asio::io_context& io, std::shared_ptr<http::ForwardPolicy> policy, std::shared_ptr<http::UpstreamPool> pool,
        http::Limits limits = {}, http::Recovery recovery = {})
      : io_(io), acceptor_(io, {asio::ip::make_address("127.0.0.1"), 0}), policy_(std::move(policy)),
        pool_(std::move(pool)), limits_(limits), recovery_(recovery) {
    accept();
  }
  ~Front() {
    std::promise<void> done;
    asio::post(acceptor_.get_executor(), [&] {
      error_code ignored;
      acceptor_.close(ignored);
      done.set_value();
    });
    done.get_future().wait();
  }
  unsigned short port() const { return acceptor_.local_endpoint().port(); }

  // Write calls on, and reads from, the accepted (client-facing) streams.
  std::shared_ptr<std::atomic<int>> inbound_writes = std::make_shared<std::atomic<int>>(0);
  std::shared_ptr<ReadCounters> inbound_reads = std::make_shared<ReadCounters>();

 private:
  void accept() {
    acceptor_.async_accept(asio::make_strand(io_), [this](error_code ec, tcp::socket s) {
      if (ec) return;
      auto stream = std::make_shared<TcpStream>(std::move(s), inbound_writes, inbound_reads);
      if (pool_) http::serve(io_, std::move(stream), policy_, pool_, limits_, debug_logger(), recovery_);
      else http::serve(io_, std::move(stream), policy_, connector_, limits_, debug_logger(), recovery_);
      accept();
    });
  }
  asio::io_context& io_;
  tcp::acceptor acceptor_;
  std::shared_ptr<http::ForwardPolicy> policy_;
  http::UpstreamConnector connector_;
  std::shared_ptr<http::UpstreamPool> pool_;
  http::Limits limits_;
  http::Recovery recovery_;
};

// A plain TCP connector to 127.0.0.1:port that counts its calls.
inline http::UpstreamConnector tcp_connector(asio::io_context& io, unsigned short port,
                                             std::shared_ptr<std::atomic<int>> calls,
                                             std::shared_ptr<ReadCounters> reads = nullptr) {
  return [&io, port, calls, reads](http::ConnectHandler done) {
    ++*calls;
    auto socket = std::make_shared<tcp::socket>(asio::make_strand(io));
    auto d = std::make_shared<http::ConnectHandler>(std::move(done));
    socket->async_connect({asio::ip::make_address("127.0.0.1"), port}, [socket, d, reads](error_code ec) {
      if (ec) return (*d)(ec, nullptr, "cannot connect to the test upstream: " + ec.message());
      (*d)({}, std::make_shared<TcpStream>(std::move(*socket), nullptr, reads), {});
    });
  };
}

// A blocking socket with a receive timeout, for clients and scripted upstreams.
class Conn {
 public:
  explicit Conn(tcp::socket s) : s_(std::move(s)) { set_timeout(5); }
  Conn(asio::io_context& io, unsigned short port) : s_(io) {
    s_.connect({asio::ip::make_address("127.0.0.1"), port});
    s_.set_option(tcp::no_delay(true));
    set_timeout(5);
  }
  void set_timeout(int seconds) {
    timeval tv{seconds, 0};
    ::setsockopt(s_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  void send(const std::string& data) { asio::write(s_, asio::buffer(data)); }
  void shutdown_send() { s_.shutdown(tcp::socket::shutdown_send); }
  void close() {
    error_code ignored;
    s_.close(ignored);
  }

  // Reads more bytes into the buffer; false on eof, error or timeout.
  bool fill() {
    char buf[65536];
    error_code ec;
    std::size_t n = s_.read_some(asio::buffer(buf), ec);
    if (ec || n == 0) {
      last_error = ec;
      return false;
    }
    buffer.append(buf, n);
    return true;
  }
  std::optional<std::string> read_until(const std::string& delim) {
    for (;;) {
      if (auto pos = buffer.find(delim); pos != std::string::npos) {
        std::string out = buffer.substr(0, pos + delim.size());
        buffer.erase(0, pos + delim.size());
        return out;
      }
      if (!fill()) return std::nullopt;
    }
  }
  std::optional<std::string> read_exactly(std::size_t n) {
    while (buffer.size() < n)
      if (!fill()) return std::nullopt;
    std::string out = buffer.substr(0, n);
    buffer.erase(0, n);
    return out;
  }
  // True when the peer closed (eof) before any further byte arrived.
  bool at_eof() {
    if (!buffer.empty()) return false;
    return !fill() && last_error == asio::error::eof;
  }

  std::string buffer;
  error_code last_error;

 private:
  tcp::socket s_;
};

struct Message {
  std::string start_line;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  std::vector<std::string> chunks;  // chunked body pieces as received
  bool chunked = false;

  const std::string* header(const std::string& lower_name) const {
    for (const auto& [n, v] : headers)
      if (n == lower_name) return &v;
    return nullptr;
  }
  int count(const std::string& lower_name) const {
    int c = 0;
    for (const auto& h : headers) c += h.first == lower_name ? 1 : 0;
    return c;
  }
  int status() const { return start_line.size() >= 12 ? std::stoi(start_line.substr(9, 3)) : 0; }
};

inline std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Reads one message head; the body is read by read_body.
inline std::optional<Message> read_head(Conn& c) {
  auto head = c.read_until("\r\n\r\n");
  if (!head) return std::nullopt;
  Message m;
  std::size_t pos = head->find("\r\n");
  m.start_line = head->substr(0, pos);
  pos += 2;
  while (pos < head->size() - 2) {
    auto end = head->find("\r\n", pos);
    std::string line = head->substr(pos, end - pos);
    auto colon = line.find(':');
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    m.headers.emplace_back(lower(line.substr(0, colon)), value);
    pos = end + 2;
  }
  if (auto te = m.header("transfer-encoding"); te && lower(*te).find("chunked") != std::string::npos) m.chunked = true;
  return m;
}

// Reads one chunk of a chunked body; empty optional at the last chunk.
inline std::optional<std::string> read_chunk(Conn& c, bool& failed) {
  failed = false;
  auto line = c.read_until("\r\n");
  if (!line) {
    failed = true;
    return std::nullopt;
  }
  std::size_t size = std::stoul(*line, nullptr, 16);
  if (size == 0) {
    if (!c.read_until("\r\n")) failed = true;
    return std::nullopt;
  }
  auto data = c.read_exactly(size + 2);
  if (!data) {
    failed = true;
    return std::nullopt;
  }
  return data->substr(0, size);
}

inline bool read_body(Conn& c, Message& m, bool bodiless = false) {
  if (bodiless) return true;
  if (m.chunked) {
    for (;;) {
      bool failed = false;
      auto chunk = read_chunk(c, failed);
      if (failed) return false;
      if (!chunk) return true;
      m.chunks.push_back(*chunk);
      m.body += *chunk;
    }
  }
  if (auto cl = m.header("content-length")) {
    auto body = c.read_exactly(std::stoul(*cl));
    if (!body) return false;
    m.body = *body;
    return true;
  }
  // Requests without framing have no body; responses end at eof.
  if (m.start_line.rfind("HTTP/", 0) != 0) return true;
  while (c.fill()) {
  }
  m.body = std::move(c.buffer);
  c.buffer.clear();
  return true;
}

inline std::optional<Message> read_message(Conn& c, bool bodiless = false) {
  auto m = read_head(c);
  if (!m || !read_body(c, *m, bodiless)) return std::nullopt;
  return m;
}

// An upstream on 127.0.0.1:0 that runs `handler` for each accepted
// connection on a thread of its own, with a blocking socket.
class ScriptedUpstream {
 public:
  using Handler = std::function<void(Conn&, int connection_index)>;
  explicit ScriptedUpstream(Handler handler)
      : acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}), handler_(std::move(handler)) {
    thread_ = std::thread([this] { run(); });
  }
  ~ScriptedUpstream() {
    stop_ = true;
    error_code ignored;
    ::shutdown(acceptor_.native_handle(), SHUT_RDWR);
    thread_.join();
    for (auto& t : workers_) t.join();
  }
  unsigned short port() const { return acceptor_.local_endpoint().port(); }
  int connections() const { return accepted_.load(); }

 private:
  void run() {
    while (!stop_) {
      error_code ec;
      tcp::socket s(io_);
      acceptor_.accept(s, ec);
      if (ec || stop_) return;
      s.set_option(tcp::no_delay(true), ec);
      int index = accepted_++;
      workers_.emplace_back([this, index, s = std::move(s)]() mutable {
        Conn c(std::move(s));
        handler_(c, index);
      });
    }
  }
  asio::io_context io_;
  tcp::acceptor acceptor_;
  Handler handler_;
  std::thread thread_;
  std::vector<std::thread> workers_;
  std::atomic<int> accepted_{0};
  std::atomic<bool> stop_{false};
};

// A policy driven by a function, recording completed exchanges.
class TestPolicy : public http::ForwardPolicy {
 public:
  using Fn = std::function<http::Decision(http::RequestHead&)>;
  explicit TestPolicy(Fn fn = {}) : fn_(std::move(fn)) {}
  void on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) override {
    http::Decision d;
    if (fn_) d = fn_(head);
    done(std::move(d));
  }
  void on_complete(const http::ExchangeRecord& r) noexcept override {
    std::lock_guard lock(mu_);
    records_.push_back(r);
    cv_.notify_all();
  }
  // Waits until `n` exchanges completed.
  std::vector<http::ExchangeRecord> records(std::size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(5), [&] { return records_.size() >= n; });
    return records_;
  }

 private:
  Fn fn_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<http::ExchangeRecord> records_;
};

// Polls `pred` until it holds or a generous timeout passes.
inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

// A signal one thread waits for and another raises.
class Latch {
 public:
  void set() {
    std::lock_guard lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

}  // namespace clusterconnect::test
