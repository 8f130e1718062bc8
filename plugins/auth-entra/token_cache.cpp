#include "token_cache.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace clusterconnect::entra {
namespace {

constexpr std::size_t max_cache_size = 4 * 1024 * 1024;

// flock() on a sibling lock file for the duration of one read-modify-write.
class FileLock {
 public:
  FileLock(const std::filesystem::path& file, int operation) {
    std::error_code ec;
    if (std::filesystem::create_directories(file.parent_path(), ec))
      std::filesystem::permissions(file.parent_path(), std::filesystem::perms::owner_all, ec);
    fd_ = ::open((file.string() + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ >= 0) ::flock(fd_, operation);
  }
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

nlohmann::json read_entries(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec) || std::filesystem::file_size(file, ec) > max_cache_size) return nlohmann::json::object();
  std::ifstream in(file);
  std::stringstream ss;
  ss << in.rdbuf();
  auto doc = nlohmann::json::parse(ss.str(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("entries") || !doc["entries"].is_object()) return nlohmann::json::object();
  return doc["entries"];
}

void write_entries(const std::filesystem::path& file, const nlohmann::json& entries) {
  const std::string tmp = file.string() + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  const std::string text = nlohmann::json{{"version", 1}, {"entries", entries}}.dump(2);
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ok = ::close(fd) == 0 && ok;
  if (!ok || ::rename(tmp.c_str(), file.c_str()) != 0) ::unlink(tmp.c_str());
}

}  // namespace

TokenCache::TokenCache(std::filesystem::path file) : file_(std::move(file)) {}

std::string TokenCache::key(const std::string& authority, const std::string& tenant, const std::string& client_id, const std::string& resource) {
  return authority + "|" + tenant + "|" + client_id + "|" + resource;
}

std::optional<CachedToken> TokenCache::load(const std::string& key) const {
  FileLock lock(file_, LOCK_SH);
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
  FileLock lock(file_, LOCK_EX);
  auto entries = read_entries(file_);
  nlohmann::json e = {{"access_token", token.access_token}, {"expires_on", token.expires_on}, {"issued_on", token.issued_on}};
  if (!token.refresh_token.empty()) e["refresh_token"] = token.refresh_token;
  entries[key] = std::move(e);
  write_entries(file_, entries);
}

void TokenCache::erase(const std::string& key) const {
  FileLock lock(file_, LOCK_EX);
  auto entries = read_entries(file_);
  if (entries.erase(key) > 0) write_entries(file_, entries);
}

}  // namespace clusterconnect::entra
