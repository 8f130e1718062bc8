#pragma once
// The credential's token cache: one JSON file (0600) under the host's cache
// directory, keyed by authority, tenant, client and resource. Writes are
// atomic and serialised across processes with a lock file, so two
// `connectedk8s proxy` runs never tear it. The directory is created 0700; an
// existing one that belongs to another user or that group or others may
// write is not used (usable() says why). The cache, lock and temporary files
// are opened without following symbolic links, the temporary file is created
// exclusively, and a cache or lock file that is not a regular file of this
// user closed to others' writes is ignored.

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "clusterconnect/result.hpp"

namespace clusterconnect::entra {

struct CachedToken {
  std::string access_token;
  std::string refresh_token;  // empty when the flow yields none
  long long expires_on = 0;   // unix seconds
  long long issued_on = 0;    // unix seconds, to size the refresh margin
};

// The directory exists, belongs to this user and neither group nor others may write it.
Result<void> check_private_directory(const std::filesystem::path& dir);

class TokenCache {
 public:
  explicit TokenCache(std::filesystem::path file);

  static std::string key(const std::string& authority, const std::string& tenant, const std::string& client_id, const std::string& resource);

  std::optional<CachedToken> load(const std::string& key) const;
  // Best effort: a cache that cannot be written costs a sign-in, nothing more.
  void store(const std::string& key, const CachedToken& token) const;
  void erase(const std::string& key) const;

  // Whether the cache directory may be used, or why not (one line, what to do).
  Result<void> usable() const;

  const std::filesystem::path& file() const noexcept { return file_; }

 private:
  std::filesystem::path file_;
};

}  // namespace clusterconnect::entra
