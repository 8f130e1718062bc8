#include "fetch_worker.hpp"

namespace clusterconnect::auth {

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

void FetchWorker::set_idle_task(std::chrono::milliseconds period, std::function<void()> task) {
  {
    std::lock_guard lock(mutex_);
    idle_period_ = period;
    idle_task_ = std::move(task);
  }
  wake_.notify_one();
}

void FetchWorker::run() {
  for (;;) {
    Job job;
    std::function<void()> idle;
    {
      std::unique_lock lock(mutex_);
      auto ready = [this] { return stopping_ || !jobs_.empty(); };
      if (!idle_task_) {
        wake_.wait(lock, [&] { return ready() || idle_task_; });
        if (!ready()) continue;  // an idle task was set: wait again with its period
      } else if (!wake_.wait_for(lock, idle_period_, ready)) {
        idle = idle_task_;
      }
      if (stopping_ && jobs_.empty()) return;
      if (!idle) {
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
    }
    if (idle) idle();
    else job(false);
  }
}

}  // namespace clusterconnect::auth
