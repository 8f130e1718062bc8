#pragma once
// The "kubeconfig:yaml" capability: kubeconfig merges with yaml-cpp, under
// client-go's lock, written atomically.

#include <chrono>
#include <cstdint>
#include <functional>

#include <yaml-cpp/yaml.h>

#include "clusterconnect/kubeconfig.hpp"

namespace clusterconnect::kubeconfig {

struct KubeconfigOptions {
  // How long to wait for another writer's FILE.lock (kubectl holds it for
  // milliseconds; a lock that stays is left by a crashed writer and needs
  // the user).
  std::chrono::milliseconds lock_timeout{5000};
  std::chrono::milliseconds lock_retry_interval{20};
  std::uintmax_t max_file_size = 16u << 20;
};

class YamlKubeconfig final : public KubeconfigCapability {
 public:
  explicit YamlKubeconfig(KubeconfigOptions options = {}) : options_(options) {}

  Result<void> merge(const std::filesystem::path& file, const KubeconfigEntry& entry) noexcept override;
  Result<void> remove(const std::filesystem::path& file, const std::string& cluster, const std::string& user,
                      const std::string& context) noexcept override;
  Result<std::string> render(const KubeconfigEntry& entry) noexcept override;

 private:
  // Read, change and write `file` under its lock. `change` edits the parsed
  // tree; `create` says whether a missing file should be created.
  Result<void> update(const std::filesystem::path& file, bool create,
                      const std::function<Result<void>(YAML::Node&)>& change) noexcept;

  KubeconfigOptions options_;
};

}  // namespace clusterconnect::kubeconfig
