#pragma once
// Starts the test identity provider (tests/fixtures/idp/server.js) for one
// test, waits for its ready file, and stops it by PID.

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../support/node_fixture.hpp"
#include "../../support/test_env.hpp"
#include "http_client.hpp"

namespace clusterconnect::entra::test {

inline const std::string idp_tenant = "0f2b5a44-7d1e-4c39-9b7a-2c8e1f3d4a56";

inline std::string slurp(const std::filesystem::path& p) { return clusterconnect::test::slurp_file(p); }

inline std::filesystem::path source_tree() { return clusterconnect::test::source_dir(); }

class TestIdp {
 public:
  // Empty when the fixture's npm dependencies are not installed.
  static std::optional<std::string> unavailable() { return clusterconnect::test::fixture_modules_unavailable(source_tree()); }

  // `tls`: serve HTTPS with a certificate from a private CA (state()["tls_ca_file"]).
  explicit TestIdp(const std::filesystem::path& dir, const nlohmann::json& config = nullptr, bool tls = false) : dir_(dir) {
    const auto script = source_tree() / "tests" / "fixtures" / "idp" / "server.js";
    const auto ready = dir / "idp-ready.json";
    std::vector<std::string> args = {script.string(), "--port", "0", "--tenant", idp_tenant, "--ready-file", ready.string(),
                                     "--state-dir", (dir / "idp-state").string(), "--admin"};
    if (tls) args.push_back("--tls");
    if (!config.is_null()) {
      std::ofstream(dir / "idp-config.json") << config.dump();
      args.push_back("--config");
      args.push_back((dir / "idp-config.json").string());
    }
    process_.start(args, ready, dir / "idp.log", [&] {
      std::error_code ignored;
      std::filesystem::remove_all(dir / "idp-state", ignored);
    });
    try {
      ready_ = nlohmann::json::parse(slurp(ready));
      state_ = nlohmann::json::parse(slurp(dir / "idp-state" / "state.json"));
    } catch (...) {
      stop();
      throw;
    }
  }

  ~TestIdp() { stop(); }

  void stop() { process_.stop(); }

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
  clusterconnect::test::NodeFixture process_;
  nlohmann::json ready_;
  nlohmann::json state_;
};

}  // namespace clusterconnect::entra::test
