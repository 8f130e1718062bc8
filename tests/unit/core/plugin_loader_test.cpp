#include <dlfcn.h>
#include <stdlib.h>

#include <catch2/catch.hpp>

#include <fstream>

#include <spdlog/spdlog.h>

#include "../../support/test_env.hpp"
#include "clusterconnect/command.hpp"
#include "clusterconnect/host/runtime.hpp"

namespace fs = std::filesystem;
using namespace clusterconnect;
using clusterconnect::test::TempDir;

namespace {

fs::path real_plugins() { return test::stage_dir() / "lib" / "connectedk8s" / "plugins"; }
fs::path test_module(const char* name) { return fs::path(TEST_MODULE_DIR) / (std::string(name) + ".so"); }


std::string reason_for(const host::PluginLoader& l, const fs::path& p) {
  for (const auto& r : l.rejections())
    if (r.path == p.string()) return r.reason;
  return "";
}

}  // namespace

TEST_CASE("the seven real modules load and register their capabilities", "[loader]") {
  host::Runtime rt(spdlog::default_logger(), 1);
  rt.loader().load_directory(real_plugins(), rt);
  CHECK(rt.loader().rejections().empty());
  std::vector<std::string> names;
  for (const auto& m : rt.loader().modules()) names.push_back(m.name);
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"auth-entra", "auth-oidc", "kubeconfig", "onboarding", "proxy", "tunnel-tls", "tunnel-ws"});
  CHECK(rt.capabilities().provider("transport:ws") != nullptr);
  CHECK(rt.capabilities().provider("transport:tls") != nullptr);
  CHECK(rt.capabilities().provider("command:proxy") != nullptr);
  CHECK(rt.capabilities().provider("kubeconfig:yaml") != nullptr);
  CHECK(rt.capabilities().provider("authenticator:entra") != nullptr);
  CHECK(rt.capabilities().provider("authenticator:oidc") != nullptr);
  CHECK(rt.capabilities().provider("credential:oidc") != nullptr);
  CHECK(rt.capabilities().command("proxy") != nullptr);
}

TEST_CASE("a module built for another ABI is refused before its code runs, naming both values", "[loader]") {
  auto abi = host::read_module_abi(test_module("testmod_wrong_abi"));
  REQUIRE(abi.ok());
  CHECK(abi.value() == "clusterconnect-abi/0 gcc-0.0");
  // The module's constructor leaves a marker when its code is mapped.
  TempDir dir;
  const auto marker = dir.path() / "constructor-ran";
  REQUIRE(::setenv("CLUSTERCONNECT_TEST_CTOR_MARKER", marker.c_str(), 1) == 0);
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(test_module("testmod_wrong_abi"), rt));
  auto why = reason_for(rt.loader(), test_module("testmod_wrong_abi"));
  CHECK_THAT(why, Catch::Contains("ABI mismatch"));
  CHECK_THAT(why, Catch::Contains("clusterconnect-abi/0 gcc-0.0"));
  CHECK_THAT(why, Catch::Contains(CLUSTERCONNECT_ABI_STRING));
  CHECK(rt.loader().modules().empty());
  CHECK_FALSE(fs::exists(marker));  // refused without running any of its code
  // The marker works: mapping the module runs the constructor.
  void* h = ::dlopen(test_module("testmod_wrong_abi").c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE(h != nullptr);
  CHECK(fs::exists(marker));
  ::dlclose(h);
  ::unsetenv("CLUSTERCONNECT_TEST_CTOR_MARKER");
}

TEST_CASE("a module without the entry point is refused", "[loader]") {
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(test_module("testmod_missing_alias"), rt));
  CHECK_THAT(reason_for(rt.loader(), test_module("testmod_missing_alias")), Catch::Contains("no entry point"));
}

TEST_CASE("a text file named .so is refused as not an ELF shared object", "[loader]") {
  TempDir dir;
  auto fake = dir.path() / "fake.so";
  std::ofstream(fake) << "this is not a shared object\n";
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(fake, rt));
  CHECK(reason_for(rt.loader(), fake) == "not an ELF shared object");
  std::ofstream(dir.path() / "empty.so");
  CHECK_FALSE(rt.loader().load_file(dir.path() / "empty.so", rt));
  CHECK(reason_for(rt.loader(), dir.path() / "empty.so") == "not an ELF shared object");
}

TEST_CASE("a duplicate capability is refused naming both modules, and the host keeps the rest", "[loader]") {
  host::Runtime rt(spdlog::default_logger(), 1);
  rt.loader().load_directory(real_plugins(), rt);
  auto before = rt.loader().modules().size();
  CHECK_FALSE(rt.loader().load_file(test_module("testmod_duplicate_capability"), rt));
  auto why = reason_for(rt.loader(), test_module("testmod_duplicate_capability"));
  CHECK_THAT(why, Catch::Contains("duplicate capability transport:ws"));
  CHECK_THAT(why, Catch::Contains("tunnel-ws.so"));
  CHECK(rt.loader().modules().size() == before);
  CHECK(rt.loader().load_file(test_module("testmod_good_extra"), rt));
  CHECK(rt.loader().modules().size() == before + 1);
}

