#pragma once
// The host runtime shared by connectedk8s, clusterconnect-agent and
// clusterconnect-relay: io_context and its threads, the logger, directories,
// and the loaded modules.

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "clusterconnect/host.hpp"
#include "clusterconnect/host/plugin_loader.hpp"

namespace clusterconnect::host {

enum class LogFormat { text, json };

// Creates (or replaces) the process logger: stderr, text or one JSON object
// per line. verbosity 0 = info, 1 = debug, 2+ = trace.
std::shared_ptr<spdlog::logger> make_logger(const std::string& name, int verbosity, LogFormat format);

// Reads -v/--verbose and --log-format from argv before the CLI is parsed, so
// messages from loading modules already follow them.
void prescan_logging_flags(int argc, char** argv, int& verbosity, LogFormat& format);

class Runtime final : public HostServices {
 public:
  Runtime(std::shared_ptr<spdlog::logger> logger, unsigned threads);
  ~Runtime() override;

  asio::io_context& io_context() noexcept override { return io_; }
  unsigned io_threads() const noexcept override { return threads_wanted_; }
  std::shared_ptr<spdlog::logger> logger() noexcept override { return logger_; }
  std::filesystem::path config_dir() const override;
  std::filesystem::path data_dir() const override;
  std::filesystem::path cache_dir() const override;
  const CapabilityRegistry& capabilities() const noexcept override { return loader_; }

  PluginLoader& loader() noexcept { return loader_; }
  // Loads modules from every directory of plugin_search_path(search); logs
  // each rejection as a warning. Daemons keep the default (their installed
  // directory only); the connectedk8s CLI passes PluginSearch::user_dirs.
  void load_plugins(PluginSearch search = PluginSearch::installed_only);

  // Starts the io threads (after plugins are loaded) and stops/joins them.
  void start();
  void stop() noexcept;

 private:
  asio::io_context io_;
  unsigned threads_wanted_;
  std::shared_ptr<spdlog::logger> logger_;
  PluginLoader loader_;
  std::vector<std::thread> threads_;
  struct Guard;
  std::unique_ptr<Guard> guard_;
};

}  // namespace clusterconnect::host
