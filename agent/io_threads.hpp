#pragma once
// The agent's io threads. At shutdown they are not stopped mid-operation:
// the work guard is released and they run until the io_context has no work
// left (close handshakes written, streams reset), bounded by a timeout.

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "clusterconnect/asio_fwd.hpp"

namespace clusterconnect::agent {

class IoThreads {
 public:
  IoThreads(asio::io_context& io, unsigned count) : io_(io), guard_(asio::make_work_guard(io)) {
    for (unsigned i = 0; i < count; ++i)
      threads_.emplace_back([this] {
        io_.run();
        std::lock_guard lock(mutex_);
        ++finished_;
        done_.notify_all();
      });
  }
  ~IoThreads() { finish(std::chrono::seconds(0)); }
  IoThreads(const IoThreads&) = delete;
  IoThreads& operator=(const IoThreads&) = delete;

  // Releases the guard and waits up to `timeout` for the threads to run out
  // of work; then stops the io_context and joins them. False on timeout.
  bool finish(std::chrono::milliseconds timeout) {
    guard_.reset();
    bool drained;
    {
      std::unique_lock lock(mutex_);
      drained = done_.wait_for(lock, timeout, [&] { return finished_ == threads_.size(); });
    }
    if (!drained) io_.stop();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    return drained;
  }

 private:
  asio::io_context& io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::mutex mutex_;
  std::condition_variable done_;
  std::size_t finished_ = 0;
  std::vector<std::thread> threads_;
};

}  // namespace clusterconnect::agent
