#include "kube_client.hpp"

#include <cctype>
#include <cstdlib>
#include <memory>

#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include "clusterconnect/certificates.hpp"
#include "https_request.hpp"

namespace clusterconnect::onboarding {
namespace {

constexpr std::size_t max_kubeconfig = 1024 * 1024;

std::optional<std::string> base64_decode(const std::string& in) {
  std::string clean;
  for (char c : in)
    if (!std::isspace(static_cast<unsigned char>(c))) clean += c;
  if (clean.empty() || clean.size() % 4 != 0) return std::nullopt;
  std::string out(clean.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(clean.data()), static_cast<int>(clean.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = clean.back() == '=' ? (clean[clean.size() - 2] == '=' ? 2 : 1) : 0;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

const YAML::Node named(const YAML::Node& list, const std::string& name) {
  if (list && list.IsSequence())
    for (const auto& e : list)
      if (e["name"] && e["name"].as<std::string>() == name) return e;
  return YAML::Node();
}

// An inline *-data field (base64) or a file field, relative to the kubeconfig.
Result<std::string> material(const YAML::Node& n, const std::string& field, const std::filesystem::path& dir,
                             const std::string& what) {
  if (n[field + "-data"]) {
    auto d = base64_decode(n[field + "-data"].as<std::string>());
    if (!d) return fail("kubeconfig: " + what + " " + field + "-data is not base64");
    return *d;
  }
  if (n[field]) {
    std::filesystem::path p = n[field].as<std::string>();
    if (p.is_relative()) p = dir / p;
    auto r = tls::read_small_file(p);
    if (!r) return fail("kubeconfig: " + what + " " + field + ": " + r.error());
    return r.value();
  }
  return std::string();
}

// The API server's Status message, or the status code.
std::string status_message(const HttpsResponse& r) {
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("message") && j["message"].is_string()) return j["message"].get<std::string>();
  return "HTTP " + std::to_string(r.status);
}

Result<HttpsResponse> request(const KubeTarget& t, const std::string& method, const std::string& path,
                              const std::string& body, const std::string& content_type) {
  HttpsRequest r{method,          t.server + path, body, content_type, t.token, t.ca_pem, "", t.client_cert_pem,
                 t.client_key_pem};
  auto got = https_request(r);
  if (!got) return fail("the API server " + t.server + " (context " + t.context + "): " + got.error());
  return got;
}

nlohmann::json scalar_json(const YAML::Node& n) {
  const std::string s = n.Scalar();
  if (n.Tag() == "!") return s;  // quoted: a string whatever it looks like
  if (s == "true" || s == "false") return s == "true";
  if (s == "null" || s == "~") return nullptr;
  if (!s.empty() && (std::isdigit(static_cast<unsigned char>(s[0])) || (s[0] == '-' && s.size() > 1))) {
    const bool octal = s.size() > 1 && s[0] == '0' && s.find_first_not_of("01234567") == std::string::npos;
    char* end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, octal ? 8 : 10);
    if (end && *end == '\0') return v;
  }
  return s;
}

}  // namespace

nlohmann::json object_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json o = nlohmann::json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = object_json(kv.second);
      return o;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json a = nlohmann::json::array();
      for (const auto& e : n) a.push_back(object_json(e));
      return a;
    }
    case YAML::NodeType::Scalar:
      return scalar_json(n);
    default:
      return nullptr;
  }
}