TEST_CASE("a plugin directory writable by other users is refused as a whole", "[loader]") {
  TempDir dir;
  fs::copy_file(test_module("testmod_good_extra"), dir.path() / "extra.so");
  fs::permissions(dir.path(), fs::perms::others_write, fs::perm_options::add);
  host::Runtime rt(spdlog::default_logger(), 1);
  rt.loader().load_directory(dir.path(), rt);
  CHECK(rt.loader().modules().empty());
  CHECK_THAT(reason_for(rt.loader(), dir.path()), Catch::Contains("writable by other users"));
}

TEST_CASE("a module's timer and socket complete on the host's io threads", "[loader][asio]") {
  // Asio types cross the module boundary: the module's timer and socket must
  // find the host's services and run on the host's threads.
  host::Runtime rt(spdlog::default_logger(), 2);
  REQUIRE(rt.loader().load_file(test_module("testmod_asio_probe"), rt));
  auto probe = rt.capabilities().command("asio-probe");
  REQUIRE(probe != nullptr);
  rt.start();
  CHECK(probe->run() == 0);
  rt.stop();
}

// Ownership and permissions of a module and of every directory above it, and
// loading from the checked descriptor.
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

// A private directory (0700) holding a copy of a test module (0644).
struct ModuleCopy {
  TempDir dir;
  fs::path file;
  explicit ModuleCopy(const char* name, const fs::path& sub = {}) {
    fs::permissions(dir.path(), fs::perms::owner_all, fs::perm_options::replace);
    fs::create_directories(dir.path() / sub);
    file = dir.path() / sub / (std::string(name) + ".so");
    fs::copy_file(test_module(name), file);
    fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read,
                    fs::perm_options::replace);
  }
};

}  // namespace

TEST_CASE("a module in a private directory loads from the descriptor it was checked on", "[loader][ownership]") {
  ModuleCopy m("testmod_good_extra");
  host::Runtime rt(spdlog::default_logger(), 1);
  REQUIRE(rt.loader().load_file(m.file, rt));
  REQUIRE(rt.loader().modules().size() == 1);
  CHECK(rt.loader().modules()[0].path == fs::canonical(m.file).string());
}

TEST_CASE("a module in a world-writable directory is refused, sticky or not", "[loader][ownership]") {
  // Anybody may create files in a 1777 directory, so nothing in it is ours.
  ModuleCopy m("testmod_good_extra", "shared");
  const auto shared = m.dir.path() / "shared";
  REQUIRE(::chmod(shared.c_str(), 01777) == 0);
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(m.file, rt));
  CHECK_THAT(reason_for(rt.loader(), m.file),
             Catch::Contains("directory " + fs::canonical(shared).string() + " is writable by other users (mode 1777)"));
  rt.loader().load_directory(shared, rt);
  CHECK_THAT(reason_for(rt.loader(), shared), Catch::Contains(fs::canonical(shared).string()));
  CHECK(rt.loader().modules().empty());
}

TEST_CASE("a directory of our own below a sticky shared directory is safe, below a plain shared one it is not",
          "[loader][ownership]") {
  // Nobody else can rename or remove our directory inside a sticky 1777
  // directory such as /tmp; inside a 0777 one anybody could swap it.
  ModuleCopy m("testmod_good_extra", "shared/mine");
  const auto shared = m.dir.path() / "shared";
  REQUIRE(::chmod(shared.c_str(), 01777) == 0);
  {
    host::Runtime rt(spdlog::default_logger(), 1);
    CHECK(rt.loader().load_file(m.file, rt));
    CHECK(rt.loader().modules().size() == 1);
  }
  REQUIRE(::chmod(shared.c_str(), 0777) == 0);
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(m.file, rt));
  CHECK_THAT(reason_for(rt.loader(), m.file),
             Catch::Contains("directory " + fs::canonical(shared).string() + " is writable by other users (mode 0777)"));
  CHECK(rt.loader().modules().empty());
}

TEST_CASE("a group-writable module or directory is refused", "[loader][ownership]") {
  ModuleCopy m("testmod_good_extra", "plugins");
  REQUIRE(::chmod(m.file.c_str(), 0664) == 0);
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(m.file, rt));
  CHECK_THAT(reason_for(rt.loader(), m.file),
             Catch::Contains("file " + m.file.string() + " is writable by its group (mode 0664)"));
  REQUIRE(::chmod(m.file.c_str(), 0644) == 0);
  REQUIRE(::chmod(m.file.parent_path().c_str(), 0775) == 0);
  rt.loader().load_directory(m.file.parent_path(), rt);
  CHECK_THAT(reason_for(rt.loader(), m.file.parent_path()), Catch::Contains("is writable by its group (mode 0775)"));
  CHECK(rt.loader().modules().empty());
}

