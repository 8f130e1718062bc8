#pragma once
// Start-up reporting on stderr: a spinner line per step on a terminal, plain
// lines otherwise, or one JSON event per line (-o json) for scripts.

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

namespace clusterconnect::proxy {

class Progress {
 public:
  explicit Progress(bool json);
  ~Progress();
  void begin(const std::string& step, const std::string& text);
  void done(const std::string& detail = {});
  void failed(const std::string& message);
  // A JSON event (or a plain line) that is not a step.
  void event(const std::string& name, const std::string& text, nlohmann::json fields = {});

 private:
  void stop_spinner();
  bool json_;
  bool tty_;
  std::mutex mutex_;
  std::string step_;
  std::string text_;
  std::chrono::steady_clock::time_point started_;
  std::atomic<bool> spinning_{false};
  std::thread spinner_;
};

}  // namespace clusterconnect::proxy
