#pragma once
// One thread that runs blocking identity-provider fetches (libcurl) so that
// no io thread ever waits on the network. Jobs run in order; a bounded queue
// turns a flood of cache misses into fast failures instead of memory growth.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "clusterconnect/unique_function.hpp"

namespace clusterconnect::auth {

class FetchWorker {
 public:
  // A job receives `cancelled == true` when the worker shuts down before
  // running it, so it can still complete its caller's handler.
  using Job = UniqueFunction<void(bool cancelled)>;

  explicit FetchWorker(std::size_t max_queued = 1024);
  ~FetchWorker();
  FetchWorker(const FetchWorker&) = delete;
  FetchWorker& operator=(const FetchWorker&) = delete;

  // False (and the job untouched) when the queue is full or stopping.
  bool post(Job& job);

  // `task` runs on the worker's thread whenever it has been idle for
  // `period` (background work such as refreshing keys before they are due).
  void set_idle_task(std::chrono::milliseconds period, std::function<void()> task);

 private:
  void run();

  std::size_t max_queued_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::chrono::milliseconds idle_period_{0};
  std::function<void()> idle_task_;
  std::thread thread_;
};

}  // namespace clusterconnect::auth