TEST_CASE("a module or directory owned by another user is refused", "[loader][ownership]") {
  if (::geteuid() != 0) {
    WARN("not root: cannot give a file to another user; skipped");
    return;
  }
  ModuleCopy m("testmod_good_extra", "plugins");
  REQUIRE(::chown(m.file.c_str(), 4242, 4242) == 0);
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(m.file, rt));
  CHECK_THAT(reason_for(rt.loader(), m.file), Catch::Contains("file " + m.file.string() + " is owned by uid 4242"));
  REQUIRE(::chown(m.file.c_str(), 0, 0) == 0);
  REQUIRE(::chown(m.file.parent_path().c_str(), 4242, 4242) == 0);
  host::Runtime again(spdlog::default_logger(), 1);
  CHECK_FALSE(again.loader().load_file(m.file, again));
  CHECK(again.loader().modules().empty());
  CHECK_THAT(reason_for(again.loader(), m.file),
             Catch::Contains("directory " + fs::canonical(m.file.parent_path()).string() + " is owned by uid 4242"));
  CHECK(rt.loader().modules().empty());
}

TEST_CASE("a symbolic link to a module is refused", "[loader][ownership]") {
  ModuleCopy m("testmod_good_extra");
  const auto link = m.dir.path() / "link.so";
  fs::create_symlink(m.file, link);
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(link, rt));
  CHECK_THAT(reason_for(rt.loader(), link), Catch::Contains("symbolic link"));
}

TEST_CASE("a module without the entry alias is refused before any of its code runs", "[loader]") {
  TempDir dir;
  const auto marker = dir.path() / "constructor-ran";
  REQUIRE(::setenv("CLUSTERCONNECT_TEST_ENTRYLESS_MARKER", marker.c_str(), 1) == 0);
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(test_module("testmod_constructor_no_entry"), rt));
  CHECK_THAT(reason_for(rt.loader(), test_module("testmod_constructor_no_entry")),
             Catch::Contains("no entry point: the alias clusterconnect_plugin_v1 is missing"));
  CHECK_FALSE(fs::exists(marker));
  CHECK_FALSE(host::inspect_module(test_module("testmod_constructor_no_entry")).ok());
  CHECK_FALSE(fs::exists(marker));
  // The marker works: mapping the module runs its constructor.
  void* h = ::dlopen(test_module("testmod_constructor_no_entry").c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE(h != nullptr);
  CHECK(fs::exists(marker));
  ::dlclose(h);
  ::unsetenv("CLUSTERCONNECT_TEST_ENTRYLESS_MARKER");
}

TEST_CASE("daemons load only their installed directory, the CLI also the user directories", "[loader][search]") {
  TempDir data;
  ModuleCopy extra("testmod_good_extra");
  REQUIRE(::setenv("CONNECTEDK8S_PLUGIN_PATH", extra.dir.path().c_str(), 1) == 0);
  REQUIRE(::setenv("XDG_DATA_HOME", data.path().c_str(), 1) == 0);

  const auto installed = host::plugin_search_path(host::PluginSearch::installed_only);
  CHECK(installed == std::vector<fs::path>{host::installed_plugin_dir()});
  CHECK(host::plugin_search_path() == installed);  // the default is the daemons' one
  const auto user = host::plugin_search_path(host::PluginSearch::user_dirs);
  CHECK(user == std::vector<fs::path>{host::installed_plugin_dir(), extra.dir.path(),
                                      data.path() / "connectedk8s" / "plugins"});

  {
    host::Runtime rt(spdlog::default_logger(), 1);
    rt.load_plugins();
    CHECK(rt.capabilities().provider("credential:static-test") == nullptr);
  }
  {
    host::Runtime rt(spdlog::default_logger(), 1);
    rt.load_plugins(host::PluginSearch::user_dirs);
    CHECK(rt.capabilities().provider("credential:static-test") != nullptr);
  }
  ::unsetenv("CONNECTEDK8S_PLUGIN_PATH");
  ::unsetenv("XDG_DATA_HOME");
}

TEST_CASE("a directory reached through a symbolic link is checked where it really is", "[loader][ownership]") {
  ModuleCopy m("testmod_good_extra", "shared/mine");
  const auto shared = m.dir.path() / "shared";
  REQUIRE(::chmod(shared.c_str(), 0777) == 0);
  // A safe-looking path whose directory is a link into the shared directory.
  TempDir other;
  fs::permissions(other.path(), fs::perms::owner_all, fs::perm_options::replace);
  fs::create_directory_symlink(m.file.parent_path(), other.path() / "plugins");
  const auto via_link = other.path() / "plugins" / m.file.filename();
  host::Runtime rt(spdlog::default_logger(), 1);
  CHECK_FALSE(rt.loader().load_file(via_link, rt));
  CHECK_THAT(reason_for(rt.loader(), via_link), Catch::Contains("directory " + fs::canonical(shared).string() +
                                                                 " is writable by other users"));
  CHECK(rt.loader().modules().empty());
}
