// The connectedk8s binary as a user runs it: version, plugin list/info,
// install/remove, and the proxy command's flags coming from its module.

#include <catch2/catch.hpp>

#include <fstream>

#include <nlohmann/json.hpp>

#include "../../support/test_env.hpp"

namespace fs = std::filesystem;
using namespace clusterconnect::test;

namespace {

struct Cli {
  TempDir home;
  std::string operator()(const std::string& args, int expect_status = 0) const {
    auto r = run_status(args);
    INFO(r.output);
    CHECK(r.status == expect_status);
    return r.output;
  }
  CommandResult run_status(const std::string& args) const {
    std::string cmd = "env -u CONNECTEDK8S_PLUGIN_PATH HOME=" + quote(home.path().string()) +
                      " XDG_DATA_HOME=" + quote((home.path() / "data").string()) + " " +
                      quote((stage_dir() / "bin" / "connectedk8s").string()) + " " + args;
    return run(cmd);
  }
  fs::path user_plugins() const { return home.path() / "data" / "connectedk8s" / "plugins"; }
};

fs::path test_module(const char* name) { return fs::path(TEST_MODULE_DIR) / (std::string(name) + ".so"); }

}  // namespace

TEST_CASE("connectedk8s --version prints the version", "[cli]") {
  Cli cli;
  CHECK_THAT(cli("--version"), Catch::StartsWith("connectedk8s 0."));
}

TEST_CASE("plugin list shows the seven modules, as a table and as JSON", "[cli]") {
  Cli cli;
  auto table = cli("plugin list");
  for (auto name : {"proxy", "kubeconfig", "auth-entra", "auth-oidc", "tunnel-tls", "tunnel-ws"})
    CHECK_THAT(table, Catch::Contains(name));
  CHECK_THAT(table, Catch::Contains("transport:ws"));
  CHECK_THAT(table, Catch::Contains("transport:tls"));
  CHECK_THAT(table, Catch::Contains("authenticator:oidc"));
  CHECK_THAT(table, Catch::Contains("authenticator:entra"));
  auto j = nlohmann::json::parse(cli("plugin list -o json"));
  CHECK(j["modules"].size() == 7);
  CHECK(j["refused"].empty());
  auto info = nlohmann::json::parse(cli("plugin info tunnel-ws -o json"));
  CHECK(info["capabilities"] == nlohmann::json::array({"transport:ws"}));
  CHECK_THAT(info["path"].get<std::string>(), Catch::EndsWith("tunnel-ws.so"));
  CHECK_THAT(cli("plugin info nosuch", 1), Catch::Contains("no module named 'nosuch'"));
}

TEST_CASE("proxy --help shows flags that come from the proxy module", "[cli]") {
  Cli cli;
  auto help = cli("proxy --help");
  for (auto flag : {"--name", "--resource-group", "--token", "--file", "--port", "--kube-context"})
    CHECK_THAT(help, Catch::Contains(flag));

  // Without the module the host has no such command: the same binary, in a
  // tree whose plugin directory lacks proxy.so.
  TempDir tree;
  fs::create_directories(tree.path() / "bin");
  fs::create_directories(tree.path() / "lib" / "connectedk8s" / "plugins");
  fs::copy_file(stage_dir() / "bin" / "connectedk8s", tree.path() / "bin" / "connectedk8s");
  for (const auto& e : fs::directory_iterator(stage_dir() / "lib"))
    if (e.is_regular_file()) fs::copy_file(e.path(), tree.path() / "lib" / e.path().filename());
  for (const auto& e : fs::directory_iterator(stage_dir() / "lib" / "connectedk8s" / "plugins"))
    if (e.path().filename() != "proxy.so")
      fs::copy_file(e.path(), tree.path() / "lib" / "connectedk8s" / "plugins" / e.path().filename());
  const std::string without = "env -u CONNECTEDK8S_PLUGIN_PATH HOME=" + quote(cli.home.path().string()) +
                              " XDG_DATA_HOME=" + quote((cli.home.path() / "data").string()) + " " +
                              quote((tree.path() / "bin" / "connectedk8s").string());
  auto list = run(without + " plugin list");
  INFO(list.output);
  REQUIRE(list.status == 0);
  CHECK_THAT(list.output, Catch::Contains("tunnel-ws"));
  CHECK_THAT(list.output, !Catch::Contains("proxy"));
  CHECK_THAT(cli("--help"), Catch::Contains("proxy"));  // with the module, the command is listed
  auto help_without = run(without + " --help");
  INFO(help_without.output);
  CHECK(help_without.status == 0);
  CHECK_THAT(help_without.output, !Catch::Contains("proxy"));
  auto r = run(without + " proxy -n demo -g sandbox");
  INFO(r.output);
  CHECK(r.status == 2);
  CHECK_THAT(r.output, !Catch::Contains("--resource-group"));
  CHECK_THAT(r.output, Catch::Contains("'proxy' is not a command here"));
  CHECK_THAT(r.output, Catch::Contains("connectedk8s plugin list"));
  CHECK_THAT(cli("-v --log-format json nosuch", 2), Catch::Contains("'nosuch' is not a command here"));
}

