#pragma once
// The credential's token cache: one JSON file (0600) under the host's cache
// directory, keyed by authority, tenant, client and resource. Writes are
// atomic and serialised across processes with a lock file, so two
// `connectedk8s proxy` runs never tear it.

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

namespace clusterconnect::entra {

struct CachedToken {
  std::string access_token;
  std::string refresh_token;  // empty when the flow yields none
  long long expires_on = 0;   // unix seconds
  long long issued_on = 0;    // unix seconds, to size the refresh margin
};

class TokenCache {
 public:
  explicit TokenCache(std::filesystem::path file);

  static std::string key(const std::string& authority, const std::string& tenant, const std::string& client_id, const std::string& resource);

  std::optional<CachedToken> load(const std::string& key) const;
  // Best effort: a cache that cannot be written costs a sign-in, nothing more.
  void store(const std::string& key, const CachedToken& token) const;
  void erase(const std::string& key) const;

  const std::filesystem::path& file() const noexcept { return file_; }

 private:
  std::filesystem::path file_;
};

}  // namespace clusterconnect::entra
