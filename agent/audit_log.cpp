#include "audit_log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <ctime>

#include <nlohmann/json.hpp>

namespace clusterconnect::agent {

Result<std::unique_ptr<AuditLog>> AuditLog::open(const std::string& path) {
  if (path.empty()) return std::unique_ptr<AuditLog>();
  if (path == "-") return std::unique_ptr<AuditLog>(new AuditLog(stdout, false));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return fail("cannot open the audit log " + path + ": " + std::strerror(errno));
  std::FILE* f = ::fdopen(fd, "a");
  if (!f) {
    ::close(fd);
    return fail("cannot open the audit log " + path);
  }
  return std::unique_ptr<AuditLog>(new AuditLog(f, true));
}

AuditLog::AuditLog(std::FILE* f, bool owned) : file_(f), owned_(owned), writer_([this] { drain(); }) {}

AuditLog::~AuditLog() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  ready_.notify_all();
  writer_.join();
  if (owned_ && file_) std::fclose(file_);
}

void AuditLog::drain() {
  std::unique_lock lock(mutex_);
  for (;;) {
    ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and everything is written
    std::deque<std::string> batch;
    batch.swap(queue_);
    lock.unlock();
    room_.notify_all();
    for (const auto& line : batch) std::fputs(line.c_str(), file_);
    std::fflush(file_);
    lock.lock();
  }
}

void AuditLog::write(const http::ExchangeRecord& r, const std::string& auth_method) {
  using namespace std::chrono;
  auto now = system_clock::now();
  auto t = system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[96];  // room for any int the format can print (-Wformat-truncation)
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000));
  auto q = r.target.find('?');
  nlohmann::json line{{"time", stamp},
                      {"auth", auth_method},
                      {"user", r.user},
                      {"groups", r.groups},
                      {"method", r.method},
                      {"path", r.target.substr(0, q)},
                      {"status", r.status},
                      {"bytes_in", r.bytes_in},
                      {"bytes_out", r.bytes_out},
                      {"duration_ms", static_cast<double>(r.duration.count()) / 1000.0},
                      {"upgrade", r.upgraded}};
  auto text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text += '\n';
  {
    std::unique_lock lock(mutex_);
    room_.wait(lock, [this] { return queue_.size() < max_queued; });
    queue_.push_back(std::move(text));
  }
  ready_.notify_one();
}

}  // namespace clusterconnect::agent
