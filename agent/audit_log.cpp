#include "audit_log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "clusterconnect/timestamp.hpp"

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

// Appends `v` zero-padded to `width` digits.
void append_digits(std::string& out, std::uint64_t v, int width) {
  char digits[20];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (int i = n; i < width; ++i) out += '0';
  while (n > 0) out += digits[--n];
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
  std::deque<std::string> batch;
  for (;;) {
    idle_ = true;
    ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    idle_ = false;
    if (queue_.empty()) return;  // stopping, and everything is written
    // What arrives within the batch window goes with this record: under load
    // the writer wakes ~1/batch_window times a second, not once per request
    // (each wake-up is a futex call and two context switches on the data path).
    if (!stopping_) ready_.wait_for(lock, batch_window, [this] { return stopping_; });
    batch.swap(queue_);
    lock.unlock();
    for (const auto& line : batch) std::fputs(line.c_str(), file_);
    std::fflush(file_);
    batch.clear();
    lock.lock();
  }
}

namespace {

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  json_escape(out, s);
  out += '"';
}

void append_key(std::string& out, std::string_view key) {
  if (out.size() > 1) out += ',';
  append_json_string(out, key);
  out += ':';
}

}  // namespace

void json_escape(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20) {
            out += "\\u00";
            out += hex[c >> 4];
            out += hex[c & 0xf];
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    // A well-formed UTF-8 sequence is copied; anything else becomes U+FFFD.
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c == 0xe0) len = 3, lo = 0xa0;
    else if (c >= 0xe1 && c <= 0xec) len = 3;
    else if (c == 0xed) len = 3, hi = 0x9f;
    else if (c >= 0xee && c <= 0xef) len = 3;
    else if (c == 0xf0) len = 4, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3) len = 4;
    else if (c == 0xf4) len = 4, hi = 0x8f;
    bool ok = len > 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) {
      const unsigned char b = p[i + k];
      ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xbf);
    }
    if (ok) {
      out.append(s.data() + i, len);
      i += len;
    } else {
      out += "\xef\xbf\xbd";
      ++i;
    }
  }
}

bool AuditLog::write(const http::ExchangeRecord& r, const std::string& auth_method) {
  const auto q = r.target.find('?');
  const std::string_view path = std::string_view(r.target).substr(0, q);
  // One JSON object per line, written straight into its string (no tree).
  static const http::Subject no_subject;
  const http::Subject& who = r.subject ? *r.subject : no_subject;
  std::string text;
  text.reserve(256 + r.target.size() + who.user.size());
  text += '{';
  append_key(text, "time");
  text += '"';
  append_utc_timestamp(text, std::chrono::system_clock::now());
  text += '"';
  append_key(text, "auth");
  append_json_string(text, auth_method);
  append_key(text, "user");
  append_json_string(text, who.user);
  append_key(text, "groups");
  text += '[';
  for (std::size_t i = 0; i < who.groups.size(); ++i) {
    if (i > 0) text += ',';
    append_json_string(text, who.groups[i]);
  }
  text += ']';
  append_key(text, "method");
  append_json_string(text, r.method);
  append_key(text, "path");
  append_json_string(text, path);
  append_key(text, "query");
  append_json_string(text, audit_query(r.target));
  append_key(text, "status");
  text += std::to_string(r.status);
  append_key(text, "bytes_in");
  text += std::to_string(r.bytes_in);
  append_key(text, "bytes_out");
  text += std::to_string(r.bytes_out);
  append_key(text, "duration_ms");
  // Milliseconds with three decimals, from whole microseconds.
  const auto us = static_cast<std::uint64_t>(std::max<std::int64_t>(r.duration.count(), 0));
  append_digits(text, us / 1000, 1);
  text += '.';
  append_digits(text, us % 1000, 3);
  append_key(text, "upgrade");
  text += r.upgraded ? "true" : "false";
  // Notes add fields; they never replace one of the fields above.
  static constexpr std::string_view fixed[] = {"time", "auth", "user", "groups", "method", "path", "query",
                                               "status", "bytes_in", "bytes_out", "duration_ms", "upgrade"};
  for (const auto* notes : {&who.notes, &r.notes})
    for (const auto& note : *notes) {
      if (std::find(std::begin(fixed), std::end(fixed), note.name) != std::end(fixed)) continue;
      append_key(text, note.name);
      append_json_string(text, note.value);
    }
  text += "}\n";
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    if (queue_.size() >= max_queued_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue_.push_back(std::move(text));
    // Only a writer waiting for work needs waking; one in its batch window
    // takes this record with the others.
    wake = idle_;
    idle_ = false;
  }
  if (wake) ready_.notify_one();
  return true;
}

}  // namespace clusterconnect::agent
