#include "connected_clusters.hpp"

#include "clusterconnect/arm_audience.hpp"
#include "clusterconnect/url.hpp"
#include "https_request.hpp"

namespace clusterconnect::onboarding {
namespace {

// "Code: message" from ARM's error body, else the status.
std::string arm_error(const HttpsResponse& r) {
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object())
    return j["error"].value("code", std::string("Error")) + ": " + j["error"].value("message", std::string());
  return "HTTP " + std::to_string(r.status);
}

Result<HttpsResponse> call(const ManagementTarget& m, const std::string& method, const std::string& path,
                           const std::string& body = "") {
  std::string endpoint = m.endpoint;
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  HttpsRequest q{method,    endpoint + path + "?api-version=" + m.api_version,
                 body,      body.empty() ? "" : "application/json",
                 m.token,   "",
                 m.ca_file, "",
                 ""};
  auto r = https_request(q);
  if (!r) return fail("the relay's management API " + m.endpoint + ": " + r.error());
  return r;
}

}  // namespace

std::string ClusterId::resource_id() const {
  return "/subscriptions/" + percent_encode(subscription) + "/resourceGroups/" + percent_encode(resource_group) +
         "/providers/Microsoft.Kubernetes/connectedClusters/" + percent_encode(name);
}

Result<ListenKey> parse_connection_string(const std::string& text) {
  ListenKey k;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find(';', start);
    if (end == std::string::npos) end = text.size();
    const std::string part = text.substr(start, end - start);
    start = end + 1;
    auto eq = part.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = part.substr(0, eq), value = part.substr(eq + 1);
    if (name == "Endpoint") {
      if (value.rfind("sb://", 0) != 0) return fail("the relay's connection string has no sb:// endpoint");
      k.relay = value.substr(5);
      while (!k.relay.empty() && k.relay.back() == '/') k.relay.pop_back();
    } else if (name == "SharedAccessKeyName") {
      k.key_name = value;
    } else if (name == "SharedAccessKey") {
      k.key = value;
    } else if (name == "EntityPath") {
      k.entity_path = value;
    }
  }
  if (k.relay.empty() || k.key_name.empty() || k.key.empty() || k.entity_path.empty())
    return fail("the relay's connection string lacks Endpoint, SharedAccessKeyName, SharedAccessKey or EntityPath");
  return k;
}

Result<std::string> management_audience(const std::string& endpoint, const std::string& ca_file) {
  std::string base = endpoint;
  while (!base.empty() && base.back() == '/') base.pop_back();
  auto r = https_request(HttpsRequest{"GET", base + "/metadata/endpoints", "", "", "", "", ca_file, "", ""});
  if (!r) return fail("the relay's management API " + endpoint + ": " + r.error());
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (r->status != 200 || !j.is_object() || !j.contains("authentication") || !j["authentication"].is_object() ||
      !j["authentication"].contains("audiences") || !j["authentication"]["audiences"].is_array() ||
      j["authentication"]["audiences"].empty() || !j["authentication"]["audiences"][0].is_string())
    return fail("the relay at " + endpoint + " publishes no management audience at /metadata/endpoints");
  const std::string audience = j["authentication"]["audiences"][0].get<std::string>();
  if (is_arm_audience(audience))
    return fail("the relay at " + endpoint +
                " asks for Azure Resource Manager's audience; a token for it is never sent to a relay");
  return audience;
}

Result<nlohmann::json> put_cluster(const ManagementTarget& m, const ClusterId& id, const nlohmann::json& body) {
  auto r = call(m, "PUT", id.resource_id(), body.dump());
  if (!r) return fail(r.error());
  if (r->status != 200 && r->status != 201) return fail("registering " + id.name + ": " + arm_error(r.value()));
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object()) return fail("registering " + id.name + ": the relay's answer is not a resource");
  return j;
}

Result<ListenKey> list_keys(const ManagementTarget& m, const ClusterId& id) {
  auto r = call(m, "POST", id.resource_id() + "/listKeys", "{}");
  if (!r) return fail(r.error());
  if (r->status != 200) return fail("fetching the listen key of " + id.name + ": " + arm_error(r.value()));
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("primaryConnectionString") || !j["primaryConnectionString"].is_string())
    return fail("fetching the listen key of " + id.name + ": no primaryConnectionString in the relay's answer");
  return parse_connection_string(j["primaryConnectionString"].get<std::string>());
}

Result<std::optional<nlohmann::json>> get_cluster(const ManagementTarget& m, const ClusterId& id) {
  auto r = call(m, "GET", id.resource_id());
  if (!r) return fail(r.error());
  if (r->status == 404) return std::optional<nlohmann::json>();
  if (r->status != 200) return fail("reading " + id.name + ": " + arm_error(r.value()));
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object()) return fail("reading " + id.name + ": the relay's answer is not a resource");
  return std::optional<nlohmann::json>(std::move(j));
}

Result<nlohmann::json> list_clusters(const ManagementTarget& m, const std::string& subscription,
                                     const std::string& resource_group) {
  std::string path = "/subscriptions/" + percent_encode(subscription);
  if (!resource_group.empty()) path += "/resourceGroups/" + percent_encode(resource_group);
  auto r = call(m, "GET", path + "/providers/Microsoft.Kubernetes/connectedClusters");
  if (!r) return fail(r.error());
  if (r->status != 200) return fail("listing connected clusters: " + arm_error(r.value()));
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("value") || !j["value"].is_array())
    return fail("listing connected clusters: the relay's answer is not a list");
  return j["value"];
}

Result<bool> delete_cluster(const ManagementTarget& m, const ClusterId& id) {
  auto r = call(m, "DELETE", id.resource_id());
  if (!r) return fail(r.error());
  if (r->status == 200 || r->status == 202) return true;
  if (r->status == 204) return false;
  return fail("deleting " + id.name + ": " + arm_error(r.value()));
}

}  // namespace clusterconnect::onboarding
