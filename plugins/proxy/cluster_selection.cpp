#include "cluster_selection.hpp"

#include <algorithm>

#include "clusterconnect/ascii.hpp"

namespace clusterconnect::proxy {
namespace {

// ARM's rules for both segments, loosely: no path or query characters, no
// whitespace or control characters, at most 90 (groups) and 63 (clusters).
bool valid_segment(const std::string& s, std::size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::none_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u <= ' ' || u == 0x7f || c == '/' || c == '\\' || c == '?' || c == '#' || c == '%';
  });
}

}  // namespace

std::string display_name(const ClusterRef& c) { return c.resource_group + "/" + c.name; }

bool same_cluster(const ClusterRef& a, const ClusterRef& b) {
  return ascii_iequals(a.subscription, b.subscription) && ascii_iequals(a.resource_group, b.resource_group) &&
         ascii_iequals(a.name, b.name);
}

Result<std::vector<ClusterRef>> select_clusters(const std::vector<std::string>& names, const std::string& resource_group,
                                                const std::string& subscription) {
  if (names.empty()) return fail("no cluster given: pass -n NAME (with -g GROUP), -n GROUP/NAME, or --all");
  std::vector<ClusterRef> out;
  for (const auto& given : names) {
    ClusterRef ref{subscription, resource_group, given};
    if (auto slash = given.find('/'); slash != std::string::npos) {
      ref.resource_group = given.substr(0, slash);
      ref.name = given.substr(slash + 1);
    } else if (resource_group.empty()) {
      return fail("cluster " + given + ": no resource group; pass -g GROUP, or name it -n GROUP/" + given);
    }
    if (!valid_segment(ref.resource_group, 90))
      return fail("-n " + given + ": '" + ref.resource_group + "' is not a resource group name (use -n NAME or -n GROUP/NAME)");
    if (!valid_segment(ref.name, 63))
      return fail("-n " + given + ": '" + ref.name + "' is not a cluster name (use -n NAME or -n GROUP/NAME)");
    if (std::none_of(out.begin(), out.end(), [&](const ClusterRef& c) { return same_cluster(c, ref); }))
      out.push_back(std::move(ref));
  }
  return out;
}

Result<std::vector<ServedCluster>> name_contexts(const std::vector<ClusterRef>& clusters, const std::string& kube_context) {
  if (!kube_context.empty() && clusters.size() > 1)
    return fail("--kube-context names one context, but " + std::to_string(clusters.size()) +
                " clusters are served: leave it out, each context is then named after its cluster");
  std::vector<ServedCluster> out;
  for (const auto& c : clusters) {
    const bool shared_name = std::count_if(clusters.begin(), clusters.end(), [&](const ClusterRef& o) {
                               return ascii_iequals(o.name, c.name);
                             }) > 1;
    ServedCluster s{c, c.name, "clusterUser_" + c.resource_group + "_" + c.name};
    if (!kube_context.empty()) s.context = kube_context;
    else if (shared_name) s.context = display_name(c);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace clusterconnect::proxy
