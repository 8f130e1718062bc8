#pragma once
// Capability kind "kubeconfig": merges or removes cluster/user/context entries.

#include <filesystem>
#include <string>
#include <vector>

#include "clusterconnect/result.hpp"

namespace clusterconnect {

struct KubeconfigEntry {
  std::string cluster;     // clusters[].name
  std::string server;      // https://127.0.0.1:47011
  std::string certificate_authority_data;  // PEM (written base64-encoded)
  std::string user;        // users[].name
  std::string token;       // users[].user.token
  std::string context;     // contexts[].name
  std::string namespace_;  // optional
  bool set_current = true;
};

class KubeconfigCapability {
 public:
  virtual ~KubeconfigCapability() = default;
  // Merges into `file` (created 0600 with its directory if absent), atomically,
  // under client-go's FILE.lock; refuses to touch a file it cannot parse.
  virtual Result<void> merge(const std::filesystem::path& file, const KubeconfigEntry& entry) noexcept = 0;
  // Removes the named entries (those that exist); same safety as merge.
  virtual Result<void> remove(const std::filesystem::path& file, const std::string& cluster, const std::string& user,
                              const std::string& context) noexcept = 0;
  // A standalone kubeconfig document holding only `entry` (for -f -).
  virtual Result<std::string> render(const KubeconfigEntry& entry) noexcept = 0;
};

}  // namespace clusterconnect