Result<KubeTarget> load_kube_target(const std::filesystem::path& kubeconfig, const std::string& context) {
  auto text = tls::read_small_file(kubeconfig, max_kubeconfig);
  if (!text) return fail("kubeconfig " + kubeconfig.string() + ": " + text.error());
  YAML::Node doc;
  try {
    doc = YAML::Load(text.value());
  } catch (const std::exception& e) {
    return fail("kubeconfig " + kubeconfig.string() + " is not YAML: " + e.what());
  }
  KubeTarget t;
  t.context = context.empty() && doc["current-context"] ? doc["current-context"].as<std::string>() : context;
  if (t.context.empty())
    return fail("kubeconfig " + kubeconfig.string() + " has no current context: pass --kube-context");
  const YAML::Node ctx = named(doc["contexts"], t.context);
  if (!ctx || !ctx["context"])
    return fail("kubeconfig " + kubeconfig.string() + " has no context \"" + t.context + "\"");
  const std::string cluster_name = ctx["context"]["cluster"] ? ctx["context"]["cluster"].as<std::string>() : "";
  const std::string user_name = ctx["context"]["user"] ? ctx["context"]["user"].as<std::string>() : "";
  const YAML::Node cluster = named(doc["clusters"], cluster_name)["cluster"];
  if (!cluster || !cluster["server"])
    return fail("kubeconfig: context \"" + t.context + "\" names no cluster with a server");
  t.server = cluster["server"].as<std::string>();
  while (!t.server.empty() && t.server.back() == '/') t.server.pop_back();
  if (t.server.rfind("https://", 0) != 0) return fail("kubeconfig: the API server " + t.server + " is not https://");
  if (cluster["insecure-skip-tls-verify"] && cluster["insecure-skip-tls-verify"].as<bool>())
    return fail("kubeconfig: cluster \"" + cluster_name +
                "\" sets insecure-skip-tls-verify; connect installs credentials and verifies the API server: give it "
                "certificate-authority(-data)");
  const std::filesystem::path dir = kubeconfig.parent_path();
  auto ca = material(cluster, "certificate-authority", dir, "cluster " + cluster_name);
  if (!ca) return fail(ca.error());
  t.ca_pem = ca.value();
  const YAML::Node user = named(doc["users"], user_name)["user"];
  if (user) {
    if (user["exec"] || user["auth-provider"])
      return fail("kubeconfig: user \"" + user_name +
                  "\" signs in with an exec or auth-provider plugin, which connect does not run; use a context with a "
                  "client certificate or a token");
    auto cert = material(user, "client-certificate", dir, "user " + user_name);
    auto key = material(user, "client-key", dir, "user " + user_name);
    if (!cert) return fail(cert.error());
    if (!key) return fail(key.error());
    t.client_cert_pem = cert.value();
    t.client_key_pem = key.value();
    if (user["token"]) t.token = user["token"].as<std::string>();
    if (user["tokenFile"]) {
      auto tok = tls::read_small_file(dir / user["tokenFile"].as<std::string>(), 64 * 1024);
      if (!tok) return fail("kubeconfig: user " + user_name + " tokenFile: " + tok.error());
      t.token = tok.value();
      while (!t.token.empty() && std::isspace(static_cast<unsigned char>(t.token.back()))) t.token.pop_back();
    }
  }
  return t;
}

Result<std::string> object_path(const nlohmann::json& o) {
  const std::string api_version = o.value("apiVersion", std::string());
  const std::string kind = o.value("kind", std::string());
  const auto& meta = o.contains("metadata") ? o["metadata"] : nlohmann::json::object();
  const std::string name = meta.value("name", std::string());
  const std::string ns = meta.value("namespace", std::string());
  struct Kind {
    const char* kind;
    const char* resource;
    bool namespaced;
  };
  static const Kind kinds[] = {{"Namespace", "namespaces", false},
                               {"ServiceAccount", "serviceaccounts", true},
                               {"Secret", "secrets", true},
                               {"ConfigMap", "configmaps", true},
                               {"ClusterRole", "clusterroles", false},
                               {"ClusterRoleBinding", "clusterrolebindings", false},
                               {"Deployment", "deployments", true}};
  for (const auto& k : kinds) {
    if (kind != k.kind) continue;
    if (name.empty() || (k.namespaced && ns.empty())) return fail(kind + " without a name or namespace");
    std::string base = api_version.find('/') == std::string::npos ? "/api/" + api_version : "/apis/" + api_version;
    return base + (k.namespaced ? "/namespaces/" + ns : "") + "/" + k.resource + "/" + name;
  }
  return fail("connect does not install objects of kind " + kind);
}

Result<void> apply_object(const KubeTarget& target, const nlohmann::json& object) {
  auto path = object_path(object);
  if (!path) return fail(path.error());
  auto r = request(target, "PATCH", path.value() + "?fieldManager=connectedk8s&force=true", object.dump(),
                   "application/apply-patch+yaml");
  if (!r) return fail(r.error());
  if (r->status != 200 && r->status != 201)
    return fail("applying " + object.value("kind", std::string()) + " " +
                object["metadata"].value("name", std::string()) + ": " + status_message(r.value()));
  return {};
}

Result<bool> delete_object(const KubeTarget& target, const std::string& path) {
  auto r = request(target, "DELETE", path, "", "");
  if (!r) return fail(r.error());
  if (r->status == 404) return false;
  if (r->status != 200 && r->status != 202) return fail("DELETE " + path + ": " + status_message(r.value()));
  return true;
}

std::optional<std::string> secret_data(const nlohmann::json& secret, const std::string& key) {
  if (!secret.is_object() || !secret.contains("data") || !secret["data"].is_object() || !secret["data"].contains(key) ||
      !secret["data"][key].is_string())
    return std::nullopt;
  return base64_decode(secret["data"][key].get<std::string>());
}

Result<std::optional<nlohmann::json>> get_object(const KubeTarget& target, const std::string& path) {
  auto r = request(target, "GET", path, "", "");
  if (!r) return fail(r.error());
  if (r->status == 404) return std::optional<nlohmann::json>();
  if (r->status != 200) return fail("GET " + path + ": " + status_message(r.value()));
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded()) return fail("GET " + path + ": the API server's answer is not JSON");
  return std::optional<nlohmann::json>(std::move(j));
}

}  // namespace clusterconnect::onboarding
