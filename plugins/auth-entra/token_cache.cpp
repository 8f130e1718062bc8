#include "token_cache.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <nlohmann/json.hpp>

namespace clusterconnect::entra {
namespace {

constexpr std::size_t max_cache_size = 4 * 1024 * 1024;

// A file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_;
};

// A regular file of this user that nobody else may write.
bool private_file(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid() && (st.st_mode & 022) == 0;
}

// flock() on a sibling lock file for the duration of one read-modify-write.
// The lock file is never followed through a symbolic link.
class FileLock {
 public:
  FileLock(const std::filesystem::path& file, int operation) {
    fd_ = ::open((file.string() + ".lock").c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd_ >= 0 && (!private_file(fd_) || ::flock(fd_, operation) != 0)) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  bool held() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

nlohmann::json read_entries(const std::filesystem::path& file) {
  Fd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd || !private_file(fd.get())) return nlohmann::json::object();
  std::string text;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > max_cache_size) return nlohmann::json::object();
  }
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("entries") || !doc["entries"].is_object()) return nlohmann::json::object();
  return doc["entries"];
}

// Writes a fresh, exclusively created temporary file (0600, never through a
// link) and renames it over the cache file.
void write_entries(const std::filesystem::path& file, const nlohmann::json& entries) {
  std::string tmp = file.string() + ".tmp.XXXXXX";
  int raw = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (raw < 0) return;
  Fd fd(raw);
  ::fchmod(fd.get(), 0600);
  const std::string text = nlohmann::json{{"version", 1}, {"entries", entries}}.dump(2);
  bool ok = ::write(fd.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd.get()) == 0;
  if (!ok || ::rename(tmp.c_str(), file.c_str()) != 0) ::unlink(tmp.c_str());
}

}  // namespace

Result<void> check_private_directory(const std::filesystem::path& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return fail("cannot use the token cache directory " + dir.string() + ": " + std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) return fail("the token cache directory " + dir.string() + " is not a directory");
  if (st.st_uid != ::geteuid())
    return fail("the token cache directory " + dir.string() + " belongs to another user (uid " + std::to_string(st.st_uid) +
                "): not used; remove it, or point XDG_CACHE_HOME at a directory of yours");
  if ((st.st_mode & 022) != 0)
    return fail("the token cache directory " + dir.string() + " is writable by other users: not used; run 'chmod 700 " +
                dir.string() + "'");
  return {};
}

TokenCache::TokenCache(std::filesystem::path file) : file_(std::move(file)) {
  const auto dir = file_.parent_path();
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir.parent_path(), ec);
    ::mkdir(dir.c_str(), 0700);
  }
}

Result<void> TokenCache::usable() const { return check_private_directory(file_.parent_path()); }

std::string TokenCache::key(const std::string& authority, const std::string& tenant, const std::string& client_id, const std::string& resource) {
  return authority + "|" + tenant + "|" + client_id + "|" + resource;
}

std::optional<CachedToken> TokenCache::load(const std::string& key) const {
  if (!usable()) return std::nullopt;
  FileLock lock(file_, LOCK_SH);
  if (!lock.held()) return std::nullopt;
  auto entries = read_entries(file_);
  auto it = entries.find(key);
  if (it == entries.end() || !it->is_object()) return std::nullopt;
  CachedToken t;
  t.access_token = it->value("access_token", "");
  t.refresh_token = it->value("refresh_token", "");
  t.expires_on = it->value("expires_on", 0LL);
  t.issued_on = it->value("issued_on", 0LL);
  if (t.access_token.empty() && t.refresh_token.empty()) return std::nullopt;
  return t;
}

void TokenCache::store(const std::string& key, const CachedToken& token) const {
  if (!usable()) return;
  FileLock lock(file_, LOCK_EX);
  if (!lock.held()) return;
  auto entries = read_entries(file_);
  nlohmann::json e = {{"access_token", token.access_token}, {"expires_on", token.expires_on}, {"issued_on", token.issued_on}};
  if (!token.refresh_token.empty()) e["refresh_token"] = token.refresh_token;
  entries[key] = std::move(e);
  write_entries(file_, entries);
}

void TokenCache::erase(const std::string& key) const {
  if (!usable()) return;
  FileLock lock(file_, LOCK_EX);
  if (!lock.held()) return;
  auto entries = read_entries(file_);
  if (entries.erase(key) > 0) write_entries(file_, entries);
}

}  // namespace clusterconnect::entra
