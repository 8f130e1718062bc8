#pragma once
// The cluster's API server as `connect` reaches it: with the kubeconfig's own
// server, CA and credentials (client certificate or bearer token), the way
// kubectl would. Control plane, blocking.

#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "clusterconnect/result.hpp"

namespace YAML {
class Node;
}

namespace clusterconnect::onboarding {

struct KubeTarget {
  std::string context;
  std::string server;  // https://HOST[:PORT]
  std::string ca_pem;  // empty: the system store
  std::string client_cert_pem, client_key_pem;
  std::string token;
};

// The context `context` (empty: current-context) of `kubeconfig`: its
// cluster's server and CA, its user's client certificate and key or token
// (inline *-data or files, relative to the kubeconfig's directory). Refuses
// exec/auth-provider users and insecure-skip-tls-verify with what to do.
Result<KubeTarget> load_kube_target(const std::filesystem::path& kubeconfig, const std::string& context);

// A manifest object as the JSON the API server takes (YAML 1.1 scalars, as
// kubectl reads them: 0440 is octal, quoted scalars stay strings).
nlohmann::json object_json(const YAML::Node& object);

// The REST path of an object, e.g. /apis/apps/v1/namespaces/N/deployments/NAME.
Result<std::string> object_path(const nlohmann::json& object);

// Server-side apply (PATCH application/apply-patch+yaml, fieldManager=
// connectedk8s, force): creates the object or makes its fields ours.
Result<void> apply_object(const KubeTarget& target, const nlohmann::json& object);

// GET of a path: the object, or nullopt on 404.
Result<std::optional<nlohmann::json>> get_object(const KubeTarget& target, const std::string& path);

// DELETE of a path: true when it was there, false when it was not (404).
Result<bool> delete_object(const KubeTarget& target, const std::string& path);

// A Secret's data[key], decoded (nullopt when absent or not base64).
std::optional<std::string> secret_data(const nlohmann::json& secret, const std::string& key);

}  // namespace clusterconnect::onboarding
