#pragma once
// Keeps the proxy's tokens fresh: the access token it forwards to the cluster
// and the relay connect token each served cluster's tunnel presents. Renewals
// block on HTTP, so they run on a small pool of threads of their own, never on
// an I/O thread; a proxy serving many clusters (--all) shares one pool among
// all its refreshers instead of a thread per cluster.

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

// The threads that run refreshers' ticks: each tick when it is due, the
// earliest first, one tick of a refresher at a time.
class RefreshPool {
 public:
  explicit RefreshPool(unsigned threads);
  ~RefreshPool();
  RefreshPool(const RefreshPool&) = delete;
  RefreshPool& operator=(const RefreshPool&) = delete;

  // Stops the threads once the ticks that run have returned. Idempotent.
  void shutdown();

 private:
  friend class Refresher;
  using Tick = std::function<SystemTime(bool forced)>;
  struct Entry {
    Tick tick;
    std::chrono::seconds max_interval;
    SystemTime next;
    bool forced = false;
    bool running = false;
    bool stopped = false;
    std::thread::id runner;
    std::vector<std::function<void()>> waiting;
  };

  void add(const std::shared_ptr<Entry>& e);
  void renew_now(const std::shared_ptr<Entry>& e, std::function<void()> done);
  void stop(const std::shared_ptr<Entry>& e);
  void run();

  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Entry>> entries_;
  bool shutdown_ = false;
  std::vector<std::thread> threads_;
};

class Refresher {
 public:
  // `tick(forced)` renews what is due (everything when `forced`) and returns
  // when it wants to run next. It runs once at start, then at the time it
  // returned, at the latest `max_interval` after the previous run, and at
  // once on renew_now().
  using Tick = std::function<SystemTime(bool forced)>;

  // On `pool`'s threads, or on a thread of its own without one.
  Refresher(std::chrono::seconds max_interval, Tick tick, std::shared_ptr<RefreshPool> pool = nullptr);
  ~Refresher();
  Refresher(const Refresher&) = delete;
  Refresher& operator=(const Refresher&) = delete;

  // Asks for a renewal now, because a token was refused; never blocks.
  // `done` (may be empty) runs on a pool thread after the renewal, or at once
  // when the refresher has stopped. Requests that arrive while one renewal
  // runs are answered by the next one.
  void renew_now(std::function<void()> done);

  // Waits for a running renewal (unless called from it), answers pending
  // requests; no tick runs afterwards. Idempotent.
  void stop();

 private:
  bool own_pool_;
  std::shared_ptr<RefreshPool> pool_;
  std::shared_ptr<RefreshPool::Entry> entry_;
};

}  // namespace clusterconnect::proxy
