#include "plugin_commands.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

namespace fs = std::filesystem;

namespace clusterconnect::host {
namespace {

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out;
}

// SHA-256 of everything in `fd`, read from offset 0.
Result<std::string> sha256_fd(int fd) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return fail("cannot start SHA-256");
  std::vector<char> buf(1 << 16);
  off_t off = 0;
  for (;;) {
    auto n = ::pread(fd, buf.data(), buf.size(), off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(std::string("cannot read the copy: ") + std::strerror(errno));
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n));
    off += n;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

// Copies all of `in` to `out` (at most 256 MiB) and syncs it.
Result<void> copy_fd(int in, int out) {
  constexpr std::uint64_t max_bytes = 256u << 20;
  std::vector<char> buf(1 << 16);
  std::uint64_t total = 0;
  for (;;) {
    auto n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(std::string("cannot read: ") + std::strerror(errno));
    if (n == 0) break;
    total += static_cast<std::uint64_t>(n);
    if (total > max_bytes) return fail("larger than 256 MiB; refusing to install");
    for (ssize_t off = 0; off < n;) {
      auto w = ::write(out, buf.data() + off, static_cast<std::size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return fail(std::string("cannot write the copy: ") + std::strerror(errno));
      off += w;
    }
  }
  if (::fsync(out) != 0) return fail(std::string("cannot write the copy: ") + std::strerror(errno));
  return {};
}

// Creates the missing directories of `dir` (mode 0755, nobody else may write
// them: the loader refuses such directories) and returns the ones it created,
// outermost first.
Result<std::vector<fs::path>> make_directories(const fs::path& dir) {
  std::vector<fs::path> missing;
  std::error_code ec;
  for (fs::path p = dir; !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  std::reverse(missing.begin(), missing.end());
  std::vector<fs::path> created;
  for (const auto& p : missing) {
    if (::mkdir(p.c_str(), 0755) != 0) {
      int err = errno;
      for (auto it = created.rbegin(); it != created.rend(); ++it) ::rmdir(it->c_str());
      return fail("cannot create " + p.string() + ": " + std::strerror(err));
    }
    ::chmod(p.c_str(), 0755);
    created.push_back(p);
  }
  return created;
}

nlohmann::json module_json(const LoadedModule& m) {
  return {{"name", m.name}, {"version", m.version}, {"description", m.description},
          {"capabilities", m.capabilities}, {"path", m.path}};
}

}  // namespace

PluginCommands::PluginCommands(CLI::App& root, Runtime& runtime) : rt_(runtime) {
  plugin_ = root.add_subcommand("plugin", "List, inspect, install and remove modules");
  plugin_->require_subcommand(1);
  list_ = plugin_->add_subcommand("list", "List loaded modules and modules that were refused");
  list_->add_option("-o,--output", output_, "table or json")->check(CLI::IsMember({"table", "json"}));
  info_ = plugin_->add_subcommand("info", "Show one module");
  info_->add_option("name", name_, "Module name")->required();
  info_->add_option("-o,--output", output_, "table or json")->check(CLI::IsMember({"table", "json"}));
  install_ = plugin_->add_subcommand("install", "Check a module and copy it into the user plugin directory");
  install_->add_option("path", path_, "Path to the module (.so)")->required();
  install_->add_option("--sha256", sha256_, "Expected SHA-256 of the file (hex)");
  install_->add_flag("--force", force_, "Replace an installed module of the same name");
  remove_ = plugin_->add_subcommand("remove", "Remove a module from the user plugin directory");
  remove_->add_option("name", name_, "Module name")->required();
}

int PluginCommands::run() {
  if (!*plugin_) return -1;
  if (*list_) return list();
  if (*info_) return info();
  if (*install_) return install();
  if (*remove_) return remove();
  return 2;
}

int PluginCommands::list() {
  const auto& mods = rt_.loader().modules();
  const auto& rej = rt_.loader().rejections();
  if (output_ == "json") {
    nlohmann::json out{{"modules", nlohmann::json::array()}, {"refused", nlohmann::json::array()}};
    for (const auto& m : mods) out["modules"].push_back(module_json(m));
    for (const auto& r : rej) out["refused"].push_back({{"path", r.path}, {"reason", r.reason}});
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf("%-12s %-8s %-52s %s\n", "NAME", "VERSION", "CAPABILITIES", "PATH");
  for (const auto& m : mods)
    std::printf("%-12s %-8s %-52s %s\n", m.name.c_str(), m.version.c_str(), join(m.capabilities, ",").c_str(),
                m.path.c_str());
  for (const auto& r : rej) std::printf("refused: %s: %s\n", r.path.c_str(), r.reason.c_str());
  return 0;
}

int PluginCommands::info() {
  for (const auto& m : rt_.loader().modules()) {
    if (m.name != name_) continue;
    if (output_ == "json") {
      std::cout << module_json(m).dump(2) << "\n";
    } else {
      std::printf("name:         %s\nversion:      %s\ndescription:  %s\ncapabilities: %s\npath:         %s\n",
                  m.name.c_str(), m.version.c_str(), m.description.c_str(), join(m.capabilities, ", ").c_str(),
                  m.path.c_str());
    }
    return 0;
  }
  std::fprintf(stderr, "connectedk8s: no module named '%s' is loaded; see 'connectedk8s plugin list'\n", name_.c_str());
  return 1;
}

int PluginCommands::install() {
  fs::path src(path_);
  auto refuse = [&](const std::string& why) {
    std::fprintf(stderr, "connectedk8s: cannot install %s: %s\n", src.c_str(), why.c_str());
    return 1;
  };
  // The source is read once, into a private copy in the destination
  // directory; the hash, the checks and the load all use that copy, which is
  // then renamed into place. Changing the source meanwhile changes nothing.
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return refuse(errno == ENOENT ? std::string("no such file") : std::strerror(errno));
  struct stat st {};
  if (::fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(in);
    return refuse("not a regular file");
  }
  const fs::path dir = user_plugin_dir();
  auto created = make_directories(dir);
  if (!created) {
    ::close(in);
    return refuse(created.error());
  }
  std::string tmp = (dir / ".install-XXXXXX").string();
  int out = ::mkostemp(tmp.data(), O_CLOEXEC);  // O_EXCL, mode 0600
  auto undo = [&](const std::string& why) {
    if (out >= 0) {
      ::close(out);
      ::unlink(tmp.c_str());
    }
    for (auto it = created->rbegin(); it != created->rend(); ++it) ::rmdir(it->c_str());
    return refuse(why);
  };
  if (out < 0) {
    ::close(in);
    return undo("cannot create a file in " + dir.string() + ": " + std::strerror(errno));
  }
  auto copied = copy_fd(in, out);
  ::close(in);
  if (!copied) return undo(copied.error());
  if (!sha256_.empty()) {
    auto digest = sha256_fd(out);
    if (!digest) return undo(digest.error());
    std::string want = sha256_;
    std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
    if (digest.value() != want) return undo("SHA-256 mismatch: file has " + digest.value() + ", expected " + want);
  }
  auto inspected = inspect_module(tmp);
  if (!inspected) return undo(inspected.error());
  const auto& mod = inspected.value();
  auto dest = dir / (mod.name + ".so");
  for (const auto& m : rt_.loader().modules()) {
    if (m.name == mod.name) {
      if (fs::path(m.path) == fs::weakly_canonical(dest) && force_) continue;
      if (fs::path(m.path) == fs::weakly_canonical(dest))
        return undo("module '" + mod.name + "' is already installed at " + m.path + "; use --force to replace it");
      return undo("module '" + mod.name + "' is already provided by " + m.path);
    }
    for (const auto& cap : mod.capabilities)
      if (std::find(m.capabilities.begin(), m.capabilities.end(), cap) != m.capabilities.end())
        return undo("capability " + cap + " is already provided by " + m.path);
  }
  std::error_code ec;
  if (fs::exists(dest, ec) && !force_) return undo(dest.string() + " exists; use --force to replace it");
  if (::fchmod(out, 0644) != 0) return undo(std::string("cannot set the mode of the copy: ") + std::strerror(errno));
  if (::rename(tmp.c_str(), dest.c_str()) != 0)
    return undo("cannot move the module into place: " + std::string(std::strerror(errno)));
  ::close(out);
  if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  std::printf("installed %s %s (%s) to %s\n", mod.name.c_str(), mod.version.c_str(), join(mod.capabilities, ",").c_str(),
              dest.c_str());
  return 0;
}

int PluginCommands::remove() {
  auto user_dir = fs::weakly_canonical(user_plugin_dir());
  for (const auto& m : rt_.loader().modules()) {
    if (m.name != name_) continue;
    if (fs::path(m.path).parent_path() != user_dir) {
      std::fprintf(stderr, "connectedk8s: module '%s' at %s was not installed with 'plugin install'; remove it with the tool that installed it\n",
                   name_.c_str(), m.path.c_str());
      return 1;
    }
    std::error_code ec;
    fs::remove(m.path, ec);
    if (ec) {
      std::fprintf(stderr, "connectedk8s: cannot remove %s: %s\n", m.path.c_str(), ec.message().c_str());
      return 1;
    }
    std::printf("removed %s (%s)\n", name_.c_str(), m.path.c_str());
    return 0;
  }
  std::fprintf(stderr, "connectedk8s: no module named '%s' is loaded; see 'connectedk8s plugin list'\n", name_.c_str());
  return 1;
}

}  // namespace clusterconnect::host
