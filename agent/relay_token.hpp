#pragma once
// The agent's listen token for the relay: signed here with the listen key
// (short-lived, renewed well before expiry), or read from a file that an
// external issuer keeps fresh.

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "clusterconnect/result.hpp"

namespace clusterconnect::agent {

class RelayToken {
 public:
  static Result<std::shared_ptr<RelayToken>> create(const std::string& relay_url, const std::string& key_name,
                                                    const std::string& key_file, const std::string& token_file);
  // Cheap and non-blocking enough for an io thread: an HMAC at most once per
  // renewal, or a stat + small read when the file changed.
  std::string current();

 private:
  std::mutex mutex_;
  std::string resource_;
  std::string key_name_;
  std::string key_;
  std::string token_file_;
  std::string token_;
  std::chrono::system_clock::time_point expires_{};
};

}  // namespace clusterconnect::agent
