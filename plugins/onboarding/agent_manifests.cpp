#include "agent_manifests.hpp"

#include <stdexcept>

#include <yaml-cpp/yaml.h>

#include "agent_base_manifest.hpp"  // generated from deploy/clusterconnect-agent.yaml

namespace clusterconnect::onboarding {
namespace {

YAML::Node object(const std::string& api_version, const std::string& kind, const std::string& name) {
  YAML::Node o;
  o["apiVersion"] = api_version;
  o["kind"] = kind;
  o["metadata"]["name"] = name;
  o["metadata"]["namespace"] = "clusterconnect";
  o["metadata"]["labels"]["app.kubernetes.io/name"] = "clusterconnect-agent";
  o["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "connectedk8s";
  return o;
}

void set_env(YAML::Node container, const std::string& name, const std::string& value) {
  YAML::Node env = container["env"];
  for (auto e : env)
    if (e["name"].as<std::string>() == name) {
      e["value"] = value;
      return;
    }
  YAML::Node e;
  e["name"] = name;
  e["value"] = value;
  env.push_back(e);
}

}  // namespace

const std::string& agent_base_manifest() {
  static const std::string text(agent_base_manifest_text);
  return text;
}

std::vector<YAML::Node> agent_objects(const AgentInstall& install, bool redact) {
  auto secret = [&](const std::string& value) { return redact ? std::string(redacted_secret) : value; };
  std::vector<YAML::Node> out = YAML::LoadAll(agent_base_manifest());
  std::vector<YAML::Node> extra;
  YAML::Node listen = object("v1", "Secret", "relay-listen-key");
  listen["type"] = "Opaque";
  listen["stringData"]["listen.key"] = secret(install.listen_key);
  extra.push_back(listen);
  YAML::Node identity = object("v1", "Secret", "agent-identity");
  identity["type"] = "kubernetes.io/tls";
  identity["stringData"]["tls.crt"] = install.agent_cert_pem;  // public: proxies pin its key
  identity["stringData"]["tls.key"] = secret(install.agent_key_pem);
  extra.push_back(identity);
  YAML::Node ca = object("v1", "ConfigMap", "relay-ca");
  ca["data"]["ca.crt"] = install.relay_ca_pem;
  extra.push_back(ca);

  std::vector<YAML::Node> ordered;
  for (auto& o : out) {
    if (!o.IsMap()) continue;
    if (o["kind"].as<std::string>() == "Deployment") {
      YAML::Node container = o["spec"]["template"]["spec"]["containers"][0];
      set_env(container, "RELAY_URL", install.relay_url);
      set_env(container, "TENANT_ID", install.tenant);
      if (!install.image.empty()) container["image"] = install.image;
      // Secrets and ConfigMap before the Deployment that mounts them.
      for (auto& e : extra) ordered.push_back(e);
    }
    ordered.push_back(o);
  }
  if (ordered.size() != out.size() + extra.size())
    throw std::logic_error("the compiled-in agent manifest has no Deployment");
  return ordered;
}

std::string agent_objects_yaml(const AgentInstall& install, bool redact) {
  std::string out;
  for (const auto& o : agent_objects(install, redact)) {
    YAML::Emitter e;
    e << o;
    out += "---\n" + std::string(e.c_str()) + "\n";
  }
  return out;
}

}  // namespace clusterconnect::onboarding
