#pragma once
// Capability kind "command": adds a subcommand to the `connectedk8s` CLI.

#include <string>

namespace CLI {
class App;
}

namespace clusterconnect {

class CommandCapability {
 public:
  virtual ~CommandCapability() = default;
  // Adds the subcommand (with its options) to `root`; returns it. Called once,
  // on the main thread, before parsing.
  virtual CLI::App* add_to(CLI::App& root) noexcept = 0;
  // Runs the subcommand after a successful parse, on the main thread, with the
  // host's io threads running. Returns the process exit code.
  virtual int run() noexcept = 0;
};

}  // namespace clusterconnect
