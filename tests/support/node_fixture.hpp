#pragma once
// Runs a Node.js test fixture (tests/fixtures/...) for one test: starts it
// with its output in a log file, waits for the ready file it writes once
// listening, and stops it by PID.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace clusterconnect::test {

inline std::string slurp_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Why the fixtures cannot run, or empty: their npm dependencies must be installed.
inline std::optional<std::string> fixture_modules_unavailable(const std::filesystem::path& source_tree) {
  if (!std::filesystem::exists(source_tree / "tests" / "fixtures" / "node_modules" / "oidc-provider"))
    return "tests/fixtures/node_modules is missing (run scripts/setup.sh, which runs npm ci in tests/fixtures)";
  return std::nullopt;
}

class NodeFixture {
 public:
  NodeFixture() = default;
  NodeFixture(const NodeFixture&) = delete;
  NodeFixture& operator=(const NodeFixture&) = delete;
  ~NodeFixture() { stop(); }

  // `args` start with the script; the fixture must write `ready` once it
  // listens. A start that stalls (seen once on a loaded runner, node alive
  // and silent) is given one fresh try, after `reset` cleared its state.
  void start(std::vector<std::string> args, const std::filesystem::path& ready, const std::filesystem::path& log,
             const std::function<void()>& reset) {
    log_ = log;
    args.insert(args.begin(), "node");
    std::string first_log;
    for (int attempt = 1;; ++attempt) {
      if (launch(args, ready)) return;
      const std::string text = slurp_file(log);
      stop();
      if (attempt == 2)
        throw std::runtime_error("test fixture " + args[1] + " did not become ready within 60 s, twice; first log: " +
                                 first_log + "; second log: " + text);
      first_log = text;
      std::fprintf(stderr, "test fixture did not become ready within 60 s; starting it once more (its log: %s)\n",
                   text.c_str());
      reset();
      std::error_code ignored;
      std::filesystem::remove(ready, ignored);
    }
  }

  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
  }

 private:
  // Starts node; true once it wrote its ready file, false after 60 s.
  bool launch(std::vector<std::string> args, const std::filesystem::path& ready) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = log_.string();
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (posix_spawnp(&pid_, "node", &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    if (pid_ <= 0) throw std::runtime_error("could not start node");
    // Startup generates keys (and certificates); on a busy 2-core runner
    // that can take a while.
    for (int i = 0; i < 1200 && !std::filesystem::exists(ready); ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("test fixture exited early: " + slurp_file(log_));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return std::filesystem::exists(ready);
  }

  std::filesystem::path log_;
  pid_t pid_ = -1;
};

}  // namespace clusterconnect::test
