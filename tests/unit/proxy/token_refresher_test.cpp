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
