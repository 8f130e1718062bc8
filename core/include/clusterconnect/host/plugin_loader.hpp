#pragma once
// Host side of the module contract: finds, checks and loads modules.

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "clusterconnect/registry.hpp"
#include "clusterconnect/result.hpp"

namespace clusterconnect::host {

struct Rejection {
  std::string path;
  std::string reason;  // one line: why the module was not loaded
};

// What the file says about itself, read without running its code where
// possible (the ABI string comes from the ELF section, not from a call).
struct ModuleInspection {
  std::string abi;
  std::string name;
  std::string version;
  std::string description;
  std::vector<std::string> capabilities;
};

// Checks `path` is a 64-bit ELF shared object carrying a `.clusterconnect_abi`
// section whose string equals this host's ABI; returns the ABI string or a
// precise reason.
Result<std::string> read_module_abi(const std::filesystem::path& path);

// Full check: ELF and ABI, then loads it (RTLD_LOCAL|RTLD_NOW) and reads the
// descriptor from the `clusterconnect_plugin_v1` alias. The library stays
// loaded until the process ends.
Result<ModuleInspection> inspect_module(const std::filesystem::path& path);

class PluginLoader final : public CapabilityRegistry {
 public:
  PluginLoader();
  ~PluginLoader() override;

  // Loads every *.so in `dir` (sorted by name). A missing directory is fine; a
  // directory writable by other users is refused as a whole.
  void load_directory(const std::filesystem::path& dir, HostServices& host);
  // Loads one module; on refusal records a Rejection and returns false.
  bool load_file(const std::filesystem::path& file, HostServices& host);

  const std::vector<Rejection>& rejections() const noexcept { return rejections_; }
  const std::vector<LoadedModule>& modules() const noexcept override { return modules_; }
  Module* provider(std::string_view capability) const noexcept override;

 private:
  std::vector<LoadedModule> modules_;
  std::vector<std::unique_ptr<Module>> instances_;
  std::vector<Rejection> rejections_;
};

// The directories a host searches, in order: next to the binary
// (<exe>/../lib/connectedk8s/plugins), each entry of $CONNECTEDK8S_PLUGIN_PATH,
// then the user's plugin directory.
std::vector<std::filesystem::path> plugin_search_path();
std::filesystem::path user_plugin_dir();
std::filesystem::path installed_plugin_dir();

}  // namespace clusterconnect::host
