#pragma once
// What a host (connectedk8s, clusterconnect-agent, clusterconnect-relay) gives
// its modules: the one io_context, the one logger, directories, and access to
// the capabilities other modules provide.

#include <filesystem>
#include <memory>
#include <string_view>

#include "clusterconnect/asio_fwd.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect {

class CapabilityRegistry;

class HostServices {
 public:
  virtual ~HostServices() = default;

  virtual asio::io_context& io_context() noexcept = 0;
  // Number of threads that run io_context() once the host starts them.
  virtual unsigned io_threads() const noexcept = 0;
  virtual std::shared_ptr<spdlog::logger> logger() noexcept = 0;

  // $XDG_CONFIG_HOME/connectedk8s, $XDG_DATA_HOME/connectedk8s,
  // $XDG_CACHE_HOME/connectedk8s (created 0700 on first use by the caller).
  virtual std::filesystem::path config_dir() const = 0;
  virtual std::filesystem::path data_dir() const = 0;
  virtual std::filesystem::path cache_dir() const = 0;

  virtual const CapabilityRegistry& capabilities() const noexcept = 0;
};

}  // namespace clusterconnect
