#include "progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace clusterconnect::proxy {
namespace {
void emit_json(const nlohmann::json& j) {
  std::fprintf(stderr, "%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  std::fflush(stderr);
}
}  // namespace

Progress::Progress(bool json) : json_(json), tty_(!json && ::isatty(STDERR_FILENO)) {}

Progress::~Progress() { stop_spinner(); }

void Progress::stop_spinner() {
  spinning_ = false;
  if (spinner_.joinable()) spinner_.join();
}

void Progress::begin(const std::string& step, const std::string& text) {
  stop_spinner();
  {
    std::lock_guard lock(mutex_);
    step_ = step;
    text_ = text;
    started_ = std::chrono::steady_clock::now();
  }
  if (json_) return emit_json({{"event", "step"}, {"step", step}, {"status", "started"}, {"message", text}});
  if (!tty_) {
    std::fprintf(stderr, "%s ...\n", text.c_str());
    return;
  }
  spinning_ = true;
  spinner_ = std::thread([this] {
    static const char* frames[] = {"|", "/", "-", "\\"};
    for (unsigned i = 0; spinning_; ++i) {
      {
        std::lock_guard lock(mutex_);
        std::fprintf(stderr, "\r\033[K%s %s", frames[i % 4], text_.c_str());
        std::fflush(stderr);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

void Progress::done(const std::string& detail) {
  stop_spinner();
  std::lock_guard lock(mutex_);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started_).count();
  if (json_)
    return emit_json({{"event", "step"}, {"step", step_}, {"status", "done"}, {"detail", detail}, {"ms", ms}});
  std::string line = text_ + (detail.empty() ? "" : ": " + detail) + " (" + std::to_string(ms) + " ms)";
  if (tty_) std::fprintf(stderr, "\r\033[K\u2713 %s\n", line.c_str());
  else std::fprintf(stderr, "done: %s\n", line.c_str());
  std::fflush(stderr);
}

void Progress::failed(const std::string& message) {
  stop_spinner();
  std::lock_guard lock(mutex_);
  if (json_) return emit_json({{"event", "step"}, {"step", step_}, {"status", "failed"}, {"message", message}});
  if (tty_) std::fprintf(stderr, "\r\033[K\u2717 %s\n", text_.c_str());
  std::fprintf(stderr, "connectedk8s proxy: %s\n", message.c_str());
  std::fflush(stderr);
}

void Progress::event(const std::string& name, const std::string& text, nlohmann::json fields) {
  std::lock_guard lock(mutex_);
  if (json_) {
    fields["event"] = name;
    fields["message"] = text;
    return emit_json(fields);
  }
  std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
}

}  // namespace clusterconnect::proxy
