// The proxies a user runs: state files in a private runtime directory, stale
// ones from dead processes dropped, which second proxy collides with a running
// one, and `proxy status` as text and JSON.

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "../../support/test_env.hpp"
#include "proxy_status.hpp"
#include "running_proxies.hpp"

using namespace clusterconnect::proxy;
namespace fs = std::filesystem;

namespace {

const std::string sub = "00000000-0000-0000-0000-00000000c0de";
const std::string endpoint = "https://127.0.0.1:8443";

RunningProxy serving(pid_t pid, const std::string& kubeconfig, unsigned port,
                     std::vector<std::pair<std::string, std::string>> clusters) {
  RunningProxy p;
  p.pid = pid;
  p.process_start = process_start_time(pid);
  p.started = 1700000000;
  p.state = "ready";
  p.endpoint = endpoint;
  p.kubeconfig = kubeconfig;
  p.port = port;
  unsigned next = port;
  for (auto& [group, name] : clusters)
    p.clusters.push_back({{sub, group, name}, name, "https://127.0.0.1:" + std::to_string(next++)});
  return p;
}

// A PID that was just used and whose process is gone.
pid_t dead_pid() {
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return child;
}

}  // namespace

TEST_CASE("a second proxy for a served cluster into the same kubeconfig is refused naming pid and address",
          "[proxy][running]") {
  std::vector<RunningProxy> running{serving(4242, "/home/u/.kube/config", 47011, {{"sandbox", "demo"}, {"sandbox", "second"}})};
  auto c = collision(running, endpoint, {{sub, "SANDBOX", "Second"}}, "/home/u/.kube/config", 0);
  REQUIRE(c);
  CHECK(c->find("cluster sandbox/second") != std::string::npos);
  CHECK(c->find("pid 4242") != std::string::npos);
  CHECK(c->find("https://127.0.0.1:47012") != std::string::npos);
  CHECK(c->find("context second in /home/u/.kube/config") != std::string::npos);
}

TEST_CASE("a second proxy for a served cluster on the same port is refused instead of failing on the port",
          "[proxy][running]") {
  std::vector<RunningProxy> running{serving(4242, "/tmp/a/kubeconfig", 47011, {{"sandbox", "demo"}})};
  auto c = collision(running, endpoint + "/", {{sub, "sandbox", "demo"}}, "/tmp/b/kubeconfig", 47011);
  REQUIRE(c);
  CHECK(c->find("pid 4242") != std::string::npos);
  CHECK(c->find("--port") != std::string::npos);
}

TEST_CASE("proxies with their own kubeconfig and port or for other clusters run side by side", "[proxy][running]") {
  std::vector<RunningProxy> running{serving(4242, "/tmp/a/kubeconfig", 47011, {{"sandbox", "demo"}})};
  CHECK_FALSE(collision(running, endpoint, {{sub, "sandbox", "demo"}}, "/tmp/b/kubeconfig", 0));
  CHECK_FALSE(collision(running, endpoint, {{sub, "sandbox", "demo"}}, "", 0));  // -f - or -- COMMAND
  CHECK_FALSE(collision(running, endpoint, {{sub, "other", "demo"}}, "/tmp/a/kubeconfig", 47011));
  CHECK_FALSE(collision(running, "https://relay.example:443", {{sub, "sandbox", "demo"}}, "/tmp/a/kubeconfig", 47011));
  CHECK_FALSE(collision(running, endpoint, {{"another-subscription", "sandbox", "demo"}}, "/tmp/a/kubeconfig", 47011));
  // A command's private kubeconfig is no one else's.
  running[0].private_kubeconfig = true;
  CHECK_FALSE(collision(running, endpoint, {{sub, "sandbox", "demo"}}, "/tmp/a/kubeconfig", 0));
}

