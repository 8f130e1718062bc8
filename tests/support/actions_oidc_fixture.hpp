#pragma once
// Starts the stand-in for the GitHub Actions runner's OIDC token endpoint
// (tests/fixtures/actions-oidc/server.js) for one test, waits for its ready
// file, and stops it by PID. Links auth_common (the admin calls use its
// HTTP client).

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "http_client.hpp"
#include "node_fixture.hpp"
#include "test_env.hpp"

namespace clusterconnect::test {

class ActionsOidcStandIn {
 public:
  // `name` keeps the files of two stand-ins in one directory apart.
  explicit ActionsOidcStandIn(const std::filesystem::path& dir, const std::string& name = "actions-oidc") : dir_(dir), name_(name) {
    const auto script = source_dir() / "tests" / "fixtures" / "actions-oidc" / "server.js";
    const auto ready = dir / (name + "-ready.json");
    process_.start({script.string(), "--port", "0", "--ready-file", ready.string(), "--admin"}, ready, dir / (name + ".log"), [] {});
    ready_ = nlohmann::json::parse(slurp_file(ready));
  }

  std::string issuer() const { return ready_["issuer"]; }
  std::string request_url() const { return ready_["request_url"]; }
  std::string request_token() const { return ready_["request_token"]; }
  std::string subject() const { return ready_["subject"]; }
  std::string log() const { return slurp_file(dir_ / (name_ + ".log")); }

  // Replaces the job's settings: {"repository","ref","environment","subject","ttl","answer"}.
  nlohmann::json set_job(const nlohmann::json& job) const { return admin("job", job); }
  int id_token_requests() const { return admin("state", nullptr)["id_token_requests"].get<int>(); }

 private:
  nlohmann::json admin(const std::string& path, const nlohmann::json& body) const {
    auth::HttpPolicy policy;
    policy.allow_http_loopback = true;
    policy.max_attempts = 1;
    auth::HttpClient http(policy);
    const std::string url = issuer() + "/__admin/" + path;
    auto r = body.is_null() ? http.get(url) : http.post_json(url, body.dump());
    if (!r) throw std::runtime_error("actions-oidc admin " + path + ": " + r.error());
    if (r->status != 200) throw std::runtime_error("actions-oidc admin " + path + ": HTTP " + std::to_string(r->status));
    return nlohmann::json::parse(r->body);
  }

  std::filesystem::path dir_;
  std::string name_;
  NodeFixture process_;
  nlohmann::json ready_;
};

// Sets an environment variable for one scope and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace clusterconnect::test
