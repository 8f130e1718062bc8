// The relay's registry in etcd and in its file, changed by the admin
// commands while relays run: a real etcd member on loopback (free ports, a
// temporary data directory), relay processes as replicas.

#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>

#include <nlohmann/json.hpp>

#include "etcd_client.hpp"
#include "etcd_fixture.hpp"
#include "hc_clients.hpp"
#include "registry_store.hpp"
#include "relay_fixture.hpp"
#include "test_env.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;

namespace {

std::string relay_bin() { return (stage_dir() / "bin" / "clusterconnect-relay").string(); }

// An admin command; its output (stdout and stderr).
CommandResult admin(const std::string& args) { return run(relay_bin() + " " + args); }

const std::string sub_id = "00000000-0000-0000-0000-0000000000aa";
std::string cluster_args(const std::string& name) { return "-s " + sub_id + " -g team -n " + name; }
std::string path_of(const std::string& name) { return "clusters/" + sub_id + "/team/" + name; }

// Adds a cluster through the admin command; its keys' secrets by name.
std::map<std::string, std::string> add_cluster(const std::string& store_args, const std::string& name) {
  auto r = admin("cluster add " + cluster_args(name) + " " + store_args + " --show-secrets -o json");
  INFO(r.output);
  REQUIRE(r.status == 0);
  auto j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  std::map<std::string, std::string> secrets;
  for (const auto& k : j["keys"]) secrets[k["name"]] = k.value("secret", std::string());
  return secrets;
}

// A listen handshake with this token: accepted (a control channel), or refused.
bool listen_accepted(const RelayProcess& relay, const std::string& path, const std::string& token) {
  try {
    ControlClient c(relay, path, token);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

TEST_CASE("etcd store: admin changes reach two running replicas and a removed cluster closes their control channels",
          "[relay][store][etcd]") {
  if (!have_etcd()) return;
  EtcdServer etcd;
  const std::string store = "--store " + etcd.store();
  auto secrets = add_cluster(store, "alpha");
  RelayProcess one(nlohmann::json::object(), std::map<std::string, std::string>{}, std::vector<std::string>{"--store", etcd.store()});
  RelayProcess two(nlohmann::json::object(), std::map<std::string, std::string>{}, std::vector<std::string>{"--store", etcd.store()});
  // A cluster added while both run: each replica serves it.
  auto beta = add_cluster(store, "beta");
  for (RelayProcess* relay : {&one, &two}) {
    CHECK(wait_until([&] { return listen_accepted(*relay, path_of("beta"), relay->token("listen", beta["listen"], path_of("beta"))); },
                     std::chrono::seconds(5)));
  }
  ControlClient on_one(one, path_of("alpha"), one.token("listen", secrets["listen"], path_of("alpha")));
  ControlClient on_two(two, path_of("alpha"), two.token("listen", secrets["listen"], path_of("alpha")));
  REQUIRE(wait_until([&] { return one.listeners(path_of("alpha")) == 1 && two.listeners(path_of("alpha")) == 1; },
                     std::chrono::seconds(10)));

  auto removed = admin("cluster remove " + cluster_args("alpha") + " " + store);
  INFO(removed.output);
  REQUIRE(removed.status == 0);
  // Each replica closes its channel: the read ends with the close and its reason.
  for (ControlClient* c : {&on_one, &on_two}) {
    CHECK_FALSE(c->next(std::chrono::seconds(10)).has_value());
    CHECK(c->close_code() == 1001);
    CHECK_THAT(c->close_reason(), Catch::Contains("removed"));
  }
  CHECK_FALSE(listen_accepted(one, path_of("alpha"), one.token("listen", secrets["listen"], path_of("alpha"))));
}

TEST_CASE("etcd store: a rotated key refuses tokens signed with the old one on a running relay", "[relay][store][etcd]") {
  if (!have_etcd()) return;
  EtcdServer etcd;
  const std::string store = "--store " + etcd.store();
  auto secrets = add_cluster(store, "gamma");
  RelayProcess relay(nlohmann::json::object(), std::map<std::string, std::string>{}, std::vector<std::string>{"--store", etcd.store()});
  const std::string old_token = relay.token("listen", secrets["listen"], path_of("gamma"));
  REQUIRE(listen_accepted(relay, path_of("gamma"), old_token));

  auto rotated = admin("key rotate " + cluster_args("gamma") + " --key listen --show-secrets -o json " + store);
  INFO(rotated.output);
  REQUIRE(rotated.status == 0);
  const std::string fresh = nlohmann::json::parse(rotated.output.substr(rotated.output.find('{')))["secret"];
  CHECK(fresh != secrets["listen"]);
  CHECK(wait_until([&] { return !listen_accepted(relay, path_of("gamma"), old_token); }, std::chrono::seconds(5)));
  CHECK(listen_accepted(relay, path_of("gamma"), relay.token("listen", fresh, path_of("gamma"))));
}

TEST_CASE("etcd store: a malformed record is refused with its key and the rest of the registry serves",
          "[relay][store][etcd]") {
  if (!have_etcd()) return;
  EtcdServer etcd;
  auto secrets = add_cluster("--store " + etcd.store(), "delta");
  etcd.put_raw("/clusterconnect/clusters/" + sub_id + "/team/broken", R"({"name": 42, "keys": "none"})");
  etcd.put_raw("/clusterconnect/clusters/" + sub_id + "/team/notjson", "{secret-looking garbage");
  RelayProcess relay(nlohmann::json::object(), std::map<std::string, std::string>{}, std::vector<std::string>{"--store", etcd.store()});
  CHECK(listen_accepted(relay, path_of("delta"), relay.token("listen", secrets["listen"], path_of("delta"))));
  CHECK(relay.gauge("clusterconnect_relay_registry_records_refused") == 2);
  const auto log = relay.log();
  CHECK_THAT(log, Catch::Contains("/clusterconnect/clusters/" + sub_id + "/team/broken"));
  CHECK_THAT(log, Catch::Contains("/clusterconnect/clusters/" + sub_id + "/team/notjson"));
  CHECK_THAT(log, !Catch::Contains("garbage"));
  CHECK_THAT(log, !Catch::Contains(secrets["listen"]));
}

TEST_CASE("etcd client: calls go over the connection of the calls before them, and past its end",
          "[relay][store][etcd]") {
  EtcdServer etcd;
  relay::EtcdOptions options;
  options.endpoints = {etcd.url()};
  relay::EtcdClient client(options);
  for (int i = 0; i < 20; ++i) REQUIRE(client.put("/reuse/k" + std::to_string(i), "v"));
  auto all = client.range_prefix("/reuse/");
  REQUIRE(all);
  CHECK(all->first.size() == 20);
  CHECK(client.connections_opened() == 1);
  // etcd restarts: the kept connection is closed, and the next call opens
  // a new one instead of failing on the old.
  etcd.stop(SIGTERM);
  etcd.start();
  auto after = client.get("/reuse/k7");
  REQUIRE(after);
  REQUIRE(after->size() == 1);
  CHECK((*after)[0].value == "v");
  CHECK(client.connections_opened() == 2);
}

TEST_CASE("etcd store: an unreachable store at start is an error naming the endpoint", "[relay][store]") {
  const auto port = free_port();  // nothing listens there
  TempDir dir;
  auto r = run(relay_bin() + " --store etcd://127.0.0.1:" + std::to_string(port) + " --dev-tls " +
               quote((dir.path() / "tls").string()) + " --listen 127.0.0.1:0");
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Catch::Contains("127.0.0.1:" + std::to_string(port)));
  CHECK_THAT(r.output, Catch::Contains("cannot reach etcd"));
}

TEST_CASE("file store: admin commands rewrite the registry with 0600 files and a running relay applies them",
          "[relay][store][file]") {
  RelayProcess relay(nlohmann::json{{"clusters", nlohmann::json::array()}}, std::map<std::string, std::string>{});
  const auto config = relay.dir() / "relay.json";
  const std::string store = "--config " + quote(config.string());
  add_cluster(store, "epsilon");
  auto mode = [](const std::filesystem::path& p) {
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 0777;
  };
  CHECK(mode(config) == 0600);
  const auto record = nlohmann::json::parse(std::ifstream(config))["clusters"][0];
  for (const auto& k : record["keys"]) {
    REQUIRE(k.contains("secret_file"));
    CHECK_FALSE(k.contains("secret"));
    CHECK(mode(relay.dir() / k["secret_file"].get<std::string>()) == 0600);
  }
  std::ifstream in(relay.dir() / record["keys"][0]["secret_file"].get<std::string>());
  std::string listen_secret;
  std::getline(in, listen_secret);
  REQUIRE(record["keys"][0]["name"] == "listen");
  const std::string old_token = relay.token("listen", listen_secret, path_of("epsilon"));
  CHECK(wait_until([&] { return listen_accepted(relay, path_of("epsilon"), old_token); }, std::chrono::seconds(5)));

  auto rotated = admin("key rotate " + cluster_args("epsilon") + " --key listen " + store);
  INFO(rotated.output);
  REQUIRE(rotated.status == 0);
  CHECK(mode(relay.dir() / record["keys"][0]["secret_file"].get<std::string>()) == 0600);
  CHECK(wait_until([&] { return !listen_accepted(relay, path_of("epsilon"), old_token); }, std::chrono::seconds(5)));

  auto shown = admin("cluster show " + cluster_args("epsilon") + " -o json " + store);
  CHECK(shown.status == 0);
  CHECK_THAT(shown.output, !Catch::Contains(listen_secret));
  auto missing = admin("cluster remove " + cluster_args("nope") + " " + store);
  CHECK(missing.status == 1);
  CHECK_THAT(missing.output, Catch::Contains("no cluster"));
}

TEST_CASE("etcd store: import moves a file registry into etcd and agent-cert set pins the agent's key", "[relay][store][etcd]") {
  if (!have_etcd()) return;
  EtcdServer etcd;
  RelayProcess file_relay;  // the default registry: demo (pinned) and other, keys in secret files
  const std::string config = quote((file_relay.dir() / "relay.json").string());
  auto imported = admin("--config " + config + " --store " + etcd.store() + " import");
  INFO(imported.output);
  REQUIRE(imported.status == 0);
  CHECK_THAT(imported.output, Catch::Contains("imported 2 cluster(s)"));
  RelayProcess relay(nlohmann::json::object(), std::map<std::string, std::string>{},
                     std::vector<std::string>{"--store", etcd.store()});
  CHECK(listen_accepted(relay, demo_path, relay.listen_token()));

  AgentKey agent("new agent");
  const auto cert = relay.dir() / "new-agent.crt";
  std::ofstream(cert) << agent.pem.cert;
  const std::string demo = "-s 00000000-0000-0000-0000-000000000000 -g sandbox -n demo";
  auto set = admin("agent-cert set " + demo + " --cert " + quote(cert.string()) + " --store " + etcd.store());
  INFO(set.output);
  REQUIRE(set.status == 0);
  auto shown = nlohmann::json::parse(admin("cluster show " + demo + " -o json --store " + etcd.store()).output);
  CHECK(shown["agent_key_pins"] == nlohmann::json::array({agent.pin}));
}
