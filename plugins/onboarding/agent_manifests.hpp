#pragma once
// The objects `connectedk8s connect` installs in a cluster: the kustomize base
// in deploy/ (compiled in, so they are the same objects), the relay URL and
// tenant set in its Deployment, and the Secrets and ConfigMap it mounts.

#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace clusterconnect::onboarding {

struct AgentInstall {
  std::string relay_url;   // wss://HOST[:PORT]/$hc/HYBRID_CONNECTION
  std::string tenant;      // the agent's --tenant
  std::string image;       // empty: the base's
  std::string listen_key;  // the cluster's listen key (listKeys)
  std::string agent_cert_pem, agent_key_pem;
  std::string relay_ca_pem;  // empty: no relay-ca ConfigMap content (a public CA signs the relay)
};

// What stands in for a secret in printed objects unless secrets are asked for.
inline constexpr const char* redacted_secret = "REDACTED (connectedk8s connect --dry-run --show-secrets prints it)";

// The objects in the order to apply them (Namespace first). With `redact`,
// Secret values are `redacted_secret`; Secrets carry stringData either way.
std::vector<YAML::Node> agent_objects(const AgentInstall& install, bool redact);

// The objects as one YAML stream ("---" between documents), for -o yaml.
std::string agent_objects_yaml(const AgentInstall& install, bool redact);

// The base manifest as compiled in (deploy/clusterconnect-agent.yaml).
const std::string& agent_base_manifest();

}  // namespace clusterconnect::onboarding
