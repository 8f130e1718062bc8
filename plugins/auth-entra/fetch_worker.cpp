#include "fetch_worker.hpp"

namespace clusterconnect::entra {

FetchWorker::FetchWorker(std::size_t max_queued) : max_queued_(max_queued), thread_([this] { run(); }) {}

FetchWorker::~FetchWorker() {
  std::deque<Job> left;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    left.swap(jobs_);
  }
  wake_.notify_all();
  for (auto& job : left) job(true);
  // Jobs never own the worker, so this never runs on the worker's thread.
  if (thread_.joinable()) thread_.join();
}

bool FetchWorker::post(Job& job) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || jobs_.size() >= max_queued_) return false;
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
  return true;
}

void FetchWorker::run() {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_ && jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job(false);
  }
}

}  // namespace clusterconnect::entra
