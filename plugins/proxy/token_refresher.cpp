#include "token_refresher.hpp"

#include <algorithm>

namespace clusterconnect::proxy {

SystemTime renew_at(SystemTime issued, SystemTime expires, std::chrono::seconds ahead) {
  if (expires <= issued) return issued;
  const auto lifetime = expires - issued;
  return expires - std::min<std::chrono::system_clock::duration>(ahead, lifetime / 2);
}

Refresher::Refresher(std::chrono::seconds max_interval, Tick tick)
    : max_interval_(max_interval), tick_(std::move(tick)) {
  thread_ = std::thread([this] { run(); });
}

Refresher::~Refresher() { stop(); }

void Refresher::renew_now(std::function<void()> done) {
  {
    std::lock_guard lock(mutex_);
    if (!stop_) {
      forced_ = true;
      if (done) waiting_.push_back(std::move(done));
      done = nullptr;
    }
  }
  cv_.notify_all();
  if (done) done();  // stopped: nothing will renew
}

void Refresher::stop() {
  std::vector<std::function<void()>> waiting;
  {
    std::lock_guard lock(mutex_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  {
    std::lock_guard lock(mutex_);
    waiting.swap(waiting_);
  }
  for (auto& w : waiting) w();
}

void Refresher::run() {
  std::unique_lock lock(mutex_);
  SystemTime next = std::chrono::system_clock::now();  // the first tick at once: it says when the next is due
  while (!stop_) {
    // The wait is re-computed from the system clock on every wake-up, so a
    // token's renewal time is kept even when the wait was cut short.
    const auto wait = std::clamp<std::chrono::system_clock::duration>(next - std::chrono::system_clock::now(),
                                                                      std::chrono::system_clock::duration::zero(),
                                                                      max_interval_);
    cv_.wait_for(lock, wait, [this] { return stop_ || forced_; });
    if (stop_) break;
    const bool forced = forced_;
    if (!forced && std::chrono::system_clock::now() < next) continue;
    forced_ = false;
    auto waiting = std::move(waiting_);
    waiting_.clear();
    lock.unlock();
    next = tick_(forced);
    next = std::min(next, std::chrono::system_clock::now() + max_interval_);
    for (auto& w : waiting) w();
    lock.lock();
  }
}

}  // namespace clusterconnect::proxy
