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

// Opens `path` once (O_NOFOLLOW) and checks, on that descriptor, that it is a
// regular file owned by this user or root and writable by nobody else, that
// its directory and every directory above it up to / are too, and that it is
// a 64-bit ELF shared object carrying a `.clusterconnect_abi` section; returns
// the ABI string or a one-line reason naming the offending path.
Result<std::string> read_module_abi(const std::filesystem::path& path);

// Full check: the checks above, the ABI string, and that the dynamic symbol
// table exports the `clusterconnect_plugin_v1` alias; only then loads the
// checked descriptor (dlopen of /proc/self/fd/N, RTLD_LOCAL|RTLD_NOW), so no
// code of a refused file runs, and reads the descriptor from the alias. The
// library stays loaded until the process ends.
Result<ModuleInspection> inspect_module(const std::filesystem::path& path);

class PluginLoader final : public CapabilityRegistry {
 public:
  PluginLoader();
  ~PluginLoader() override;

  // Loads every *.so in `dir` (sorted by name). A missing directory is fine; a
  // directory that is (or sits under one that is) owned by another user or
  // writable by its group or other users is refused as a whole.
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

// Which directories a host loads modules from.
enum class PluginSearch {
  installed_only,  // only the directory next to the binary (daemons)
  user_dirs,       // also $CONNECTEDK8S_PLUGIN_PATH and the user's directory (the CLI)
};

// The directories a host searches, in order: next to the binary
// (<exe>/../lib/connectedk8s/plugins); with PluginSearch::user_dirs also each
// entry of $CONNECTEDK8S_PLUGIN_PATH, then the user's plugin directory.
std::vector<std::filesystem::path> plugin_search_path(PluginSearch search = PluginSearch::installed_only);
std::filesystem::path user_plugin_dir();
std::filesystem::path installed_plugin_dir();

}  // namespace clusterconnect::host
