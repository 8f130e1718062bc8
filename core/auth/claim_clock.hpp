#pragma once
// The wall clock an authenticator checks `exp`, `nbf` and `iat` against:
// the system clock, or what a test puts in its place (from any thread).

#include <chrono>
#include <functional>
#include <mutex>

namespace clusterconnect::auth {

class ClaimClock {
 public:
  using Source = std::function<std::chrono::system_clock::time_point()>;

  std::chrono::system_clock::time_point now() const {
    std::lock_guard lock(mutex_);
    return source_ ? source_() : std::chrono::system_clock::now();
  }

  void set(Source source) {
    std::lock_guard lock(mutex_);
    source_ = std::move(source);
  }

 private:
  mutable std::mutex mutex_;
  Source source_;
};

}  // namespace clusterconnect::auth
