#include "connect_command.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <thread>

#include <yaml-cpp/yaml.h>
#include <CLI/CLI.hpp>

#include "agent_identity.hpp"
#include "agent_manifests.hpp"
#include "clusterconnect/certificates.hpp"
#include "connected_clusters.hpp"
#include "kube_client.hpp"

namespace clusterconnect::onboarding {
namespace {

// HOST[:PORT] of https://HOST[:PORT][/…].
std::string host_of(const std::string& endpoint) {
  std::string rest = endpoint;
  if (auto scheme = rest.find("://"); scheme != std::string::npos) rest = rest.substr(scheme + 3);
  return rest.substr(0, rest.find('/'));
}

// As kubectl: --kubeconfig, else $KUBECONFIG's first path, else ~/.kube/config.
std::filesystem::path kubeconfig_path(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* k = std::getenv("KUBECONFIG"); k && *k) {
    std::string first(k);
    return first.substr(0, first.find(':'));
  }
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home ? home : ".") / ".kube" / "config";
}

int failed(const std::string& message) {
  std::fprintf(stderr, "connect: %s\n", message.c_str());
  return 1;
}

void step(const std::string& text) { std::fprintf(stderr, "%s\n", text.c_str()); }

}  // namespace

CLI::App* ConnectCommand::add_to(CLI::App& root) noexcept {
  try {
    auto* sub = root.add_subcommand("connect", "Register a cluster with the relay and install its agent");
    sub->add_option("-n,--name", opts_.name, "Name of the connected cluster")->required();
    sub->add_option("-g,--resource-group", opts_.resource_group, "Resource group of the connected cluster")->required();
    sub->add_option("--subscription", opts_.subscription, "Subscription ID")->envname("AZURE_SUBSCRIPTION_ID");
    add_sign_in_options(*sub, opts_.sign_in);
    sub->add_option("--kube-context", opts_.kube_context,
                    "Kubeconfig context of the cluster (default: the current one)");
    sub->add_option("--kubeconfig", opts_.kubeconfig,
                    "Kubeconfig file (default: $KUBECONFIG's first path, else ~/.kube/config)");
    sub->add_option("-l,--location", opts_.location, "Location of the resource: the relay's (its management.location)")
        ->capture_default_str();
    sub->add_option("--tenant", opts_.tenant, "Entra tenant whose tokens the agent accepts")
        ->envname("AZURE_TENANT_ID");
    sub->add_option("--image", opts_.image, "Agent image (default: the manifest's)");
    sub->add_option("--timeout", opts_.timeout_seconds,
                    "Seconds to wait for the agent to connect (connectivityStatus Connected); 0: do not wait")
        ->capture_default_str();
    sub->add_flag("--dry-run", opts_.dry_run, "Print the objects to install instead of registering and installing");
    sub->add_flag("--show-secrets", opts_.show_secrets,
                  "With --dry-run: print the agent's private key instead of a placeholder (the listen key exists only "
                  "once the cluster is registered)");
    sub->add_option("-o,--output", opts_.output, "With --dry-run: yaml")->check(CLI::IsMember({"yaml"}));
    return sub;
  } catch (...) {
    return nullptr;
  }
}

int ConnectCommand::run() noexcept {
  try {
    if (opts_.subscription.empty()) {
      std::fprintf(stderr, "connect: no subscription: pass --subscription or set AZURE_SUBSCRIPTION_ID\n");
      return 2;
    }
    std::string relay_ca;
    if (!opts_.sign_in.ca_file.empty()) {
      auto ca = tls::read_small_file(opts_.sign_in.ca_file);
      if (!ca) return failed("--ca-file: " + ca.error());
      relay_ca = ca.value();
    }
    if (!opts_.dry_run) return connect();
    auto identity = create_agent_identity("clusterconnect-agent " + opts_.name, 365);
    if (!identity) return failed(identity.error());
    AgentInstall install;
    const std::string host = opts_.sign_in.endpoint.empty() ? "RELAY_HOST" : host_of(opts_.sign_in.endpoint);
    install.relay_url =
        "wss://" + host + "/$hc/clusters/" + opts_.subscription + "/" + opts_.resource_group + "/" + opts_.name;
    install.tenant = opts_.tenant;
    install.image = opts_.image;
    install.agent_cert_pem = identity->cert_pem;
    install.agent_key_pem = identity->key_pem;
    // Not registered in a dry run: there is no listen key to show.
    install.listen_key = redacted_secret;
    install.relay_ca_pem = relay_ca;
    const std::string yaml = agent_objects_yaml(install, !opts_.show_secrets);
    std::fwrite(yaml.data(), 1, yaml.size(), stdout);
    return 0;
  } catch (const std::exception& e) {
    return failed(e.what());
  }
}

