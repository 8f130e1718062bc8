#pragma once
// Turning a kubeconfig tree back into text. yaml-cpp drops comments and
// quoting when it re-emits a document, so the text of every top-level section
// and list entry whose data did not change is copied from the original file
// instead; only what changed is emitted. The result is parsed again and must
// hold exactly the intended data, otherwise the whole tree is emitted.

#include <string>

#include <yaml-cpp/yaml.h>

#include "clusterconnect/result.hpp"

namespace clusterconnect::kubeconfig {

// `original` is the tree parsed from `original_text` (null for a new file).
Result<std::string> lay_out_kubeconfig(const std::string& original_text, const YAML::Node& original,
                                       const YAML::Node& modified) noexcept;

// The whole tree emitted by yaml-cpp, keeping key order, flow/block style and
// which scalars were quoted.
std::string emit_yaml(const YAML::Node& root);

}  // namespace clusterconnect::kubeconfig
