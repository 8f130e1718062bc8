// libFuzzer target: the HTTP forwarding engine (core/src/http/forward.cpp)
// between a client and upstream connections that are in-memory streams fed
// by the input. Whatever either side sends:
//   - nothing crashes and sanitizers stay quiet;
//   - every request the engine writes upstream is well-formed HTTP/1.1 that
//     a strict parser reads with the same framing (no request smuggling
//     through the engine), up to an upgrade;
//   - every response the engine writes to the client is well-formed, up to
//     an upgrade or the end of what it wrote (a connection cut mid-body);
//   - once the client and then the upstreams go away, nothing is left
//     (LeakSanitizer: no cycle of handlers and connections outlives them).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "clusterconnect/http/forward.hpp"
#include "fuzz_input.hpp"

using namespace clusterconnect;
namespace bhttp = boost::beast::http;

namespace {

[[noreturn]] void broken(const char* what, std::string_view bytes) {
  std::fprintf(stderr, "forward_fuzz: invariant broken: %s\n--- bytes ---\n%.*s\n", what,
               static_cast<int>(std::min<std::size_t>(bytes.size(), 4096)), bytes.data());
  std::abort();
}

// One side of a connection: reads hand out the scripted chunks, then end of
// stream (or wait for good, when `stays_open`); writes are kept.
class MemStream final : public Stream, public std::enable_shared_from_this<MemStream> {
 public:
  MemStream(asio::any_io_executor ex, std::deque<std::string> chunks, bool stays_open)
      : ex_(std::move(ex)), chunks_(std::move(chunks)), stays_open_(stays_open) {}

  asio::any_io_executor get_executor() override { return ex_; }

  void async_read_some(asio::mutable_buffer buffer, IoHandler handler) override {
    asio::post(ex_, [self = shared_from_this(), buffer, h = std::move(handler)]() mutable {
      if (self->reset_) return h(asio::error::operation_aborted, 0);
      if (buffer.size() == 0) return h({}, 0);
      while (!self->chunks_.empty() && self->chunks_.front().empty()) self->chunks_.pop_front();
      if (self->chunks_.empty()) {
        if (self->stays_open_) {
          self->parked_ = std::move(h);
          return;
        }
        return h(asio::error::eof, 0);
      }
      auto& front = self->chunks_.front();
      const std::size_t n = std::min(buffer.size(), front.size());
      std::memcpy(buffer.data(), front.data(), n);
      front.erase(0, n);
      h({}, n);
    });
  }

  void async_write_some(std::span<const asio::const_buffer> buffers, IoHandler handler) override {
    std::size_t total = 0;
    if (!reset_ && !shut_)
      for (const auto& b : buffers) {
        written_.append(static_cast<const char*>(b.data()), b.size());
        total += b.size();
      }
    const error_code ec = reset_ ? asio::error::connection_reset : shut_ ? asio::error::shut_down : error_code{};
    asio::post(ex_, [h = std::move(handler), ec, total]() mutable { h(ec, ec ? 0 : total); });
  }

  void async_shutdown_send(DoneHandler handler) override {
    shut_ = true;
    asio::post(ex_, [h = std::move(handler)]() mutable { h({}); });
  }

  void reset(std::string_view) noexcept override {
    reset_ = true;
    if (auto h = std::move(parked_))
      asio::post(ex_, [h = std::move(h)]() mutable { h(asio::error::operation_aborted, 0); });
  }

  const std::string& written() const { return written_; }

 private:
  asio::any_io_executor ex_;
  std::deque<std::string> chunks_;
  bool stays_open_;
  bool reset_ = false;
  bool shut_ = false;
  IoHandler parked_;
  std::string written_;
};

class FuzzPolicy final : public http::ForwardPolicy {
 public:
  explicit FuzzPolicy(bool rejects) : rejects_(rejects) {}
  void on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) override {
    http::Decision d;
    if (rejects_ && ++seen_ % 3 == 0) {
      d.forward = false;
      d.reply = http::status_reply(401, "Unauthorized", "no");
    } else {
      head.remove("Authorization");
      head.add("Impersonate-User", "fuzz");
    }
    done(std::move(d));
  }

 private:
  bool rejects_;
  unsigned seen_ = 0;
};

