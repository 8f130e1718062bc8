#pragma once
// One thread that runs blocking identity-provider fetches (libcurl) so that
// no io thread ever waits on the network. Jobs run in order; a bounded queue
// turns a flood of cache misses into fast failures instead of memory growth.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>

#include "clusterconnect/unique_function.hpp"

namespace clusterconnect::entra {

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

 private:
  void run();

  std::size_t max_queued_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace clusterconnect::entra
