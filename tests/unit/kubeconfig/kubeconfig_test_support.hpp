#pragma once
// Helpers shared by the kubeconfig tests: file contents and modes, a test
// entry, and a tree dump that the comparisons use instead of the code under
// test's own node comparison.

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "clusterconnect/kubeconfig.hpp"

namespace clusterconnect::kubeconfig::test {

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void spit(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

inline unsigned mode_of(const std::filesystem::path& p) {
  struct stat st {};
  ::stat(p.c_str(), &st);
  return st.st_mode & 07777;
}

// Every name in a directory, to prove no temp or lock file was left behind.
inline std::vector<std::string> listing(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// A canonical dump of a tree: type, quoting and value of every node, in order.
inline std::string dump(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "~";
  if (n.IsScalar()) return (n.Tag() == "!" ? "'" : "") + n.Scalar() + (n.Tag() == "!" ? "'" : "");
  std::string out = n.IsSequence() ? "[" : "{";
  for (auto it = n.begin(); it != n.end(); ++it) {
    if (n.IsSequence())
      out += dump(*it) + ",";
    else
      out += dump(it->first) + ":" + dump(it->second) + ",";
  }
  return out + (n.IsSequence() ? "]" : "}");
}

// The entry (list item) named `name` in `list_key`, or an undefined node.
inline YAML::Node named(const YAML::Node& root, const std::string& list_key, const std::string& name) {
  const YAML::Node list = root[list_key];
  if (list.IsDefined() && list.IsSequence())
    for (const auto& item : list)
      if (item["name"].IsDefined() && item["name"].Scalar() == name) return item;
  return YAML::Node(YAML::NodeType::Undefined);
}

inline std::size_t count_named(const YAML::Node& root, const std::string& list_key, const std::string& name) {
  std::size_t n = 0;
  const YAML::Node list = root[list_key];
  if (list.IsDefined() && list.IsSequence())
    for (const auto& item : list)
      if (item["name"].IsDefined() && item["name"].Scalar() == name) ++n;
  return n;
}

inline const std::string test_pem =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTESTTESTTESTTESTTESTTESTTEST\n-----END CERTIFICATE-----\n";

inline KubeconfigEntry arc_entry(const std::string& name = "arc") {
  KubeconfigEntry e;
  e.cluster = name;
  e.server = "https://127.0.0.1:47011";
  e.certificate_authority_data = test_pem;
  e.user = name + "-user";
  e.token = "secret-" + name;
  e.context = name;
  return e;
}

}  // namespace clusterconnect::kubeconfig::test
