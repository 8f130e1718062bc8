// The agent's configuration: flags win over environment variables, which win
// over the config file. Observed through the first check each setting drives.

#include <catch2/catch.hpp>

#include "clusterconnect/certificates.hpp"

#include <fstream>

#include "../../support/test_env.hpp"

using namespace clusterconnect::test;

namespace {
struct AgentRun {
  TempDir dir;
  AgentRun() { std::ofstream(dir.path() / "listen.key") << "secret\n"; }
  // With the identity either transport needs unless `args` names one.
  CommandResult operator()(const std::string& env, const std::string& args) const {
    return bare(env, (args.find("--identity-") == std::string::npos ? identity() : std::string()) + args);
  }
  CommandResult bare(const std::string& env, const std::string& args) const {
    return run("env -u KUBERNETES_SERVICE_HOST -u AZURE_TENANT_ID -u CLUSTERCONNECT_MODE -u CLUSTERCONNECT_TRANSPORT " + env +
               " " + quote((stage_dir() / "bin" / "clusterconnect-agent").string()) +
               " --relay-url 'wss://relay.example/$hc/clusters/a' --listen-key-file " +
               quote((dir.path() / "listen.key").string()) + " --health-listen 127.0.0.1:0 " + args);
  }
  // The identity the agent needs, as flags.
  std::string identity(unsigned key_mode = 0600) const {
    std::ofstream(dir.path() / "agent.crt") << "certificate\n";
    std::ofstream(dir.path() / "agent.key") << "key\n";
    std::filesystem::permissions(dir.path() / "agent.key", static_cast<std::filesystem::perms>(key_mode));
    return " --identity-cert-file " + quote((dir.path() / "agent.crt").string()) + " --identity-key-file " +
           quote((dir.path() / "agent.key").string()) + " ";
  }
  std::string config(const std::string& text) const {
    auto p = dir.path() / "agent.yaml";
    std::ofstream(p) << text;
    return quote(p.string());
  }
};
const char* const no_api_server = "no API server";
}  // namespace

TEST_CASE("agent: entra mode without a tenant is refused with what to do", "[agent][config]") {
  AgentRun agent;
  auto r = agent("", "");
  CHECK(r.status == 2);
  CHECK_THAT(r.output, Catch::Contains("--tenant is required in entra mode"));
}

TEST_CASE("agent: the config file sets options", "[agent][config]") {
  AgentRun agent;
  auto r = agent("", "--config " + agent.config("mode: token\n"));
  CHECK_THAT(r.output, Catch::Contains(no_api_server));
}

TEST_CASE("agent: an environment variable wins over the config file, a flag over both", "[agent][config]") {
  AgentRun agent;
  auto cfg = agent.config("mode: token\n");
  CHECK_THAT(agent("CLUSTERCONNECT_MODE=both", "--config " + cfg).output, Catch::Contains("--tenant is required in both mode"));
  CHECK_THAT(agent("CLUSTERCONNECT_MODE=both", "--config " + cfg + " --mode token").output, Catch::Contains(no_api_server));
}

TEST_CASE("agent: a broken config file or value is a clear error", "[agent][config]") {
  AgentRun agent;
  auto bad_yaml = agent("", "--config " + agent.config("mode: [unclosed\n"));
  CHECK(bad_yaml.status != 0);
  CHECK_THAT(bad_yaml.output, Catch::Contains("not valid YAML"));
  auto bad_value = agent("", "--config " + agent.config("mode: sideways\n"));
  CHECK(bad_value.status != 0);
  CHECK_THAT(bad_value.output, Catch::Contains("sideways"));
  auto help = agent("", "--help");
  for (auto flag : {"--relay-url", "--mode", "--tenant", "--apiserver-url", "--token-file", "--audit-log", "--config",
                    "CLUSTERCONNECT_RELAY_URL", "AZURE_AUTHORITY_HOST"})
    CHECK_THAT(help.output, Catch::Contains(flag));
}

TEST_CASE("agent: --pop needs the cluster's resource ID, in its ARM form", "[agent][config][pop]") {
  AgentRun agent;
  const std::string tenant = " --tenant 72f988bf-86f1-41af-91ab-2d7cd011db47";
  auto missing = agent("", "--pop" + tenant);
  CHECK(missing.status == 2);
  CHECK_THAT(missing.output, Catch::Contains("--pop needs --cluster-resource-id"));
  auto token_mode = agent("", "--pop --mode token --cluster-resource-id x");
  CHECK(token_mode.status == 2);
  CHECK_THAT(token_mode.output, Catch::Contains("--pop needs --mode entra or both"));
  auto malformed = agent("", "--pop --cluster-resource-id prod-eu" + tenant);
  CHECK(malformed.status == 2);
  CHECK_THAT(malformed.output, Catch::Contains("not a connected cluster's resource ID"));
  // From the environment or the config file, as every option.
  const std::string id = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Kubernetes/connectedClusters/prod-eu";
  CHECK_THAT(agent("CLUSTERCONNECT_POP=true CLUSTERCONNECT_CLUSTER_RESOURCE_ID=" + id, tenant).output,
             Catch::Contains(no_api_server));
  CHECK_THAT(agent("", "--config " + agent.config("pop: true\ncluster-resource-id: " + id + "\n") + tenant).output,
             Catch::Contains(no_api_server));
  CHECK_THAT(agent("", "--config " + agent.config("pop: true\n") + tenant).output,
             Catch::Contains("--pop needs --cluster-resource-id"));
}

