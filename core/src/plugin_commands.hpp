#pragma once
// `connectedk8s plugin list|info|install|remove`.

#include <CLI/CLI.hpp>

#include "clusterconnect/host/runtime.hpp"

namespace clusterconnect::host {

class PluginCommands {
 public:
  PluginCommands(CLI::App& root, Runtime& runtime);
  // Runs the selected plugin subcommand; returns the exit code, or -1 if
  // none of them was selected.
  int run();

 private:
  int list();
  int info();
  int install();
  int remove();

  Runtime& rt_;
  CLI::App* plugin_ = nullptr;
  CLI::App* list_ = nullptr;
  CLI::App* info_ = nullptr;
  CLI::App* install_ = nullptr;
  CLI::App* remove_ = nullptr;
  std::string output_ = "table";
  std::string name_;
  std::string path_;
  std::string sha256_;
  bool force_ = false;
};

}  // namespace clusterconnect::host
