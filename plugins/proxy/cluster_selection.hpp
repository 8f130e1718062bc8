#pragma once
// Which clusters one `connectedk8s proxy` serves, and what each is called in
// the kubeconfig. `-n NAME` takes the resource group from `-g`; `-n
// GROUP/NAME` names its own, so clusters of several groups share a process.

#include <string>
#include <vector>

#include "clusterconnect/result.hpp"
#include "management_client.hpp"

namespace clusterconnect::proxy {

// A cluster this process serves and the names the kubeconfig gives it.
struct ServedCluster {
  ClusterRef ref;
  std::string context;  // contexts[].name and clusters[].name
  std::string user;     // users[].name: clusterUser_GROUP_NAME, as az connectedk8s names it
};

// The `-n` values resolved against `-g` (the group for bare names): at least
// one, each NAME or GROUP/NAME, duplicates (case-insensitive, as ARM compares
// names) dropped, in the order given.
Result<std::vector<ClusterRef>> select_clusters(const std::vector<std::string>& names, const std::string& resource_group,
                                                const std::string& subscription);

// Kubeconfig names: one cluster keeps the single-cluster naming (the cluster
// name, or `kube_context` when given); several are each named after the
// cluster, and GROUP/NAME for names that occur in more than one group.
// `kube_context` with several clusters is refused: it names one context.
Result<std::vector<ServedCluster>> name_contexts(const std::vector<ClusterRef>& clusters, const std::string& kube_context);

// "GROUP/NAME", for messages and `proxy status`.
std::string display_name(const ClusterRef& cluster);

// Same cluster: subscription, group and name compared as ARM compares them.
bool same_cluster(const ClusterRef& a, const ClusterRef& b);

}  // namespace clusterconnect::proxy
