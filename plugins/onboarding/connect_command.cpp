#include "connect_command.hpp"

#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "agent_identity.hpp"
#include "agent_manifests.hpp"
#include "clusterconnect/certificates.hpp"

namespace clusterconnect::onboarding {
namespace {

// HOST[:PORT] of https://HOST[:PORT][/…].
std::string host_of(const std::string& endpoint) {
  std::string rest = endpoint;
  if (auto scheme = rest.find("://"); scheme != std::string::npos) rest = rest.substr(scheme + 3);
  return rest.substr(0, rest.find('/'));
}

}  // namespace

CLI::App* ConnectCommand::add_to(CLI::App& root) noexcept {
  try {
    auto* sub = root.add_subcommand("connect", "Register a cluster with the relay and install its agent");
    sub->add_option("-n,--name", opts_.name, "Name of the connected cluster")->required();
    sub->add_option("-g,--resource-group", opts_.resource_group, "Resource group of the connected cluster")->required();
    sub->add_option("--subscription", opts_.subscription, "Subscription ID")->envname("AZURE_SUBSCRIPTION_ID");
    sub->add_option("--endpoint", opts_.endpoint, "Relay management endpoint, https://HOST[:PORT]")
        ->envname("CONNECTEDK8S_ENDPOINT");
    sub->add_option("--kube-context", opts_.kube_context, "Kubeconfig context of the cluster (default: the current one)");
    sub->add_option("--kubeconfig", opts_.kubeconfig, "Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)");
    sub->add_option("-l,--location", opts_.location, "Location of the resource: the relay's (management.location)")
        ->capture_default_str();
    sub->add_option("--tenant", opts_.tenant, "Entra tenant whose tokens the agent accepts")->envname("AZURE_TENANT_ID");
    sub->add_option("--image", opts_.image, "Agent image (default: the manifest's)");
    sub->add_option("--relay-ca-file", opts_.relay_ca_file, "CA bundle the agent verifies the relay with (default: none)");
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
    if (!opts_.dry_run) {
      std::fprintf(stderr,
                   "connect: installing into a cluster is not available in this build; run with --dry-run -o yaml to "
                   "see the objects\n");
      return 2;
    }
    auto identity = create_agent_identity("clusterconnect-agent " + opts_.name, 365);
    if (!identity) {
      std::fprintf(stderr, "connect: %s\n", identity.error().c_str());
      return 1;
    }
    AgentInstall install;
    const std::string host = opts_.endpoint.empty() ? "RELAY_HOST" : host_of(opts_.endpoint);
    install.relay_url = "wss://" + host + "/$hc/clusters/" + opts_.subscription + "/" + opts_.resource_group + "/" + opts_.name;
    install.tenant = opts_.tenant;
    install.image = opts_.image;
    install.agent_cert_pem = identity->cert_pem;
    install.agent_key_pem = identity->key_pem;
    // Not registered in a dry run: there is no listen key to show.
    install.listen_key = redacted_secret;
    if (!opts_.relay_ca_file.empty()) {
      auto ca = tls::read_small_file(opts_.relay_ca_file);
      if (!ca) {
        std::fprintf(stderr, "connect: --relay-ca-file: %s\n", ca.error().c_str());
        return 1;
      }
      install.relay_ca_pem = ca.value();
    }
    const std::string yaml = agent_objects_yaml(install, !opts_.show_secrets);
    std::fwrite(yaml.data(), 1, yaml.size(), stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "connect: %s\n", e.what());
    return 1;
  }
}

}  // namespace clusterconnect::onboarding
