#include "relay_config.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "clusterconnect/ascii.hpp"
#include "clusterconnect/certificates.hpp"

namespace clusterconnect::relay {

namespace {

bool iequals(std::string_view a, std::string_view b) { return ascii_iequals(a, b); }

std::string trim_slashes(std::string s) {
  while (!s.empty() && s.front() == '/') s.erase(s.begin());
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}

std::string get_string(const nlohmann::json& j, const char* field, const std::string& where, bool required) {
  if (!j.contains(field)) {
    if (required) throw std::runtime_error(where + ": missing \"" + field + "\"");
    return {};
  }
  if (!j[field].is_string()) throw std::runtime_error(where + ": \"" + field + "\" must be a string");
  return j[field].get<std::string>();
}

std::string read_secret(const std::filesystem::path& file, const std::string& where) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(where + ": cannot read secret_file " + file.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  if (s.empty()) throw std::runtime_error(where + ": secret_file " + file.string() + " is empty");
  if (s.size() > 4096) throw std::runtime_error(where + ": secret_file " + file.string() + " is over 4 KiB");
  return s;
}

template <class T>
void read_number(const nlohmann::json& j, const char* field, T& out, const std::string& where) {
  if (!j.contains(field)) return;
  if (!j[field].is_number_unsigned()) throw std::runtime_error(where + ": \"" + field + "\" must be a non-negative integer");
  out = j[field].get<T>();
}

void read_ms(const nlohmann::json& j, const char* field, std::chrono::milliseconds& out, const std::string& where) {
  std::uint64_t v = 0;
  if (!j.contains(field)) return;
  read_number(j, field, v, where);
  out = std::chrono::milliseconds(v);
}

}  // namespace

bool RelayKey::has_right(std::string_view right) const {
  return std::any_of(rights.begin(), rights.end(), [&](const std::string& r) { return iequals(r, right); });
}

namespace {

// ARM's action patterns: `*` matches any run of characters; case-insensitive.
bool action_matches(std::string_view pattern, std::string_view action) {
  std::size_t p = 0, a = 0, star = std::string_view::npos, mark = 0;
  while (a < action.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = a;
    } else if (p < pattern.size() && ascii_lower(pattern[p]) == ascii_lower(action[a])) {
      ++p;
      ++a;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      a = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace

bool RoleDefinition::allows(std::string_view action) const {
  auto match = [&](const std::string& pattern) { return action_matches(pattern, action); };
  return std::any_of(actions.begin(), actions.end(), match) && std::none_of(not_actions.begin(), not_actions.end(), match);
}

const std::vector<RoleDefinition>& builtin_role_definitions() {
  static const std::vector<RoleDefinition> roles = [] {
    const std::string read(action_read), list(action_list_credential);
    const std::string write = "Microsoft.Kubernetes/connectedClusters/write";
    const std::string remove = "Microsoft.Kubernetes/connectedClusters/delete";
    return std::vector<RoleDefinition>{
        {"Owner", {"*"}, {}},
        {"Contributor", {"*"}, {}},
        {"Reader", {"*/read"}, {}},
        {"Azure Arc Enabled Kubernetes Cluster User Role", {read, list}, {}},
        // Data-plane roles: they say what a user may do inside the cluster
        // (its RBAC), not that the user may fetch a connect credential.
        {"Azure Arc Kubernetes Viewer", {read}, {}},
        {"Azure Arc Kubernetes Writer", {read}, {}},
        {"Azure Arc Kubernetes Admin", {read}, {}},
        {"Azure Arc Kubernetes Cluster Admin", {read}, {}},
        {"Kubernetes Cluster - Azure Arc Onboarding", {read, write}, {}},
        {"Azure Arc Kubernetes Cluster Manager", {read, write, remove}, {}},
    };
  }();
  return roles;
}

const RoleDefinition* Registry::role(std::string_view name) const {
  for (const auto& r : role_definitions)
    if (iequals(r.name, name)) return &r;
  for (const auto& r : builtin_role_definitions())
    if (iequals(r.name, name)) return &r;
  return nullptr;
}

const RelayKey* ClusterEntry::key(std::string_view key_name) const {
  for (const auto& k : keys)
    if (k.name == key_name) return &k;
  return nullptr;
}

const RelayKey* ClusterEntry::key_with_right(std::string_view right) const {
  for (const auto& k : keys)
    if (k.has_right(right)) return &k;
  return nullptr;
}

std::string ClusterEntry::identity() const { return ascii_lowered(resource_id()); }

const ClusterEntry* Registry::cluster_by_identity(std::string_view identity) const {
  for (const auto& c : clusters)
    if (iequals(c.resource_id(), identity)) return &c;
  return nullptr;
}

std::string ClusterEntry::resource_id() const {
  return "/subscriptions/" + subscription + "/resourceGroups/" + resource_group +
         "/providers/Microsoft.Kubernetes/connectedClusters/" + name;
}

const ClusterEntry* Registry::cluster_by_path(std::string_view path) const {
  for (const auto& c : clusters)
    if (iequals(c.hybrid_connection, path)) return &c;
  return nullptr;
}

const ClusterEntry* Registry::cluster_by_path_prefix(std::string_view path, std::string_view& rest) const {
  const ClusterEntry* best = nullptr;
  for (const auto& c : clusters) {
    const auto& hc = c.hybrid_connection;
    if (hc.size() > path.size() || (best && hc.size() <= best->hybrid_connection.size())) continue;
    if (!iequals(hc, path.substr(0, hc.size()))) continue;
    if (path.size() > hc.size() && path[hc.size()] != '/') continue;
    best = &c;
  }
  if (best) rest = path.substr(best->hybrid_connection.size());
  return best;
}

const ClusterEntry* Registry::cluster_by_name(std::string_view subscription, std::string_view resource_group,
                                                 std::string_view name) const {
  for (const auto& c : clusters)
    if (iequals(c.subscription, subscription) && iequals(c.resource_group, resource_group) && iequals(c.name, name)) return &c;
  return nullptr;
}

RoleDefinition parse_role_definition(const nlohmann::json& rj, const std::string& where, const Registry& registry) {
  if (!rj.is_object()) throw std::runtime_error(where + ": must be an object");
  RoleDefinition r;
  r.name = get_string(rj, "name", where, true);
  auto strings = [&](const char* field, std::vector<std::string>& out) {
    if (!rj.contains(field)) return;
    if (!rj[field].is_array()) throw std::runtime_error(where + ": \"" + field + "\" must be an array of strings");
    for (const auto& a : rj[field]) {
      if (!a.is_string() || a.get<std::string>().empty())
        throw std::runtime_error(where + ": \"" + field + "\" must be an array of non-empty strings");
      out.push_back(a.get<std::string>());
    }
  };
  strings("actions", r.actions);
  strings("not_actions", r.not_actions);
  if (registry.role(r.name)) throw std::runtime_error(where + ": role \"" + r.name + "\" is already defined");
  return r;
}

ClusterEntry parse_cluster_entry(const nlohmann::json& cj, const std::string& where, const Registry& registry,
                                 const std::filesystem::path& base_dir) {
  if (!cj.is_object()) throw std::runtime_error(where + ": must be an object");
  ClusterEntry e;
  e.raw = cj;
  e.subscription = get_string(cj, "subscription", where, false);
  e.resource_group = get_string(cj, "resource_group", where, false);
  e.name = get_string(cj, "name", where, true);
  e.hybrid_connection = trim_slashes(get_string(cj, "hybrid_connection", where, true));
  if (e.hybrid_connection.empty()) throw std::runtime_error(where + ": \"hybrid_connection\" is empty");
  if (registry.cluster_by_path(e.hybrid_connection))
    throw std::runtime_error(where + ": hybrid_connection \"" + e.hybrid_connection + "\" is used twice");
  // A cluster is known by its full identity: two entries with one identity
  // would make which of them a caller reaches depend on file order.
  if (registry.cluster_by_name(e.subscription, e.resource_group, e.name))
    throw std::runtime_error(where + ": cluster " + e.resource_id() + " is registered twice");
  if (cj.contains("keys")) {
    if (!cj["keys"].is_array()) throw std::runtime_error(where + ": \"keys\" must be an array");
    for (std::size_t k = 0; k < cj["keys"].size(); ++k) {
      const auto& kj = cj["keys"][k];
      const std::string kw = where + ".keys[" + std::to_string(k) + "]";
      if (!kj.is_object()) throw std::runtime_error(kw + ": must be an object");
      RelayKey key;
      key.name = get_string(kj, "name", kw, true);
      if (kj.contains("rights")) {
        if (!kj["rights"].is_array()) throw std::runtime_error(kw + ": \"rights\" must be an array of strings");
        for (const auto& r : kj["rights"]) {
          if (!r.is_string()) throw std::runtime_error(kw + ": \"rights\" must be an array of strings");
          key.rights.push_back(r.get<std::string>());
        }
      }
      if (kj.contains("secret") && kj["secret"].is_string()) {
        // Inline: the etcd store's records (etcd is the trust root), tests and demos.
        key.secret = kj["secret"].get<std::string>();
        if (key.secret.empty() || key.secret.size() > 4096)
          throw std::runtime_error(kw + ": \"secret\" must be 1 to 4096 characters");
      } else {
        std::filesystem::path f = get_string(kj, "secret_file", kw, true);
        if (f.is_relative()) f = base_dir / f;
        key.secret_file = f;
        key.secret = read_secret(f, kw);
      }
      // Keys are separated by right: an agent's listen key cannot mint a
      // client's connect token, nor the reverse.
      if (key.has_right("listen") == key.has_right("connect"))
        throw std::runtime_error(kw + ": a key has exactly one of the rights \"listen\" and \"connect\" (key \"" +
                                 key.name + "\")");
      if (e.key(key.name)) throw std::runtime_error(kw + ": key name \"" + key.name + "\" is used twice");
      e.keys.push_back(std::move(key));
    }
  }
  if (cj.contains("role_assignments")) {
    if (!cj["role_assignments"].is_array()) throw std::runtime_error(where + ": \"role_assignments\" must be an array");
    for (const auto& rj : cj["role_assignments"]) {
      if (!rj.is_object()) throw std::runtime_error(where + ": role_assignments entries must be objects");
      ConfiguredRoleAssignment a{get_string(rj, "principal", where, true), get_string(rj, "role", where, true)};
      if (!registry.role(a.role))
        throw std::runtime_error(where + ": role \"" + a.role +
                                 "\" is not defined (a built-in Azure role, e.g. \"Azure Arc Enabled Kubernetes "
                                 "Cluster User Role\", or one of role_definitions)");
      e.role_assignments.push_back(std::move(a));
    }
  }
  if (cj.contains("agent_key_pins")) {
    if (!cj["agent_key_pins"].is_array()) throw std::runtime_error(where + ": \"agent_key_pins\" must be an array");
    for (const auto& pj : cj["agent_key_pins"]) {
      if (!pj.is_string() || !tls::is_public_key_pin(pj.get<std::string>()))
        throw std::runtime_error(where + ": agent_key_pins entries are SHA-256 pins of the agent's public key, 64 hex "
                                         "digits (clusterconnect-agent --print-key-pin)");
      e.agent_key_pins.push_back(ascii_lowered(pj.get<std::string>()));
    }
  }
  return e;
}

RelayConfig parse_relay_config(const nlohmann::json& j, const std::filesystem::path& base_dir) {
  if (!j.is_object()) throw std::runtime_error("relay config: the top level must be a JSON object");
  RelayConfig c;
  c.raw = j;
  c.base_dir = base_dir;
  if (j.contains("listen")) c.listen = get_string(j, "listen", "relay config", true);
  c.public_host = get_string(j, "public_host", "relay config", false);
  c.metrics_listen = get_string(j, "metrics_listen", "relay config", false);
  if (j.contains("tls")) {
    const auto& t = j["tls"];
    if (!t.is_object()) throw std::runtime_error("relay config: \"tls\" must be an object");
    auto resolve = [&](std::string p) {
      if (!p.empty() && std::filesystem::path(p).is_relative()) p = (base_dir / p).string();
      return p;
    };
    c.cert_file = resolve(get_string(t, "cert_file", "relay config tls", false));
    c.key_file = resolve(get_string(t, "key_file", "relay config tls", false));
  }
  if (j.contains("limits")) {
    const auto& l = j["limits"];
    const std::string where = "relay config limits";
    if (!l.is_object()) throw std::runtime_error("relay config: \"limits\" must be an object");
    read_number(l, "max_tunnels_per_cluster", c.limits.max_tunnels_per_cluster, where);
    read_number(l, "max_connections", c.limits.max_connections, where);
    read_number(l, "max_connections_per_address", c.limits.max_connections_per_address, where);
    read_ms(l, "idle_timeout_ms", c.limits.idle_timeout, where);
    read_ms(l, "drain_timeout_ms", c.limits.drain_timeout, where);
    read_number(l, "max_http_body", c.limits.max_http_body, where);
    read_ms(l, "http_response_timeout_ms", c.limits.http_response_timeout, where);
  }
  if (j.contains("management")) c.management = j["management"];
  if (j.contains("role_definitions")) {
    if (!j["role_definitions"].is_array()) throw std::runtime_error("relay config: \"role_definitions\" must be an array");
    for (std::size_t i = 0; i < j["role_definitions"].size(); ++i) {
      const auto& rj = j["role_definitions"][i];
      const std::string where = "relay config role_definitions[" + std::to_string(i) + "]";
      c.role_definitions.push_back(parse_role_definition(rj, where, c));
    }
  }
  if (j.contains("clusters")) {
    if (!j["clusters"].is_array()) throw std::runtime_error("relay config: \"clusters\" must be an array");
    for (std::size_t i = 0; i < j["clusters"].size(); ++i) {
      const auto& cj = j["clusters"][i];
      const std::string where = "relay config clusters[" + std::to_string(i) + "]";
      c.clusters.push_back(parse_cluster_entry(cj, where, c, base_dir));
    }
  }
  return c;
}

RelayConfig load_relay_config(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("cannot read relay config " + file.string());
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) throw std::runtime_error("relay config " + file.string() + " is not valid JSON");
  auto base = std::filesystem::absolute(file).parent_path();
  try {
    return parse_relay_config(j, base);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(file.string() + ": " + e.what());
  }
}

}  // namespace clusterconnect::relay
