#include "proxy_command.hpp"

#include <cstdio>

#include <CLI/CLI.hpp>

namespace clusterconnect::proxy {

CLI::App* ProxyCommand::add_to(CLI::App& root) noexcept try {
  auto* sub = root.add_subcommand("proxy", "Open a local kubectl endpoint for a connected cluster");
  sub->add_option("-n,--name", opts_.name, "Name of the connected cluster")->required();
  sub->add_option("-g,--resource-group", opts_.resource_group, "Resource group of the connected cluster")->required();
  sub->add_option("--subscription", opts_.subscription, "Subscription ID (default: $AZURE_SUBSCRIPTION_ID)");
  sub->add_option("--token", opts_.token, "Service-account bearer token: forwarded unchanged, no Entra sign-in");
  sub->add_option("-f,--file", opts_.file, "Kubeconfig to update (default: $KUBECONFIG's first path or ~/.kube/config; '-' prints it)");
  sub->add_option("--port", opts_.port, "Local port for the API-server endpoint")->default_val(47011)->check(CLI::Range(1, 65535));
  sub->add_option("--kube-context", opts_.kube_context, "Name of the kubeconfig context (default: the cluster name)");
  sub->add_option("--endpoint", opts_.endpoint, "Relay management endpoint URL (default: $CONNECTEDK8S_ENDPOINT)");
  sub->add_option("--ca-file", opts_.ca_file, "CA bundle to verify the relay (default: system store)");
  sub->add_option("--ready-file", opts_.ready_file, "Write this file once the proxy is ready");
  sub->add_option("-o,--output", opts_.output, "Progress format: text or json")->check(CLI::IsMember({"text", "json"}));
  sub->add_option("command", opts_.command, "After '--': run this command with KUBECONFIG set, then exit with its status");
  return sub;
} catch (...) {
  return nullptr;
}

int ProxyCommand::run() noexcept {
  std::fprintf(stderr, "connectedk8s proxy: not available in this build\n");
  return 1;
}

}  // namespace clusterconnect::proxy
