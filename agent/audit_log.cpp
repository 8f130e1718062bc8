#include "audit_log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cctype>
#include <cstring>
#include <string_view>
#include <ctime>

#include <nlohmann/json.hpp>

namespace clusterconnect::agent {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool credential_parameter(std::string_view name) {
  const std::string n = lower(name);
  for (const char* word : {"token", "secret", "password", "passwd", "credential", "assertion", "sig", "key"})
    if (n.find(word) != std::string::npos) return true;
  return n == "code" || n == "auth" || n == "authorization";
}

}  // namespace

std::string audit_query(std::string_view target) {
  auto q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view query = target.substr(q + 1);
  std::string out;
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    auto eq = param.find('=');
    std::string_view name = param.substr(0, eq);
    // Decoded, so that access%5Ftoken is caught too.
    std::string plain;
    for (std::size_t i = 0; i < name.size(); ++i) {
      if (name[i] == '%' && i + 2 < name.size() && std::isxdigit(static_cast<unsigned char>(name[i + 1])) &&
          std::isxdigit(static_cast<unsigned char>(name[i + 2]))) {
        plain += static_cast<char>(std::stoi(std::string(name.substr(i + 1, 2)), nullptr, 16));
        i += 2;
      } else {
        plain += name[i];
      }
    }
    if (!out.empty()) out += '&';
    if (credential_parameter(plain)) {
      out.append(name);
      out += "=[redacted]";
    } else {
      out.append(param);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return out;
}

Result<std::unique_ptr<AuditLog>> AuditLog::open(const std::string& path, std::size_t max_queued) {
  if (path.empty()) return std::unique_ptr<AuditLog>();
  if (max_queued == 0) max_queued = 1;
  if (path == "-") return std::unique_ptr<AuditLog>(new AuditLog(stdout, false, max_queued));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return fail("cannot open the audit log " + path + ": " + std::strerror(errno));
  std::FILE* f = ::fdopen(fd, "a");
  if (!f) {
    ::close(fd);
    return fail("cannot open the audit log " + path);
  }
  return std::unique_ptr<AuditLog>(new AuditLog(f, true, max_queued));
}

AuditLog::AuditLog(std::FILE* f, bool owned, std::size_t max_queued)
    : max_queued_(max_queued), file_(f), owned_(owned), writer_([this] { drain(); }) {}

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
    for (const auto& line : batch) std::fputs(line.c_str(), file_);
    std::fflush(file_);
    lock.lock();
  }
}

bool AuditLog::write(const http::ExchangeRecord& r, const std::string& auth_method) {
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
                      {"query", audit_query(r.target)},
                      {"status", r.status},
                      {"bytes_in", r.bytes_in},
                      {"bytes_out", r.bytes_out},
                      {"duration_ms", static_cast<double>(r.duration.count()) / 1000.0},
                      {"upgrade", r.upgraded}};
  for (const auto& note : r.notes) line[note.name] = note.value;
  auto text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text += '\n';
  {
    std::lock_guard lock(mutex_);
    if (queue_.size() >= max_queued_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue_.push_back(std::move(text));
  }
  ready_.notify_one();
  return true;
}

}  // namespace clusterconnect::agent
