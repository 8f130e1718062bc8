// client-go's FILE.lock: waiting for another writer, giving up with a clear
// message, and concurrent writers that lose no update.

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>

#include "../../support/test_env.hpp"
#include "kubeconfig_test_support.hpp"
#include "yaml_kubeconfig.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace clusterconnect;
using namespace clusterconnect::kubeconfig;
using namespace clusterconnect::kubeconfig::test;
using clusterconnect::test::TempDir;

namespace {

void hold_lock(const fs::path& file) {
  const int fd = ::open((file.string() + ".lock").c_str(), O_RDONLY | O_CREAT | O_EXCL, 0);
  REQUIRE(fd >= 0);
  ::close(fd);
}

KubeconfigOptions patient() {
  KubeconfigOptions o;
  o.lock_timeout = 60s;  // several writers queue behind one another
  o.lock_retry_interval = 2ms;
  return o;
}

void check_all_entries(const fs::path& file, int writers, int merges) {
  const YAML::Node root = YAML::LoadFile(file.string());
  CHECK(root["clusters"].size() == static_cast<std::size_t>(writers * merges));
  CHECK(root["users"].size() == static_cast<std::size_t>(writers * merges));
  CHECK(root["contexts"].size() == static_cast<std::size_t>(writers * merges));
  int missing = 0;
  for (int w = 0; w < writers; ++w)
    for (int i = 0; i < merges; ++i) {
      const std::string name = "w" + std::to_string(w) + "-" + std::to_string(i);
      if (named(root, "users", name + "-user")["user"]["token"].Scalar() != "secret-" + name) ++missing;
      if (count_named(root, "clusters", name) != 1 || count_named(root, "contexts", name) != 1) ++missing;
    }
  CHECK(missing == 0);
  CHECK(listing(file.parent_path()) == std::vector<std::string>{"config"});
}

}  // namespace

TEST_CASE("kubeconfig: merge waits while FILE.lock exists and proceeds once it is gone", "[kubeconfig][lock]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, "apiVersion: v1\nkind: Config\n");
  hold_lock(file);

  KubeconfigOptions o;
  o.lock_timeout = 10s;
  o.lock_retry_interval = 10ms;
  YamlKubeconfig kc(o);
  auto merged = std::async(std::launch::async, [&] { return kc.merge(file, arc_entry()); });

  CHECK(merged.wait_for(400ms) == std::future_status::timeout);
  CHECK(slurp(file) == "apiVersion: v1\nkind: Config\n");
  fs::remove(file.string() + ".lock");

  REQUIRE(merged.wait_for(5s) == std::future_status::ready);
  auto r = merged.get();
  REQUIRE(r.ok());
  CHECK(named(YAML::LoadFile(file.string()), "users", "arc-user")["user"]["token"].Scalar() == "secret-arc");
  CHECK(listing(tmp.path()) == std::vector<std::string>{"config"});
}

TEST_CASE("kubeconfig: merge gives up on a lock that stays, and leaves it and the file alone", "[kubeconfig][lock]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  const std::string content = "apiVersion: v1\nkind: Config\n";
  spit(file, content);
  hold_lock(file);

  KubeconfigOptions o;
  o.lock_timeout = 200ms;
  o.lock_retry_interval = 10ms;
  YamlKubeconfig kc(o);
  const auto start = std::chrono::steady_clock::now();
  auto r = kc.merge(file, arc_entry());
  const auto took = std::chrono::steady_clock::now() - start;

  REQUIRE_FALSE(r.ok());
  INFO(r.error());
  CHECK(r.error().rfind("cannot update " + file.string() + ": ", 0) == 0);
  CHECK(r.error().find(file.string() + ".lock exists") != std::string::npos);
  CHECK(r.error().find("delete " + file.string() + ".lock and retry") != std::string::npos);
  CHECK(took >= 200ms);
  CHECK(took < 5s);
  CHECK(slurp(file) == content);
  // Never break a lock another writer may still hold.
  CHECK(listing(tmp.path()) == std::vector<std::string>{"config", "config.lock"});

  auto removed = kc.remove(file, "arc", "arc-user", "arc");
  REQUIRE_FALSE(removed.ok());
  CHECK(removed.error().find(".lock exists") != std::string::npos);
}

TEST_CASE("kubeconfig: the lock is released after a failed update", "[kubeconfig][lock]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, "clusters: [\n");
  KubeconfigOptions o;
  o.lock_timeout = 200ms;
  YamlKubeconfig kc(o);
  REQUIRE_FALSE(kc.merge(file, arc_entry()).ok());
  CHECK_FALSE(fs::exists(file.string() + ".lock"));
}

TEST_CASE("kubeconfig: threads merging different entries at once lose no update", "[kubeconfig][lock][concurrency]") {
  constexpr int writers = 8;
  constexpr int merges = 20;
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  std::string first_error;
  std::mutex error_mutex;
  for (int w = 0; w < writers; ++w)
    threads.emplace_back([&, w] {
      YamlKubeconfig kc(patient());  // one instance each, as separate processes would have
      for (int i = 0; i < merges; ++i) {
        auto r = kc.merge(file, arc_entry("w" + std::to_string(w) + "-" + std::to_string(i)));
        if (!r.ok()) {
          ++failures;
          std::lock_guard<std::mutex> g(error_mutex);
          first_error = r.error();
        }
      }
    });
  for (auto& t : threads) t.join();
  INFO(first_error);
  CHECK(failures == 0);
  check_all_entries(file, writers, merges);
}

TEST_CASE("kubeconfig: processes merging different entries at once lose no update", "[kubeconfig][lock][concurrency]") {
  constexpr int writers = 8;
  constexpr int merges = 20;
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  std::vector<pid_t> children;
  for (int w = 0; w < writers; ++w) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      YamlKubeconfig kc(patient());
      int failed = 0;
      for (int i = 0; i < merges; ++i)
        if (!kc.merge(file, arc_entry("w" + std::to_string(w) + "-" + std::to_string(i))).ok()) ++failed;
      ::_exit(failed == 0 ? 0 : 1);
    }
    children.push_back(pid);
  }
  int failed_children = 0;
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed_children;
  }
  CHECK(failed_children == 0);
  check_all_entries(file, writers, merges);
}
