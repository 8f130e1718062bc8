#include "plugin_commands.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
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

Result<std::string> sha256_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail("cannot read " + path.string());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 16);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(in.gcount()));
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

nlohmann::json module_json(const LoadedModule& m) {
  return {{"name", m.name}, {"version", m.version}, {"description", m.description},
          {"capabilities", m.capabilities}, {"path", m.path}};
}

// Copies src to dest through a temporary file in dest's directory, so dest is
// either the old file or the complete new one.
Result<void> copy_atomically(const fs::path& src, const fs::path& dest) {
  std::error_code ec;
  fs::create_directories(dest.parent_path(), ec);
  if (ec) return fail("cannot create " + dest.parent_path().string() + ": " + ec.message());
  auto tmp = dest;
  tmp += ".tmp-" + std::to_string(::getpid());
  {
    std::ifstream in(src, std::ios::binary);
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    if (!in || fd < 0) return fail("cannot write " + tmp.string());
    std::vector<char> buf(1 << 16);
    bool ok = true;
    while (ok && in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      auto n = in.gcount();
      for (std::streamsize off = 0; ok && off < n;) {
        auto w = ::write(fd, buf.data() + off, static_cast<std::size_t>(n - off));
        if (w <= 0) ok = false;
        else off += w;
      }
    }
    ok = ok && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) {
      fs::remove(tmp, ec);
      return fail("writing " + tmp.string() + " failed");
    }
  }
  fs::rename(tmp, dest, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return fail("cannot move the module into place: " + ec.message());
  }
  return {};
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
  if (!fs::is_regular_file(src)) return refuse("no such file");
  if (!sha256_.empty()) {
    auto digest = sha256_file(src);
    if (!digest) return refuse(digest.error());
    std::string want = sha256_;
    std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
    if (digest.value() != want) return refuse("SHA-256 mismatch: file has " + digest.value() + ", expected " + want);
  }
  auto inspected = inspect_module(src);
  if (!inspected) return refuse(inspected.error());
  const auto& mod = inspected.value();
  auto dest = user_plugin_dir() / (mod.name + ".so");
  for (const auto& m : rt_.loader().modules()) {
    if (m.name == mod.name) {
      if (fs::path(m.path) == fs::weakly_canonical(dest) && force_) continue;
      if (fs::path(m.path) == fs::weakly_canonical(dest))
        return refuse("module '" + mod.name + "' is already installed at " + m.path + "; use --force to replace it");
      return refuse("module '" + mod.name + "' is already provided by " + m.path);
    }
    for (const auto& cap : mod.capabilities)
      if (std::find(m.capabilities.begin(), m.capabilities.end(), cap) != m.capabilities.end())
        return refuse("capability " + cap + " is already provided by " + m.path);
  }
  if (fs::exists(dest) && !force_) return refuse(dest.string() + " exists; use --force to replace it");
  if (auto r = copy_atomically(src, dest); !r) return refuse(r.error());
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