int ConnectCommand::connect() {
  if (opts_.sign_in.endpoint.empty())
    return failed("no management endpoint: pass --endpoint or set CONNECTEDK8S_ENDPOINT");
  const ClusterId id{opts_.subscription, opts_.resource_group, opts_.name};

  // 1. The cluster, with the kubeconfig's own credentials.
  const auto kubeconfig = kubeconfig_path(opts_.kubeconfig);
  auto kube = load_kube_target(kubeconfig, opts_.kube_context);
  if (!kube) return failed(kube.error());
  step("Cluster: context " + kube->context + " (" + kube->server + ")");

  // 2. The agent's identity: the one already installed (a second connect
  // keeps the agents that run and the pins proxies hold), else a new one.
  auto installed = get_object(kube.value(), "/api/v1/namespaces/clusterconnect/secrets/agent-identity");
  if (!installed) return failed(installed.error());
  Result<AgentIdentity> identity = fail("no identity");
  if (installed->has_value()) {
    auto cert = secret_data(**installed, "tls.crt");
    auto key = secret_data(**installed, "tls.key");
    if (cert && key) identity = load_agent_identity(*cert, *key);
    if (!identity)
      return failed("the installed Secret clusterconnect/agent-identity does not hold a usable key (" +
                    identity.error() + "); delete it to make a new one");
    step("Agent identity: kept from Secret clusterconnect/agent-identity");
  } else {
    identity = create_agent_identity("clusterconnect-agent " + opts_.name, 365);
    if (!identity) return failed(identity.error());
    step("Agent identity: new EC P-256 key");
  }

  // 3. Sign in for the relay's management API (its own audience, never ARM's).
  auto signed_in = sign_in(host_, opts_.sign_in);
  if (!signed_in) return failed(signed_in.error());
  const ManagementTarget& management = signed_in.value();

  // 4. Register (PUT is create-or-update) and fetch the listen key.
  nlohmann::json body{{"location", opts_.location},
                      {"identity", {{"type", "SystemAssigned"}}},
                      {"properties", {{"agentPublicKeyCertificate", identity->spki_der_base64}}}};
  auto resource = put_cluster(management, id, body);
  if (!resource) return failed(resource.error());
  step("Registered " + resource->value("id", id.resource_id()));
  auto listen = list_keys(management, id);
  if (!listen) return failed(listen.error());

  // 5. Install the agent (server-side apply: re-running converges).
  AgentInstall install;
  install.relay_url = "wss://" + listen->relay + "/$hc/" + listen->entity_path;
  install.tenant = opts_.tenant;
  install.image = opts_.image;
  install.listen_key = listen->key;
  install.agent_cert_pem = identity->cert_pem;
  install.agent_key_pem = identity->key_pem;
  if (!opts_.sign_in.ca_file.empty()) {
    auto ca = tls::read_small_file(opts_.sign_in.ca_file);
    if (!ca) return failed("--ca-file: " + ca.error());
    install.relay_ca_pem = ca.value();
  }
  for (const auto& o : agent_objects(install, false)) {
    auto applied = apply_object(kube.value(), object_json(o));
    if (!applied) return failed(applied.error());
  }
  step("Installed the agent in namespace clusterconnect (Deployment clusterconnect-agent, 2 replicas)");

  // 6. Until the relay reports the agent's control channels (bounded).
  if (opts_.timeout_seconds > 0) {
    step("Waiting for the agent to connect (up to " + std::to_string(opts_.timeout_seconds) + " s)");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opts_.timeout_seconds);
    for (;;) {
      auto now = get_cluster(management, id);
      if (!now) return failed(now.error());
      if (now->has_value() && (**now).contains("properties") &&
          (**now)["properties"].value("connectivityStatus", std::string()) == "Connected")
        break;
      if (std::chrono::steady_clock::now() >= deadline)
        return failed("the agent did not connect within " + std::to_string(opts_.timeout_seconds) +
                      " s; check its pods: kubectl -n clusterconnect logs deploy/clusterconnect-agent");
      std::this_thread::sleep_for(std::chrono::seconds(2));
    }
    step("Connected.");
  }
  std::printf("Next: connectedk8s proxy -n %s -g %s\n", opts_.name.c_str(), opts_.resource_group.c_str());
  return 0;
}

}  // namespace clusterconnect::onboarding