TEST_CASE("the runtime directory is private and lists only live proxies", "[proxy][running]") {
  clusterconnect::test::TempDir tmp;
  ::chmod(tmp.path().c_str(), 0700);
  auto dir = RuntimeDirectory::open(tmp.path());
  REQUIRE(dir);
  struct stat st {};
  REQUIRE(::stat(dir->path().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);

  auto me = serving(::getpid(), "/tmp/k", 47011, {{"sandbox", "demo"}});
  REQUIRE(dir->write(me));
  REQUIRE(::stat((dir->path() / (std::to_string(me.pid) + ".json")).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  auto gone = serving(dead_pid(), "/tmp/k2", 47020, {{"sandbox", "gone"}});
  gone.process_start = "12345";
  REQUIRE(dir->write(gone));
  // This process's PID with another start time: a reused PID, not that proxy.
  auto reused = serving(::getppid(), "/tmp/k3", 47030, {{"sandbox", "reused"}});
  reused.process_start = "1";
  REQUIRE(dir->write(reused));

  auto running = dir->running();
  REQUIRE(running.size() == 1);
  CHECK(running[0].pid == ::getpid());
  CHECK(running[0].clusters.at(0).ref.name == "demo");
  CHECK_FALSE(fs::exists(dir->path() / (std::to_string(gone.pid) + ".json")));
  CHECK_FALSE(fs::exists(dir->path() / (std::to_string(reused.pid) + ".json")));
}

TEST_CASE("a proxy's own record is removed when it ends", "[proxy][running]") {
  clusterconnect::test::TempDir tmp;
  auto dir = RuntimeDirectory::open(tmp.path());
  REQUIRE(dir);
  {
    OwnRecord record(dir.value(), serving(::getpid(), "/tmp/k", 47011, {{"sandbox", "demo"}}));
    REQUIRE(record.update());
    CHECK(dir->running().size() == 1);
    auto lock = dir->lock();
    REQUIRE(lock);
  }
  CHECK(dir->running().empty());
  CHECK(dir->lock());  // released with its holder
}

TEST_CASE("a runtime directory others may read or that is a link is refused", "[proxy][running]") {
  clusterconnect::test::TempDir tmp;
  fs::create_directories(tmp.path() / "open" / "connectedk8s");
  ::chmod((tmp.path() / "open" / "connectedk8s").c_str(), 0755);
  auto open_dir = RuntimeDirectory::open(tmp.path() / "open");
  REQUIRE_FALSE(open_dir);
  INFO(open_dir.error());
  CHECK(open_dir.error().find("0755") != std::string::npos);

  fs::create_directories(tmp.path() / "elsewhere");
  ::chmod((tmp.path() / "elsewhere").c_str(), 0700);
  fs::create_directories(tmp.path() / "linked");
  fs::create_directory_symlink(tmp.path() / "elsewhere", tmp.path() / "linked" / "connectedk8s");
  CHECK_FALSE(RuntimeDirectory::open(tmp.path() / "linked"));
}

TEST_CASE("proxy status shows pid clusters addresses and contexts as text and json", "[proxy][running]") {
  CHECK(status_text({}) == "no connectedk8s proxy is running\n");
  std::vector<RunningProxy> running{serving(4242, "/home/u/.kube/config", 47011, {{"sandbox", "demo"}, {"prod", "second"}})};
  const auto text = status_text(running);
  CHECK(text.rfind("PID", 0) == 0);
  CHECK(text.find("4242") != std::string::npos);
  CHECK(text.find("sandbox/demo") != std::string::npos);
  CHECK(text.find("prod/second") != std::string::npos);
  CHECK(text.find("https://127.0.0.1:47012") != std::string::npos);
  CHECK(text.find("/home/u/.kube/config") != std::string::npos);

  const auto j = status_json(running);
  REQUIRE(j.at("proxies").size() == 1);
  const auto& p = j["proxies"][0];
  CHECK(p.at("pid") == 4242);
  CHECK(p.at("kubeconfig") == "/home/u/.kube/config");
  REQUIRE(p.at("clusters").size() == 2);
  CHECK(p["clusters"][1].at("resourceGroup") == "prod");
  CHECK(p["clusters"][1].at("context") == "second");
  CHECK(p["clusters"][1].at("server") == "https://127.0.0.1:47012");
  auto back = running_proxy_from_json(to_json(running[0]));
  REQUIRE(back);
  CHECK(back->clusters.at(1).ref.name == "second");
}