TEST_CASE("agent: either transport needs the agent's identity, its key closed to other users", "[agent][config]") {
  AgentRun agent;
  const std::string tenant = " --tenant 72f988bf-86f1-41af-91ab-2d7cd011db47";
  auto none = agent.bare("", tenant);
  CHECK(none.status == 2);
  CHECK_THAT(none.output, Catch::Contains("--identity-cert-file and --identity-key-file are required"));
  auto open_key = agent("", agent.identity(0644) + tenant);
  CHECK(open_key.status == 2);
  CHECK_THAT(open_key.output, Catch::Contains("open to other users (mode 644)"));
  // Group read (a Kubernetes Secret read through fsGroup) passes this check.
  CHECK_THAT(agent("", agent.identity(0440) + tenant).output, !Catch::Contains("open to other users"));
  // The ws form runs the same TLS end to end: the same identity.
  auto ws = agent.bare("", "--transport ws" + tenant);
  CHECK(ws.status == 2);
  CHECK_THAT(ws.output, Catch::Contains("--identity-cert-file and --identity-key-file are required"));
}

TEST_CASE("agent: --print-key-pin prints the pin the registry lists, and nothing else is needed", "[agent][config]") {
  TempDir dir;
  auto pem = clusterconnect::tls::create_ca("agent", 1);
  REQUIRE(pem);
  std::ofstream(dir.path() / "agent.crt") << pem->cert;
  auto want = clusterconnect::tls::public_key_pin(pem->cert);
  REQUIRE(want);
  const auto agent = quote((stage_dir() / "bin" / "clusterconnect-agent").string());
  auto r = run("env -u CLUSTERCONNECT_RELAY_URL " + agent + " --print-key-pin --identity-cert-file " +
               quote((dir.path() / "agent.crt").string()));
  CHECK(r.status == 0);
  CHECK(r.output == want.value() + "\n");
  auto bad = run(agent + " --print-key-pin --identity-cert-file " + quote((dir.path() / "missing.crt").string()));
  CHECK(bad.status == 2);
  CHECK_THAT(bad.output, Catch::Contains("missing.crt"));
}

TEST_CASE("agent: --auth oidc picks the OIDC backend by configuration", "[agent][config][oidc]") {
  AgentRun agent;
  auto missing = agent("", "--auth oidc");
  CHECK(missing.status == 2);
  CHECK_THAT(missing.output, Catch::Contains("--auth oidc needs --oidc-issuer-url and --oidc-client-id"));
  // The authenticator:oidc module itself refuses a plain-http issuer: the agent loaded it, not Entra's.
  auto http_issuer = agent("", "--auth oidc --oidc-issuer-url http://idp.example --oidc-client-id kubernetes");
  CHECK(http_issuer.status == 2);
  CHECK_THAT(http_issuer.output, Catch::Contains("must use https"));
  auto bad_alg = agent("", "--auth oidc --oidc-issuer-url https://idp.example --oidc-client-id kubernetes --oidc-signing-algs HS256");
  CHECK(bad_alg.status == 2);
  CHECK_THAT(bad_alg.output, Catch::Contains("'HS256' is not supported"));
  // No tenant needed; from the environment or the config file, as every option.
  CHECK_THAT(agent("CLUSTERCONNECT_AUTH=oidc", "--oidc-issuer-url https://idp.example --oidc-client-id kubernetes").output,
             Catch::Contains(no_api_server));
  CHECK_THAT(agent("", "--config " +
                           agent.config("auth: oidc\noidc-issuer-url: https://idp.example\noidc-client-id: kubernetes\n"
                                        "oidc-required-claim: [hd=example.org]\n"))
                 .output,
             Catch::Contains(no_api_server));
  auto pop = agent("", "--auth oidc --oidc-issuer-url https://idp.example --oidc-client-id kubernetes --pop --cluster-resource-id x");
  CHECK(pop.status == 2);
  CHECK_THAT(pop.output, Catch::Contains("--pop needs --auth entra"));
}