TEST_CASE("installing a broken module prints the precise reason and changes nothing", "[cli]") {
  Cli cli;
  TempDir tmp;
  auto text = tmp.path() / "broken.so";
  std::ofstream(text) << "not a library";
  CHECK_THAT(cli("plugin install " + quote(text.string()), 1), Catch::Contains("not an ELF shared object"));
  CHECK_THAT(cli("plugin install " + quote(test_module("testmod_wrong_abi").string()), 1), Catch::Contains("ABI mismatch"));
  CHECK_THAT(cli("plugin install " + quote(test_module("testmod_missing_alias").string()), 1),
             Catch::Contains("no entry point"));
  CHECK_THAT(cli("plugin install " + quote(test_module("testmod_duplicate_capability").string()), 1),
             Catch::Contains("capability transport:ws is already provided"));
  CHECK_THAT(cli("plugin install --sha256 00ff " + quote(test_module("testmod_good_extra").string()), 1),
             Catch::Contains("SHA-256 mismatch"));
  CHECK_FALSE(fs::exists(cli.user_plugins()));
}

TEST_CASE("install verifies the hash, refuses to overwrite without --force, and remove undoes it", "[cli]") {
  Cli cli;
  auto mod = test_module("testmod_good_extra");
  auto sha = run("sha256sum " + quote(mod.string()) + " | cut -d' ' -f1").output;
  sha.erase(sha.find_last_not_of("\n") + 1);
  CHECK_THAT(cli("plugin install --sha256 " + sha + " " + quote(mod.string())), Catch::Contains("installed extra 1.2.3"));
  CHECK(fs::exists(cli.user_plugins() / "extra.so"));
  CHECK_THAT(cli("plugin list"), Catch::Contains("credential:static-test"));
  CHECK_THAT(cli("plugin install " + quote(mod.string()), 1), Catch::Contains("--force"));
  CHECK_THAT(cli("plugin install --force " + quote(mod.string())), Catch::Contains("installed extra"));
  CHECK_THAT(cli("plugin remove tunnel-ws", 1), Catch::Contains("was not installed with 'plugin install'"));
  CHECK_THAT(cli("plugin remove extra"), Catch::Contains("removed extra"));
  CHECK_FALSE(fs::exists(cli.user_plugins() / "extra.so"));
}

// Install reads the source once into a private copy; the hash, the checks and
// the load use that copy, which is renamed into place.
#include <stdlib.h>
#include <sys/stat.h>

namespace {
std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
    out.push_back(it->path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

TEST_CASE("install with a wrong --sha256 leaves nothing behind, a right one installs exactly those bytes", "[cli][install]") {
  Cli cli;
  auto mod = test_module("testmod_good_extra");
  fs::create_directories(cli.user_plugins());
  CHECK_THAT(cli("plugin install --sha256 " + std::string(64, '0') + " " + quote(mod.string()), 1),
             Catch::Contains("SHA-256 mismatch"));
  CHECK(entries(cli.user_plugins()).empty());  // no copy left over

  auto sha = run("sha256sum " + quote(mod.string()) + " | cut -d' ' -f1").output;
  sha.erase(sha.find_last_not_of("\n") + 1);
  CHECK_THAT(cli("plugin install --sha256 " + sha + " " + quote(mod.string())), Catch::Contains("installed extra 1.2.3"));
  CHECK(entries(cli.user_plugins()) == std::vector<std::string>{"extra.so"});
  CHECK(file_bytes(cli.user_plugins() / "extra.so") == file_bytes(mod));
  struct stat st {};
  REQUIRE(::stat((cli.user_plugins() / "extra.so").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0644);
}

TEST_CASE("installing a module without the entry point runs none of its code and changes nothing", "[cli][install]") {
  Cli cli;
  TempDir dir;
  const auto marker = dir.path() / "constructor-ran";
  REQUIRE(::setenv("CLUSTERCONNECT_TEST_ENTRYLESS_MARKER", marker.c_str(), 1) == 0);
  CHECK_THAT(cli("plugin install " + quote(test_module("testmod_constructor_no_entry").string()), 1),
             Catch::Contains("no entry point"));
  ::unsetenv("CLUSTERCONNECT_TEST_ENTRYLESS_MARKER");
  CHECK_FALSE(fs::exists(marker));
  CHECK_FALSE(fs::exists(cli.user_plugins()));
}
