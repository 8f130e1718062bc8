#include "token_refresher.hpp"

#include <algorithm>

namespace clusterconnect::proxy {

SystemTime renew_at(SystemTime issued, SystemTime expires, std::chrono::seconds ahead) {
  if (expires <= issued) return issued;
  const auto lifetime = expires - issued;
  return expires - std::min<std::chrono::system_clock::duration>(ahead, lifetime / 2);
}

RefreshPool::RefreshPool(unsigned threads) {
  threads = std::max(1u, threads);
  threads_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
}

RefreshPool::~RefreshPool() { shutdown(); }

void RefreshPool::shutdown() {
  {
    std::lock_guard lock(mutex_);
    shutdown_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) {
    if (!t.joinable()) continue;
    if (t.get_id() == std::this_thread::get_id()) t.detach();  // the last owner went away inside a tick
    else t.join();
  }
}

void RefreshPool::add(const std::shared_ptr<Entry>& e) {
  {
    std::lock_guard lock(mutex_);
    entries_.push_back(e);
  }
  cv_.notify_all();
}

void RefreshPool::renew_now(const std::shared_ptr<Entry>& e, std::function<void()> done) {
  {
    std::lock_guard lock(mutex_);
    if (!e->stopped) {
      e->forced = true;
      if (done) e->waiting.push_back(std::move(done));
      done = nullptr;
    }
  }
  cv_.notify_all();
  if (done) done();  // stopped: nothing will renew
}

void RefreshPool::stop(const std::shared_ptr<Entry>& e) {
  std::vector<std::function<void()>> waiting;
  {
    std::unique_lock lock(mutex_);
    e->stopped = true;
    // A tick that stops its own refresher does not wait for itself.
    if (e->runner != std::this_thread::get_id()) cv_.wait(lock, [&] { return !e->running; });
    std::erase(entries_, e);
    waiting.swap(e->waiting);
  }
  cv_.notify_all();
  for (auto& w : waiting) w();
}

void RefreshPool::run() {
  std::unique_lock lock(mutex_);
  while (!shutdown_) {
    // The earliest due among the refreshers no thread is running; the wait is
    // re-computed from the system clock on every wake-up, so a token's
    // renewal time is kept even when a wait was cut short.
    const auto now = std::chrono::system_clock::now();
    std::shared_ptr<Entry> due;
    for (const auto& e : entries_) {
      if (e->running || e->stopped) continue;
      if (!due || (e->forced ? now : e->next) < (due->forced ? now : due->next)) due = e;
    }
    if (!due) {
      cv_.wait(lock);
      continue;
    }
    const SystemTime when = due->forced ? now : due->next;
    if (when > now) {
      cv_.wait_for(lock, std::min<std::chrono::system_clock::duration>(when - now, std::chrono::minutes(1)));
      continue;
    }
    const bool forced = due->forced;
    due->forced = false;
    due->running = true;
    due->runner = std::this_thread::get_id();
    auto waiting = std::move(due->waiting);
    due->waiting.clear();
    lock.unlock();
    SystemTime next = due->tick(forced);
    next = std::min(next, std::chrono::system_clock::now() + due->max_interval);
    for (auto& w : waiting) w();
    lock.lock();
    due->next = next;
    due->running = false;
    due->runner = {};
    cv_.notify_all();  // a stop() waiting for this tick, or another thread for this refresher
  }
}

Refresher::Refresher(std::chrono::seconds max_interval, Tick tick, std::shared_ptr<RefreshPool> pool)
    : own_pool_(!pool), pool_(own_pool_ ? std::make_shared<RefreshPool>(1) : std::move(pool)) {
  entry_ = std::make_shared<RefreshPool::Entry>();
  entry_->tick = std::move(tick);
  entry_->max_interval = max_interval;
  entry_->next = std::chrono::system_clock::now();  // the first tick at once: it says when the next is due
  pool_->add(entry_);
}

Refresher::~Refresher() {
  stop();
  if (own_pool_) pool_->shutdown();
}

void Refresher::renew_now(std::function<void()> done) { pool_->renew_now(entry_, std::move(done)); }

void Refresher::stop() { pool_->stop(entry_); }

}  // namespace clusterconnect::proxy
