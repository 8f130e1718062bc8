#include <catch2/catch.hpp>

#include <fstream>

#include "relay_config.hpp"
#include "test_env.hpp"

using namespace clusterconnect::relay;
using clusterconnect::test::TempDir;

TEST_CASE("relay config: clusters, keys with secrets relative to the file, limits, unknown fields kept", "[relay][config]") {
  TempDir dir;
  std::ofstream(dir.path() / "listen.key") << "s3cret\n";
  std::ofstream(dir.path() / "relay.json") << R"({
    "listen": "127.0.0.1:9443", "public_host": "relay.example:443",
    "tls": {"cert_file": "tls/server.crt", "key_file": "/abs/server.key"},
    "limits": {"max_connections_per_address": 12, "drain_timeout_ms": 5000, "max_tunnels_per_cluster": 3},
    "clusters": [{"subscription": "sub", "resource_group": "rg", "name": "demo",
                  "hybrid_connection": "/clusters/sub/rg/demo/",
                  "keys": [{"name": "listen", "rights": ["listen"], "secret_file": "listen.key"}],
                  "role_assignments": [{"principal": "oid-1", "role": "Azure Arc Enabled Kubernetes Cluster User Role"}],
                  "x-extra": 1}],
    "management": {"tenants": ["t"]}, "future": {"a": 1}})";
  auto c = load_relay_config(dir.path() / "relay.json");
  CHECK(c.listen == "127.0.0.1:9443");
  CHECK(c.public_host == "relay.example:443");
  CHECK(c.cert_file == (dir.path() / "tls/server.crt").string());
  CHECK(c.key_file == "/abs/server.key");
  CHECK(c.limits.max_connections_per_address == 12);
  CHECK(c.limits.drain_timeout == std::chrono::milliseconds(5000));
  CHECK(c.limits.max_tunnels_per_cluster == 3);
  REQUIRE(c.clusters.size() == 1);
  const auto* demo = c.cluster_by_path("CLUSTERS/sub/rg/demo");
  REQUIRE(demo);
  CHECK(demo->hybrid_connection == "clusters/sub/rg/demo");
  REQUIRE(demo->key("listen"));
  CHECK(demo->key("listen")->secret == "s3cret");
  CHECK(demo->key("listen")->has_right("listen"));
  CHECK_FALSE(demo->key("listen")->has_right("connect"));
  CHECK(demo->key_with_right("connect") == nullptr);
  CHECK(demo->role_assignments.at(0).principal == "oid-1");
  CHECK(demo->raw.at("x-extra") == 1);
  CHECK(c.cluster_by_name("SUB", "rg", "demo") == demo);
  CHECK(c.management.at("tenants").at(0) == "t");
  CHECK(c.raw.at("future").at("a") == 1);
}

TEST_CASE("relay config: a path finds the hybrid connection that is its longest prefix", "[relay][config]") {
  TempDir dir;
  std::ofstream(dir.path() / "k") << "s\n";
  std::ofstream(dir.path() / "relay.json") << R"({"clusters": [
    {"subscription": "s", "resource_group": "g", "name": "a", "hybrid_connection": "hc/a",
     "keys": [{"name": "k", "rights": ["listen"], "secret_file": "k"}]},
    {"subscription": "s", "resource_group": "g", "name": "ab", "hybrid_connection": "hc/a/b",
     "keys": [{"name": "k", "rights": ["listen"], "secret_file": "k"}]}]})";
  auto c = load_relay_config(dir.path() / "relay.json");
  std::string_view rest;
  auto* a = c.cluster_by_path_prefix("hc/a", rest);
  REQUIRE(a);
  CHECK(a->name == "a");
  CHECK(rest.empty());
  CHECK(c.cluster_by_path_prefix("HC/A/x/y", rest) == a);
  CHECK(rest == "/x/y");
  auto* ab = c.cluster_by_path_prefix("hc/a/b/c", rest);
  REQUIRE(ab);
  CHECK(ab->name == "ab");
  CHECK(rest == "/c");
  // A prefix ends at a segment boundary.
  CHECK(c.cluster_by_path_prefix("hc/abc", rest) == nullptr);
  CHECK(c.cluster_by_path_prefix("hc", rest) == nullptr);
}

TEST_CASE("relay config errors name the file and the field", "[relay][config]") {
  TempDir dir;
  auto load = [&](const std::string& text) {
    std::ofstream(dir.path() / "r.json") << text;
    try {
      load_relay_config(dir.path() / "r.json");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  CHECK_THAT(load("{not json"), Catch::Contains("not valid JSON"));
  CHECK_THAT(load(R"({"clusters": [{"name": "x"}]})"), Catch::Contains("clusters[0]") && Catch::Contains("hybrid_connection"));
  CHECK_THAT(load(R"({"clusters": [{"name": "x", "hybrid_connection": "a", "keys": [{"name": "k", "secret_file": "missing.key"}]}]})"),
             Catch::Contains("missing.key"));
  CHECK_THAT(load(R"({"clusters": [{"name": "x", "hybrid_connection": "a"}, {"name": "y", "hybrid_connection": "A"}]})"),
             Catch::Contains("used twice"));
  CHECK_THAT(load(R"({"limits": {"max_connections": -1}})"), Catch::Contains("max_connections"));
}
