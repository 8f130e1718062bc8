#pragma once
// Configuration files for the binaries: YAML (and so JSON) maps whose keys are
// the long option names (`relay-url: wss://...`). Plugged into CLI11, so the
// precedence is flags > environment variables > config file > defaults.

#include <memory>

#include <CLI/CLI.hpp>

namespace clusterconnect::host {

class YamlConfig final : public CLI::Config {
 public:
  // `app` lets the reader leave out values whose environment variable is set:
  // CLI11 would otherwise let the file win over the environment.
  explicit YamlConfig(const CLI::App* app = nullptr) : app_(app) {}
  std::string to_config(const CLI::App*, bool, bool, std::string) const override;
  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override;

 private:
  const CLI::App* app_;
};

// Installs `--config FILE` on `app` with the YAML reader.
void add_config_option(CLI::App& app, const std::string& description);

}  // namespace clusterconnect::host
