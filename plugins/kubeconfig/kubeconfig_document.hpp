#pragma once
// The kubeconfig data model on top of yaml-cpp: parsing, merging and removing
// entries. Everything here works on the YAML tree; nothing touches files.

#include <string>

#include <yaml-cpp/yaml.h>

#include "clusterconnect/kubeconfig.hpp"
#include "clusterconnect/result.hpp"

namespace clusterconnect::kubeconfig {

// Parses a kubeconfig's text. An empty document yields a null node. The
// message of a failure is a reason to append to "cannot update FILE: ", e.g.
// "it is not valid YAML (line 3, column 5: ...)".
Result<YAML::Node> parse_kubeconfig(const std::string& text) noexcept;

// Checks the fields a usable entry needs.
Result<void> validate_entry(const KubeconfigEntry& entry);

// An empty kubeconfig (apiVersion v1, kind Config, no entries).
YAML::Node new_kubeconfig();

// Merges `entry` into `root` (a mapping): replaces the cluster, user and
// context of the same names, or appends them. Failure messages are reasons,
// like parse_kubeconfig's.
Result<void> merge_entry(YAML::Node& root, const KubeconfigEntry& entry);

// Removes the named entries that exist (empty names are skipped) and clears
// current-context if it named the removed context.
Result<void> remove_entries(YAML::Node& root, const std::string& cluster, const std::string& user,
                            const std::string& context);

// A standalone document holding only `entry`, with current-context set to it.
YAML::Node standalone_kubeconfig(const KubeconfigEntry& entry);

// Whether two trees hold the same data, including key order and whether
// scalars were quoted (a quoted "123" is a string, a plain 123 a number).
bool same_node(const YAML::Node& a, const YAML::Node& b);

}  // namespace clusterconnect::kubeconfig
