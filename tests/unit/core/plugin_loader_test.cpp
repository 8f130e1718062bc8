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

TEST_CASE("the four real modules load and register their capabilities", "[loader]") {
  host::Runtime rt(spdlog::default_logger(), 1);
  rt.loader().load_directory(real_plugins(), rt);
  CHECK(rt.loader().rejections().empty());
  std::vector<std::string> names;
  for (const auto& m : rt.loader().modules()) names.push_back(m.name);
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"auth-entra", "kubeconfig", "proxy", "tunnel-ws"});
  CHECK(rt.capabilities().provider("transport:ws") != nullptr);
  CHECK(rt.capabilities().provider("command:proxy") != nullptr);
  CHECK(rt.capabilities().provider("kubeconfig:yaml") != nullptr);
  CHECK(rt.capabilities().provider("authenticator:entra") != nullptr);
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