// Reads `bytes` as consecutive HTTP/1.1 messages with a strict parser. Stops
// at an upgrade (what follows is not HTTP) or at a message cut short at the
// end; anything else that does not parse breaks the invariant.
template <bool isRequest>
void check_messages(const std::string& bytes, const char* what) {
  std::string_view rest(bytes);
  while (!rest.empty()) {
    bhttp::parser<isRequest, bhttp::string_body> p;
    p.eager(true);
    p.header_limit(1024 * 1024);
    p.body_limit(64 * 1024 * 1024);
    boost::system::error_code ec;
    std::size_t used = 0;
    while (!p.is_done()) {
      const std::size_t n = p.put(asio::buffer(rest.data() + used, rest.size() - used), ec);
      used += n;
      if (ec == bhttp::error::need_more) return;  // cut short at the end
      if (ec) broken(what, rest);
      if (n == 0 && !p.is_done()) return;
    }
    const auto& m = p.get();
    if constexpr (isRequest) {
      if (p.upgrade() || m.method() == bhttp::verb::connect) return;
    } else {
      if (m.result_int() == 101) return;
    }
    rest.remove_prefix(used);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  asio::io_context io(1);
  auto logger = std::make_shared<spdlog::logger>("forward-fuzz", std::make_shared<spdlog::sinks::null_sink_st>());

  const std::uint8_t flags = in.byte();
  std::deque<std::string> client_chunks;
  for (int n = 1 + in.byte() % 16; n > 0 && !in.done(); --n) client_chunks.push_back(in.text(in.u16() % 8192));
  std::deque<std::deque<std::string>> upstream_scripts;
  for (int n = in.byte() % 8; n > 0 && !in.done(); --n) {
    std::deque<std::string> chunks;
    for (int k = 1 + in.byte() % 8; k > 0 && !in.done(); --k) chunks.push_back(in.text(in.u16() % 8192));
    upstream_scripts.push_back(std::move(chunks));
  }
  bool client_sent_head = false;
  for (const auto& c : client_chunks) client_sent_head |= c.find("HEAD") != std::string::npos;

  auto client = std::make_shared<MemStream>(asio::make_strand(io), std::move(client_chunks), (flags & 4) != 0);
  std::vector<std::shared_ptr<MemStream>> upstreams;
  http::UpstreamConnector connector = [&](http::ConnectHandler done) {
    if (upstream_scripts.empty()) {
      asio::post(io, [done = std::move(done)]() mutable { done(asio::error::connection_refused, nullptr, "refused"); });
      return;
    }
    auto up = std::make_shared<MemStream>(asio::make_strand(io), std::move(upstream_scripts.front()), (flags & 8) != 0);
    upstream_scripts.pop_front();
    upstreams.push_back(up);
    asio::post(io, [done = std::move(done), up]() mutable { done({}, up, {}); });
  };
  http::Limits limits;
  limits.header_limit = 16 * 1024;
  limits.body_limit = 1024 * 1024;
  http::Recovery recovery;
  recovery.retry_safe = (flags & 2) != 0;
  recovery.resume_watches = (flags & 16) != 0;
  http::serve(io, client, std::make_shared<FuzzPolicy>((flags & 1) != 0), connector, limits, logger, recovery);

  for (int i = 0; i < 200000 && io.poll() > 0; ++i) {
  }
  io.restart();
  // The client goes away, then the upstreams (a response head the engine
  // still waits for would otherwise hold it until its timeout).
  client->reset("client gone");
  for (int i = 0; i < 200000 && io.poll() > 0; ++i) {
  }
  io.restart();
  for (const auto& up : upstreams) up->reset("upstream gone");
  for (int i = 0; i < 200000 && io.poll() > 0; ++i) {
  }

  // FORWARD_FUZZ_DUMP=1: what each side received, for reading a crash input.
  if (std::getenv("FORWARD_FUZZ_DUMP")) {
    for (const auto& up : upstreams) std::fprintf(stderr, "--- upstream got:\n%s\n", up->written().c_str());
    std::fprintf(stderr, "--- client got:\n%s\n", client->written().c_str());
  }
  for (const auto& up : upstreams) check_messages<true>(up->written(), "the engine wrote a malformed request upstream");
  if (!client_sent_head)
    check_messages<false>(client->written(), "the engine wrote a malformed response to the client");
  return 0;
}
