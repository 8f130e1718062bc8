#include "clusterconnect/host/plugin_loader.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
class Fd;
std::vector<std::unique_ptr<Fd>>& keep_open() {
  static auto* fds = new std::vector<std::unique_ptr<Fd>>();
  return *fds;
}
std::mutex& keep_loaded_mutex() {
  static std::mutex m;
  return m;
}

// An open file descriptor, closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) noexcept : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }

 private:
  int fd_;
};

std::string octal_mode(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

// Owner must be this user or root; nobody else may write. A sticky bit does
// not make a shared directory safe to hold modules (anyone may create files
// in it), but it does make it safe to pass through: nobody else can rename or
// remove the entry below it, which the caller has already checked is ours.
Result<void> check_owner_and_mode(const fs::path& path, const struct stat& st, const char* what,
                                  bool sticky_ancestor = false) {
  const uid_t me = ::geteuid();
  if (st.st_uid != me && st.st_uid != 0)
    return fail(std::string(what) + " " + path.string() + " is owned by uid " + std::to_string(st.st_uid) +
                ", not by this user (uid " + std::to_string(me) + ") or root");
  if (sticky_ancestor && (st.st_mode & S_ISVTX)) return {};
  if (st.st_mode & S_IWOTH)
    return fail(std::string(what) + " " + path.string() + " is writable by other users (mode " +
                octal_mode(st.st_mode) + ")");
  if (st.st_mode & S_IWGRP)
    return fail(std::string(what) + " " + path.string() + " is writable by its group (mode " + octal_mode(st.st_mode) +
                ")");
  return {};
}

// `dir` (resolved) and every directory above it up to /; returns the
// resolved directory.
Result<fs::path> check_directory_chain(const fs::path& dir) {
  std::error_code ec;
  const fs::path resolved = fs::canonical(dir, ec);
  if (ec) return fail("cannot resolve directory " + dir.string() + ": " + ec.message());
  for (fs::path p = resolved;;) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return fail("cannot stat " + p.string() + ": " + std::strerror(errno));
    if (auto r = check_owner_and_mode(p, st, "directory", p != resolved); !r) return fail(r.error());
    if (p == p.root_path() || !p.has_relative_path()) break;
    p = p.parent_path();
  }
  return resolved;
}

// Bounded reads from a descriptor at an offset.
class ElfReader {
 public:
  ElfReader(int fd, std::uint64_t size) : fd_(fd), size_(size) {}
  template <class T>
  bool read(std::uint64_t offset, T& out) const {
    return bytes(offset, sizeof(T), reinterpret_cast<char*>(&out));
  }
  bool read(std::uint64_t offset, std::uint64_t length, std::string& out) const {
    out.assign(length, '\0');
    return bytes(offset, length, out.data());
  }
  std::uint64_t size() const noexcept { return size_; }

