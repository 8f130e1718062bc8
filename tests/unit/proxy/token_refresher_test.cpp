// When the proxy renews its tokens, and the refresher that does it.

#include <catch2/catch.hpp>

#include <atomic>
#include <future>

#include "token_refresher.hpp"

using namespace clusterconnect::proxy;
using namespace std::chrono_literals;

namespace {
const SystemTime t0 = SystemTime(std::chrono::seconds(1'800'000'000));
}

TEST_CASE("renew_at: every lifetime the relay issues is renewed well before expiry", "[proxy][refresh]") {
  // The relay's shortest connect token: renewed at half its life.
  CHECK(renew_at(t0, t0 + 30s, 10min) == t0 + 15s);
  CHECK(renew_at(t0, t0 + 90s, 10min) == t0 + 45s);
  // Up to 20 minutes, half the lifetime; beyond, 10 minutes ahead.
  CHECK(renew_at(t0, t0 + 20min, 10min) == t0 + 10min);
  CHECK(renew_at(t0, t0 + 1h, 10min) == t0 + 50min);
  CHECK(renew_at(t0, t0 + 24h, 10min) == t0 + 24h - 10min);
  // Access tokens: 5 minutes ahead, or half the lifetime.
  CHECK(renew_at(t0, t0 + 1h, 5min) == t0 + 55min);
  CHECK(renew_at(t0, t0 + 20s, 5min) == t0 + 10s);
  // Already expired (or issued "after" its expiry): renew now.
  CHECK(renew_at(t0, t0, 10min) == t0);
  CHECK(renew_at(t0, t0 - 5s, 10min) == t0);
}

TEST_CASE("refresher: runs the tick when it asked to be run, not at the interval", "[proxy][refresh]") {
  // The interval (an hour) is far longer than the wait the tick asks for: a
  // 30 s token must not wait for a 60 s --refresh-interval.
  std::promise<void> third_tick;
  std::atomic<int> ticks{0};
  Refresher r(3600s, [&](bool forced) {
    CHECK_FALSE(forced);
    if (++ticks == 3) third_tick.set_value();
    return std::chrono::system_clock::now() + 20ms;
  });
  REQUIRE(third_tick.get_future().wait_for(30s) == std::future_status::ready);
  r.stop();
}

TEST_CASE("refresher: renew_now forces a tick and answers every request", "[proxy][refresh]") {
  std::atomic<int> forced_ticks{0};
  std::promise<void> entered;
  std::promise<void> release;
  auto release_f = release.get_future().share();
  std::atomic<bool> first_forced{true};
  Refresher r(3600s, [&](bool forced) {
    if (forced) {
      ++forced_ticks;
      if (first_forced.exchange(false)) {
        entered.set_value();
        release_f.wait();  // a renewal in progress
      }
    }
    return std::chrono::system_clock::now() + 1h;
  });
  std::promise<void> a_done;
  r.renew_now([&] { a_done.set_value(); });
  REQUIRE(entered.get_future().wait_for(30s) == std::future_status::ready);
  // Two requests while the renewal runs are answered by one more renewal.
  std::atomic<int> answered{0};
  std::promise<void> both;
  for (int i = 0; i < 2; ++i)
    r.renew_now([&] {
      if (++answered == 2) both.set_value();
    });
  release.set_value();
  REQUIRE(a_done.get_future().wait_for(30s) == std::future_status::ready);
  REQUIRE(both.get_future().wait_for(30s) == std::future_status::ready);
  CHECK(forced_ticks == 2);
  r.stop();
}

TEST_CASE("refresher: after stop no tick runs and requests are answered at once", "[proxy][refresh]") {
  std::atomic<int> ticks{0};
  Refresher r(3600s, [&](bool) {
    ++ticks;
    return std::chrono::system_clock::now() + 1h;
  });
  r.stop();
  const int before = ticks;
  bool answered = false;
  r.renew_now([&] { answered = true; });
  CHECK(answered);
  CHECK(ticks == before);
  r.stop();  // idempotent
}

TEST_CASE("refresher: many refreshers share a pool of two threads and each is renewed", "[proxy][refresh]") {
  auto pool = std::make_shared<RefreshPool>(2);
  constexpr int n = 50;
  std::atomic<int> first_ticks{0};
  std::atomic<int> forced_ticks{0};
  std::atomic<int> running{0};
  std::atomic<int> most_running{0};
  std::promise<void> all_started;
  std::vector<std::unique_ptr<Refresher>> refreshers;
  for (int i = 0; i < n; ++i)
    refreshers.push_back(std::make_unique<Refresher>(
        3600s,
        [&](bool forced) {
          const int now_running = ++running;
          int seen = most_running;
          while (now_running > seen && !most_running.compare_exchange_weak(seen, now_running)) {
          }
          if (forced) ++forced_ticks;
          else if (++first_ticks == n) all_started.set_value();
          --running;
          return std::chrono::system_clock::now() + 1h;
        },
        pool));
  REQUIRE(all_started.get_future().wait_for(30s) == std::future_status::ready);
  std::atomic<int> answered{0};
  std::promise<void> all_answered;
  for (auto& r : refreshers)
    r->renew_now([&] {
      if (++answered == n) all_answered.set_value();
    });
  REQUIRE(all_answered.get_future().wait_for(30s) == std::future_status::ready);
  CHECK(forced_ticks == n);
  CHECK(most_running <= 2);
  for (auto& r : refreshers) r->stop();
  pool->shutdown();
}

TEST_CASE("refresher: stop waits for its running tick while the pool serves the others", "[proxy][refresh]") {
  auto pool = std::make_shared<RefreshPool>(2);
  std::promise<void> slow_entered;
  std::promise<void> release;
  auto release_f = release.get_future().share();
  std::atomic<bool> slow_returned{false};
  Refresher slow(
      3600s,
      [&](bool) {
        slow_entered.set_value();
        release_f.wait();
        slow_returned = true;
        return std::chrono::system_clock::now() + 1h;
      },
      pool);
  REQUIRE(slow_entered.get_future().wait_for(30s) == std::future_status::ready);
  // The other thread still runs another refresher's tick.
  std::promise<void> other_ticked;
  Refresher other(
      3600s,
      [&](bool) {
        other_ticked.set_value();
        return std::chrono::system_clock::now() + 1h;
      },
      pool);
  REQUIRE(other_ticked.get_future().wait_for(30s) == std::future_status::ready);
  auto stopped = std::async(std::launch::async, [&] { slow.stop(); });
  CHECK(stopped.wait_for(50ms) == std::future_status::timeout);  // still inside the tick
  release.set_value();
  REQUIRE(stopped.wait_for(30s) == std::future_status::ready);
  CHECK(slow_returned);
  other.stop();
  pool->shutdown();
}
