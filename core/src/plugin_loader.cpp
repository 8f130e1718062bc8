#include "clusterconnect/host/plugin_loader.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>

#include <boost/dll/import.hpp>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/command.hpp"
#include "clusterconnect/credential.hpp"
#include "clusterconnect/kubeconfig.hpp"
#include "clusterconnect/transport.hpp"

namespace fs = std::filesystem;

namespace clusterconnect::host {
namespace {

constexpr std::size_t max_module_size = 256u << 20;

// Libraries stay loaded until the process ends: modules hand out objects whose
// code lives in them, and Asio services keyed by their types.
std::vector<boost::dll::shared_library>& keep_loaded() {
  static auto* libs = new std::vector<boost::dll::shared_library>();
  return *libs;
}
std::mutex& keep_loaded_mutex() {
  static std::mutex m;
  return m;
}

template <class T>
bool read_at(std::ifstream& in, std::uint64_t offset, T& out) {
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(reinterpret_cast<char*>(&out), sizeof(T));
  return static_cast<bool>(in);
}

}  // namespace

Result<std::string> read_module_abi(const fs::path& path) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) return fail("cannot read: " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail("cannot open for reading");
  Elf64_Ehdr eh{};
  if (size < sizeof(eh) || !read_at(in, 0, eh) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
    return fail("not an ELF shared object");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_type != ET_DYN)
    return fail("not a 64-bit ELF shared object");
  if (size > max_module_size) return fail("larger than 256 MiB; refusing to load");
  if (eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shstrndx >= eh.e_shnum ||
      eh.e_shoff + std::uint64_t(eh.e_shnum) * sizeof(Elf64_Shdr) > size)
    return fail("corrupt ELF section table");
  Elf64_Shdr strtab{};
  if (!read_at(in, eh.e_shoff + std::uint64_t(eh.e_shstrndx) * sizeof(Elf64_Shdr), strtab) ||
      strtab.sh_offset + strtab.sh_size > size)
    return fail("corrupt ELF section names");
  std::string names(strtab.sh_size, '\0');
  in.seekg(static_cast<std::streamoff>(strtab.sh_offset));
  in.read(names.data(), static_cast<std::streamsize>(names.size()));
  for (unsigned i = 0; i < eh.e_shnum; ++i) {
    Elf64_Shdr sh{};
    if (!read_at(in, eh.e_shoff + std::uint64_t(i) * sizeof(Elf64_Shdr), sh)) return fail("corrupt ELF section table");
    if (sh.sh_name >= names.size() || std::strcmp(names.c_str() + sh.sh_name, ".clusterconnect_abi") != 0) continue;
    if (sh.sh_size == 0 || sh.sh_size > 4096 || sh.sh_offset + sh.sh_size > size)
      return fail("corrupt .clusterconnect_abi section");
    std::string abi(sh.sh_size, '\0');
    in.seekg(static_cast<std::streamoff>(sh.sh_offset));
    in.read(abi.data(), static_cast<std::streamsize>(abi.size()));
    abi.resize(std::strlen(abi.c_str()));
    return abi;
  }
  return fail("no entry point: not a clusterconnect module (no .clusterconnect_abi section)");
}

namespace {

Result<const PluginDescriptor*> load_descriptor(const fs::path& path) {
  auto abi = read_module_abi(path);
  if (!abi) return fail(abi.error());
  if (abi.value() != CLUSTERCONNECT_ABI_STRING)
    return fail("ABI mismatch: module has \"" + abi.value() + "\", host expects \"" CLUSTERCONNECT_ABI_STRING "\"");
  boost::dll::shared_library lib;
  std::error_code ec;
  lib.load(boost::dll::fs::path(path.string()),
           boost::dll::load_mode::rtld_local | boost::dll::load_mode::rtld_now, ec);
  if (ec) {
    const char* why = dlerror();
    return fail(std::string("cannot load: ") + (why ? why : ec.message().c_str()));
  }
  if (!lib.has("clusterconnect_plugin_v1")) return fail("no entry point: the alias clusterconnect_plugin_v1 is missing");
  auto entry = lib.get_alias<const PluginDescriptor&() noexcept>("clusterconnect_plugin_v1");
  const PluginDescriptor& d = entry();
  if (!d.abi || std::strcmp(d.abi, CLUSTERCONNECT_ABI_STRING) != 0)
    return fail("ABI mismatch: the descriptor disagrees with the module's ABI section");
  if (!d.name || !*d.name || !d.create) return fail("descriptor without a name or factory");
  {
    std::lock_guard lock(keep_loaded_mutex());
    keep_loaded().push_back(std::move(lib));
  }
  return &d;
}

ModuleInspection describe(const PluginDescriptor& d) {
  ModuleInspection m{d.abi, d.name, d.version ? d.version : "", d.description ? d.description : "", {}};
  for (std::size_t i = 0; i < d.capability_count; ++i) m.capabilities.emplace_back(d.capabilities[i]);
  return m;
}

}  // namespace

Result<ModuleInspection> inspect_module(const fs::path& path) {
  auto d = load_descriptor(path);
  if (!d) return fail(d.error());
  return describe(*d.value());
}

PluginLoader::PluginLoader() = default;
PluginLoader::~PluginLoader() {
  // Module instances are released before the process ends; the libraries stay.
  modules_.clear();
  instances_.clear();
}