 private:
  bool bytes(std::uint64_t offset, std::uint64_t length, char* out) const {
    if (offset > size_ || length > size_ - offset) return false;
    std::uint64_t done = 0;
    while (done < length) {
      auto n = ::pread(fd_, out + done, length - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<std::uint64_t>(n);
    }
    return true;
  }
  int fd_;
  std::uint64_t size_;
};

struct ElfFacts {
  std::string abi;
  bool exports_entry = false;
};

constexpr std::uint64_t max_symbol_table = 16u << 20;

// Reads the ABI section and looks for the entry alias among the defined,
// exported dynamic symbols; never maps or runs the file.
Result<ElfFacts> read_elf(const ElfReader& in) {
  Elf64_Ehdr eh{};
  if (!in.read(0, eh) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return fail("not an ELF shared object");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_type != ET_DYN) return fail("not a 64-bit ELF shared object");
  if (in.size() > max_module_size) return fail("larger than 256 MiB; refusing to load");
  if (eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shnum == 0 || eh.e_shstrndx >= eh.e_shnum ||
      eh.e_shoff > in.size() || std::uint64_t(eh.e_shnum) * sizeof(Elf64_Shdr) > in.size() - eh.e_shoff)
    return fail("corrupt ELF section table");
  std::vector<Elf64_Shdr> sections(eh.e_shnum);
  for (unsigned i = 0; i < eh.e_shnum; ++i)
    if (!in.read(eh.e_shoff + std::uint64_t(i) * sizeof(Elf64_Shdr), sections[i]))
      return fail("corrupt ELF section table");
  std::string names;
  const auto& strtab = sections[eh.e_shstrndx];
  if (strtab.sh_size > max_symbol_table || !in.read(strtab.sh_offset, strtab.sh_size, names))
    return fail("corrupt ELF section names");
  ElfFacts facts;
  bool have_abi = false;
  for (const auto& sh : sections) {
    if (sh.sh_name >= names.size() || std::strcmp(names.c_str() + sh.sh_name, ".clusterconnect_abi") != 0) continue;
    if (sh.sh_size == 0 || sh.sh_size > 4096 || !in.read(sh.sh_offset, sh.sh_size, facts.abi))
      return fail("corrupt .clusterconnect_abi section");
    facts.abi.resize(std::strlen(facts.abi.c_str()));
    have_abi = true;
    break;
  }
  if (!have_abi) return fail("no entry point: not a clusterconnect module (no .clusterconnect_abi section)");
  for (const auto& sh : sections) {
    if (sh.sh_type != SHT_DYNSYM) continue;
    if (sh.sh_entsize != sizeof(Elf64_Sym) || sh.sh_link >= sections.size() ||
        sections[sh.sh_link].sh_type != SHT_STRTAB || sh.sh_size > max_symbol_table ||
        sections[sh.sh_link].sh_size > max_symbol_table)
      return fail("corrupt ELF dynamic symbol table");
    std::string symbols, strings;
    if (!in.read(sh.sh_offset, sh.sh_size, symbols) ||
        !in.read(sections[sh.sh_link].sh_offset, sections[sh.sh_link].sh_size, strings))
      return fail("corrupt ELF dynamic symbol table");
    for (std::size_t off = 0; off + sizeof(Elf64_Sym) <= symbols.size(); off += sizeof(Elf64_Sym)) {
      Elf64_Sym sym{};
      std::memcpy(&sym, symbols.data() + off, sizeof sym);
      if (sym.st_name >= strings.size() || sym.st_shndx == SHN_UNDEF) continue;
      const auto bind = ELF64_ST_BIND(sym.st_info);
      const auto vis = ELF64_ST_VISIBILITY(sym.st_other);
      if ((bind != STB_GLOBAL && bind != STB_WEAK) || (vis != STV_DEFAULT && vis != STV_PROTECTED)) continue;
      if (std::strcmp(strings.c_str() + sym.st_name, "clusterconnect_plugin_v1") == 0) {
        facts.exports_entry = true;
        break;
      }
    }
    break;
  }
  return facts;
}

// A module file opened once: every check and the load use this descriptor.
struct OpenedModule {
  std::unique_ptr<Fd> fd;
  ElfFacts facts;
};

Result<OpenedModule> open_module(const fs::path& path) {
  std::error_code ec;
  const fs::path absolute = fs::absolute(path, ec);
  if (ec) return fail("cannot resolve: " + ec.message());
  auto dir = check_directory_chain(absolute.parent_path());
  if (!dir) return fail(dir.error());
  // Open through the directories just checked, not through links elsewhere.
  const fs::path resolved = dir.value() / absolute.filename();
  auto fd = std::make_unique<Fd>(::open(resolved.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd->get() < 0) {
    if (errno == ELOOP) return fail("is a symbolic link; modules are loaded from regular files only");
    return fail(std::string("cannot open for reading: ") + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return fail(std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return fail("not a regular file");
  if (auto r = check_owner_and_mode(absolute, st, "file"); !r) return fail(r.error());
  ElfReader reader(fd->get(), static_cast<std::uint64_t>(st.st_size));
  auto facts = read_elf(reader);
  if (!facts) return fail(facts.error());
  return OpenedModule{std::move(fd), std::move(facts.value())};
}

}  // namespace

Result<std::string> read_module_abi(const fs::path& path) {
  auto m = open_module(path);
  if (!m) return fail(m.error());
  return m->facts.abi;
}

namespace {

Result<const PluginDescriptor*> load_descriptor(const fs::path& path) {
  auto opened = open_module(path);
  if (!opened) return fail(opened.error());
  const auto& abi = opened->facts.abi;
  if (abi != CLUSTERCONNECT_ABI_STRING)
    return fail("ABI mismatch: module has \"" + abi + "\", host expects \"" CLUSTERCONNECT_ABI_STRING "\"");
  if (!opened->facts.exports_entry) return fail("no entry point: the alias clusterconnect_plugin_v1 is missing");
  // Load the very file that was checked, through its descriptor.
  const std::string self = "/proc/self/fd/" + std::to_string(opened->fd->get());
  boost::dll::shared_library lib;
  std::error_code ec;
  lib.load(boost::dll::fs::path(self), boost::dll::load_mode::rtld_local | boost::dll::load_mode::rtld_now, ec);
  if (ec) {
    const char* why = dlerror();
    return fail(std::string("cannot load: ") + (why ? why : ec.message().c_str()));
  }
  {
    // The loader knows the library by the name /proc/self/fd/N: that number
    // must not name another file while the library may still be mapped.
    std::lock_guard lock(keep_loaded_mutex());
    keep_open().push_back(std::move(opened->fd));
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
  if (auto safe = check_directory_chain(dir); !safe) {
    rejections_.push_back({dir.string(), safe.error() + "; its modules are not loaded"});
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

std::vector<fs::path> plugin_search_path(PluginSearch search) {
  std::vector<fs::path> dirs{installed_plugin_dir()};
  if (search == PluginSearch::installed_only) return dirs;
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
    case AuthFailure::pop_required: return "pop_required";
    case AuthFailure::wrong_cluster: return "wrong_cluster";
    case AuthFailure::replayed: return "replayed";
  }
  return "unknown";
}

}  // namespace clusterconnect
