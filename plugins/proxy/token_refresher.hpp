#pragma once
// Keeps the proxy's tokens fresh: the access token it forwards to the cluster
// and the relay connect token its tunnel presents. Renewals block on HTTP, so
// they run on the refresher's own thread, never on an I/O thread.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace clusterconnect::proxy {

using SystemTime = std::chrono::system_clock::time_point;

// When to renew a token issued at `issued` that expires at `expires`: `ahead`
// of its expiry, or at half its lifetime when it lives less than twice
// `ahead` (with 10 minutes ahead, a 30 s relay token is renewed 15 s after it
// was issued, a one-hour one 10 minutes before it expires).
SystemTime renew_at(SystemTime issued, SystemTime expires, std::chrono::seconds ahead);

class Refresher {
 public:
  // `tick(forced)` renews what is due (everything when `forced`) and returns
  // when it wants to run next. It runs once at start, then at the time it
  // returned, at the latest `max_interval` after the previous run, and at
  // once on renew_now().
  using Tick = std::function<SystemTime(bool forced)>;

  Refresher(std::chrono::seconds max_interval, Tick tick);
  ~Refresher();
  Refresher(const Refresher&) = delete;
  Refresher& operator=(const Refresher&) = delete;

  // Asks for a renewal now, because a token was refused; never blocks.
  // `done` (may be empty) runs on the refresher's thread after the renewal,
  // or at once when the refresher has stopped. Requests that arrive while one
  // renewal runs are answered by the next one.
  void renew_now(std::function<void()> done);

  // Stops the thread (waits for a running renewal) and answers pending
  // requests; no tick runs afterwards. Idempotent.
  void stop();

 private:
  void run();

  std::chrono::seconds max_interval_;
  Tick tick_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool forced_ = false;
  std::vector<std::function<void()>> waiting_;
  std::thread thread_;
};

}  // namespace clusterconnect::proxy
