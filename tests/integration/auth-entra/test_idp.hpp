#pragma once
// Starts the test identity provider (tests/fixtures/idp/server.js) for one
// test, waits for its ready file, and stops it by PID.

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <fcntl.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../support/test_env.hpp"
#include "http_client.hpp"

extern char** environ;

namespace clusterconnect::entra::test {

inline const std::string idp_tenant = "0f2b5a44-7d1e-4c39-9b7a-2c8e1f3d4a56";

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::filesystem::path source_tree() { return clusterconnect::test::source_dir(); }

class TestIdp {
 public:
  // Empty when the fixture's npm dependencies are not installed.
  static std::optional<std::string> unavailable() {
    auto modules = source_tree() / "tests" / "fixtures" / "node_modules" / "oidc-provider";
    if (!std::filesystem::exists(modules)) {
      return "tests/fixtures/node_modules is missing (run scripts/setup.sh, which runs npm ci in tests/fixtures)";
    }
    return std::nullopt;
  }

  // `tls`: serve HTTPS with a certificate from a private CA (state()["tls_ca_file"]).
  explicit TestIdp(const std::filesystem::path& dir, const nlohmann::json& config = nullptr, bool tls = false) : dir_(dir) {
    const auto script = source_tree() / "tests" / "fixtures" / "idp" / "server.js";
    const auto ready = dir / "idp-ready.json";
    std::vector<std::string> args = {"node", script.string(), "--port", "0", "--tenant", idp_tenant, "--ready-file", ready.string(),
                                     "--state-dir", (dir / "idp-state").string(), "--admin"};
    if (tls) args.push_back("--tls");
    if (!config.is_null()) {
      std::ofstream(dir / "idp-config.json") << config.dump();
      args.push_back("--config");
      args.push_back((dir / "idp-config.json").string());
    }
    // A start that stalls (seen once on a loaded runner, node alive and
    // silent) is given one fresh try before the test fails.
    std::string first_log;
    for (int attempt = 1;; ++attempt) {
      if (launch(args, ready)) break;
      const std::string log = slurp(dir / "idp.log");
      stop();  // the destructor does not run when the constructor throws
      if (attempt == 2)
        throw std::runtime_error("test IdP did not become ready within 60 s, twice; first log: " + first_log +
                                 "; second log: " + log);
      first_log = log;
      std::fprintf(stderr, "test IdP did not become ready within 60 s; starting it once more (its log: %s)\n",
                   log.c_str());
      std::error_code ignored;
      std::filesystem::remove_all(dir / "idp-state", ignored);
      std::filesystem::remove(ready, ignored);
    }
    try {
      ready_ = nlohmann::json::parse(slurp(ready));
      state_ = nlohmann::json::parse(slurp(dir / "idp-state" / "state.json"));
    } catch (...) {
      stop();
      throw;
    }
  }

  ~TestIdp() { stop(); }

 private:
  // Starts node; true once it wrote its ready file, false after 60 s.
  bool launch(std::vector<std::string> args, const std::filesystem::path& ready) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = (dir_ / "idp.log").string();
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (posix_spawnp(&pid_, "node", &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    if (pid_ <= 0) throw std::runtime_error("could not start node");
    // Startup generates RSA keys and certificates; on a busy 2-core runner
    // that can take a while.
    for (int i = 0; i < 1200 && !std::filesystem::exists(ready); ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("test IdP exited early: " + slurp(log));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return std::filesystem::exists(ready);
  }

 public:

  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
  }

  std::string authority() const { return ready_["authority"]; }
  std::string issuer() const { return ready_["issuer"]; }
  std::string tenant() const { return state_["tenant"]; }
  std::string token_endpoint() const { return state_["token_endpoint"]; }
  std::string ca_file() const { return state_.value("tls_ca_file", std::string()); }
  const nlohmann::json& state() const { return state_; }
  std::string log() const { return slurp(dir_ / "idp.log"); }

  // POST /__admin/<path> with a JSON body; GET when `body` is null.
  nlohmann::json admin(const std::string& path, const nlohmann::json& body = nlohmann::json::object()) const {
    auth::HttpPolicy policy;
    policy.allow_http_loopback = true;
    policy.ca_file = ca_file();
    policy.max_attempts = 1;
    policy.total_timeout = std::chrono::seconds(30);
    auth::HttpClient http(policy);
    const std::string url = authority() + "/__admin/" + path;
    auto r = body.is_null() ? http.get(url) : http.post_json(url, body.dump());
    if (!r) throw std::runtime_error("admin " + path + ": " + r.error());
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    if (r->status != 200) throw std::runtime_error("admin " + path + ": HTTP " + std::to_string(r->status) + " " + r->body);
    return j;
  }

 private:
  std::filesystem::path dir_;
  pid_t pid_ = -1;
  nlohmann::json ready_;
  nlohmann::json state_;
};

}  // namespace clusterconnect::entra::test
