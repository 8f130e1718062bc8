// A stream refused because the relay refused the tunnel's connect token is
// opened again after one forced renewal; nothing else is retried.

#include <catch2/catch.hpp>

#include <atomic>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include <boost/asio/error.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "stream_opener.hpp"

using namespace clusterconnect;
using namespace clusterconnect::proxy;
using namespace std::chrono_literals;

namespace {

struct Outcome {
  error_code ec;
  std::string reason;
};

// Answers each open with the next scripted outcome (no stream: the tests
// look at the error only).
class ScriptedClient final : public TunnelClient {
 public:
  explicit ScriptedClient(std::deque<Outcome> script) : script_(std::move(script)) {}
  void async_open(OpenRequest, OpenHandler handler) override {
    Outcome o;
    {
      std::lock_guard lock(mutex_);
      ++opens_;
      if (!script_.empty()) {
        o = script_.front();
        script_.pop_front();
      }
    }
    handler(o.ec, nullptr, o.reason);
  }
  void async_connect(DoneHandler handler) override { handler({}); }
  void close() noexcept override {}
  int opens() {
    std::lock_guard lock(mutex_);
    return opens_;
  }

 private:
  std::mutex mutex_;
  std::deque<Outcome> script_;
  int opens_ = 0;
};

struct Io {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread{[this] { io.run(); }};
  ~Io() {
    work.reset();
    io.stop();
    thread.join();
  }
};

Outcome open_once(Io& io, const std::shared_ptr<ScriptedClient>& client, const std::shared_ptr<Refresher>& refresher) {
  auto p = std::make_shared<std::promise<Outcome>>();
  auto f = p->get_future();
  open_stream(&io.io, client, refresher, [p](error_code ec, StreamPtr, std::string reason) { p->set_value({ec, reason}); });
  REQUIRE(f.wait_for(30s) == std::future_status::ready);
  return f.get();
}

const Outcome expired{asio::error::access_denied, "relay refused the tunnel: HTTP 401 (token expired)"};

}  // namespace

TEST_CASE("a refused relay token is renewed once and the stream opened again", "[proxy][relay-token]") {
  Io io;
  std::atomic<int> forced{0};
  auto refresher = std::make_shared<Refresher>(3600s, [&](bool f) {
    if (f) ++forced;
    return std::chrono::system_clock::now() + 1h;
  });
  auto client = std::make_shared<ScriptedClient>(std::deque<Outcome>{expired, Outcome{}});
  auto out = open_once(io, client, refresher);
  CHECK_FALSE(out.ec);
  CHECK(client->opens() == 2);
  CHECK(forced == 1);
  refresher->stop();
}

TEST_CASE("a second refusal after the renewal is reported, not retried again", "[proxy][relay-token]") {
  Io io;
  std::atomic<int> forced{0};
  auto refresher = std::make_shared<Refresher>(3600s, [&](bool f) {
    if (f) ++forced;
    return std::chrono::system_clock::now() + 1h;
  });
  auto client = std::make_shared<ScriptedClient>(std::deque<Outcome>{expired, expired, Outcome{}});
  auto out = open_once(io, client, refresher);
  CHECK(out.ec == asio::error::access_denied);
  CHECK(out.reason.find("HTTP 401") != std::string::npos);
  CHECK(client->opens() == 2);
  CHECK(forced == 1);
  refresher->stop();
}

TEST_CASE("other open failures are not retried", "[proxy][relay-token]") {
  Io io;
  std::atomic<int> forced{0};
  auto refresher = std::make_shared<Refresher>(3600s, [&](bool f) {
    if (f) ++forced;
    return std::chrono::system_clock::now() + 1h;
  });
  auto client = std::make_shared<ScriptedClient>(
      std::deque<Outcome>{Outcome{asio::error::connection_refused, "no agent connected for cluster demo"}, Outcome{}});
  auto out = open_once(io, client, refresher);
  CHECK(out.ec == asio::error::connection_refused);
  CHECK(client->opens() == 1);
  CHECK(forced == 0);
  refresher->stop();
}

TEST_CASE("refused_for_token: HTTP 401 from the relay, by code or by reason", "[proxy][relay-token]") {
  CHECK(refused_for_token(asio::error::access_denied, ""));
  CHECK(refused_for_token(asio::error::connection_reset, "relay refused the tunnel: HTTP 401 (token expired)"));
  CHECK_FALSE(refused_for_token(asio::error::connection_refused, "relay refused the tunnel: HTTP 404 (no such hybrid connection)"));
  CHECK_FALSE(refused_for_token({}, ""));
}