void PluginLoader::load_directory(const fs::path& dir, HostServices& host) {
  std::error_code ec;
  auto st = fs::status(dir, ec);
  if (ec || !fs::is_directory(st)) return;
  struct stat raw {};
  if (::stat(dir.c_str(), &raw) == 0 && (raw.st_mode & S_IWOTH) && !(raw.st_mode & S_ISVTX)) {
    rejections_.push_back({dir.string(), "directory is writable by other users; its modules are not loaded"});
    return;
  }
  std::vector<fs::path> files;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (it->path().extension() == ".so") files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) load_file(f, host);
}

bool PluginLoader::load_file(const fs::path& file, HostServices& host) {
  auto reject = [&](std::string why) {
    rejections_.push_back({file.string(), std::move(why)});
    return false;
  };
  struct stat raw {};
  if (::stat(file.c_str(), &raw) == 0 && (raw.st_mode & S_IWOTH))
    return reject("file is writable by other users; not loaded");
  auto canonical = fs::weakly_canonical(file).string();
  for (const auto& m : modules_)
    if (m.path == canonical) return true;

  auto d = load_descriptor(file);
  if (!d) return reject(d.error());
  const PluginDescriptor& desc = *d.value();
  auto info = describe(desc);
  for (const auto& cap : info.capabilities) {
    for (const auto& m : modules_) {
      if (std::find(m.capabilities.begin(), m.capabilities.end(), cap) != m.capabilities.end())
        return reject("duplicate capability " + cap + ": already provided by " + m.path);
    }
  }
  std::unique_ptr<Module> instance = desc.create(host);
  if (!instance) return reject("module factory failed");
  modules_.push_back({info.name, info.version, info.description, canonical, info.capabilities, instance.get()});
  instances_.push_back(std::move(instance));
  return true;
}

Module* PluginLoader::provider(std::string_view capability) const noexcept {
  for (const auto& m : modules_)
    for (const auto& c : m.capabilities)
      if (c == capability) return m.instance;
  return nullptr;
}

fs::path installed_plugin_dir() {
  auto exe = fs::path(boost::dll::program_location().string());
  return (exe.parent_path() / ".." / "lib" / "connectedk8s" / "plugins").lexically_normal();
}

fs::path user_plugin_dir() {
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x) return fs::path(x) / "connectedk8s" / "plugins";
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : "/") / ".local" / "share" / "connectedk8s" / "plugins";
}

std::vector<fs::path> plugin_search_path() {
  std::vector<fs::path> dirs{installed_plugin_dir()};
  if (const char* extra = std::getenv("CONNECTEDK8S_PLUGIN_PATH"); extra && *extra) {
    std::string s(extra);
    std::size_t start = 0;
    while (start <= s.size()) {
      auto end = s.find(':', start);
      if (end == std::string::npos) end = s.size();
      if (end > start) dirs.emplace_back(s.substr(start, end - start));
      start = end + 1;
    }
  }
  dirs.push_back(user_plugin_dir());
  return dirs;
}

// Capability lookups by kind.
namespace {
std::string key(std::string_view kind, std::string_view name) {
  std::string k(kind);
  k += ':';
  k += name;
  return k;
}
}  // namespace
}  // namespace clusterconnect::host

namespace clusterconnect {

std::shared_ptr<CommandCapability> CapabilityRegistry::command(std::string_view name) const {
  auto* m = provider(host::key("command", name));
  return m ? m->command(name) : nullptr;
}
std::shared_ptr<TransportCapability> CapabilityRegistry::transport(std::string_view name) const {
  auto* m = provider(host::key("transport", name));
  return m ? m->transport(name) : nullptr;
}
std::shared_ptr<CredentialCapability> CapabilityRegistry::credential(std::string_view name) const {
  auto* m = provider(host::key("credential", name));
  return m ? m->credential(name) : nullptr;
}
std::shared_ptr<AuthenticatorCapability> CapabilityRegistry::authenticator(std::string_view name) const {
  auto* m = provider(host::key("authenticator", name));
  return m ? m->authenticator(name) : nullptr;
}
std::shared_ptr<KubeconfigCapability> CapabilityRegistry::kubeconfig(std::string_view name) const {
  auto* m = provider(host::key("kubeconfig", name));
  return m ? m->kubeconfig(name) : nullptr;
}

const char* to_string(AuthFailure f) noexcept {
  switch (f) {
    case AuthFailure::none: return "none";
    case AuthFailure::not_applicable: return "not_applicable";
    case AuthFailure::malformed: return "malformed";
    case AuthFailure::disallowed_algorithm: return "disallowed_algorithm";
    case AuthFailure::unknown_key: return "unknown_key";
    case AuthFailure::bad_signature: return "bad_signature";
    case AuthFailure::expired: return "expired";
    case AuthFailure::not_yet_valid: return "not_yet_valid";
    case AuthFailure::wrong_audience: return "wrong_audience";
    case AuthFailure::wrong_issuer: return "wrong_issuer";
    case AuthFailure::group_overage: return "group_overage";
    case AuthFailure::keys_unavailable: return "keys_unavailable";
  }
  return "unknown";
}

}  // namespace clusterconnect
