// Files that are not in kubectl's plain layout: whatever the text looks
// like, a merge keeps every foreign value and changes only our entries.

#include <catch2/catch.hpp>

#include "../../support/test_env.hpp"
#include "kubeconfig_test_support.hpp"
#include "yaml_kubeconfig.hpp"

namespace fs = std::filesystem;
using namespace clusterconnect;
using namespace clusterconnect::kubeconfig;
using namespace clusterconnect::kubeconfig::test;
using clusterconnect::test::TempDir;

namespace {

// The tree without our entries and current-context, to compare before and after.
YAML::Node foreign_part(const YAML::Node& root) {
  YAML::Node out(YAML::NodeType::Map);
  for (const auto& kv : root) {
    const std::string key = kv.first.Scalar();
    if (key == "current-context") continue;
    if (key == "clusters" || key == "users" || key == "contexts") {
      YAML::Node kept(YAML::NodeType::Sequence);
      if (kv.second.IsSequence())
        for (const auto& item : kv.second) {
          const std::string name = item["name"].IsDefined() ? item["name"].Scalar() : "";
          if (name != "arc" && name != "arc-user") kept.push_back(item);
        }
      if (kept.size() > 0) out[key] = kept;  // an emptied list is no foreign value
      continue;
    }
    out[key] = kv.second;
  }
  return out;
}

}  // namespace

TEST_CASE("kubeconfig: unusual layouts keep every foreign value through merge and remove", "[kubeconfig][layout]") {
  const std::string content = GENERATE(
      // Document marker, anchors and aliases, an entry whose dash stands alone,
      // a keep-chomped literal block, comments between entries, explicit tags.
      std::string("---\n# leading\napiVersion: v1\nbase: &b\n  server: https://anchored\nclusters:\n-\n"
                  "  name: odd\n  cluster: *b\n- name: lit\n  cluster:\n    server: https://x\n    note: |+\n"
                  "      keep\n      # not a comment\n\n# between\n- name: arc\n  cluster: !!map {server: https://old}\n"
                  "kind: Config\nusers: null\ntagged: !!str 123\nlocal: !custom value\n"),
      // Windows line ends.
      std::string("apiVersion: v1\r\nclusters:\r\n- name: a\r\n  cluster:\r\n    server: https://a\r\n"
                  "kind: Config\r\ncurrent-context: a\r\n"),
      // Indented lists, quoted keys, no trailing newline.
      std::string("\"apiVersion\": v1\nclusters:\n  - name: a\n    cluster: {server: 'https://a', x: \"1\"}\n"
                  "  - name: arc\n    cluster:\n      server: https://old\ncontexts: []\nusers:\n  - name: u\n"
                  "    user: {token: '0x1F'}\ncurrent-context: a"),
      // A literal block whose trailing blank line sits just above a key the
      // merge rewrites: copying sections naively would drop that line.
      std::string("apiVersion: v1\npreferences:\n  note: |+\n    text\n\ncurrent-context: old\n"));
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, content);
  const YAML::Node before = YAML::LoadFile(file.string());
  YamlKubeconfig kc;

  REQUIRE(kc.merge(file, arc_entry()).ok());
  const std::string merged = slurp(file);
  INFO(merged);
  const YAML::Node after = YAML::Load(merged);
  CHECK(dump(foreign_part(after)) == dump(foreign_part(before)));
  CHECK(named(after, "clusters", "arc")["cluster"]["server"].Scalar() == "https://127.0.0.1:47011");
  CHECK(named(after, "users", "arc-user")["user"]["token"].Scalar() == "secret-arc");
  CHECK(after["current-context"].Scalar() == "arc");
  if (content.find("\r\n") != std::string::npos) {
    for (std::size_t at = merged.find('\n'); at != std::string::npos; at = merged.find('\n', at + 1))
      CHECK(merged[at - 1] == '\r');
  }

  REQUIRE(kc.remove(file, "arc", "arc-user", "arc").ok());
  const YAML::Node removed = YAML::LoadFile(file.string());
  CHECK(dump(foreign_part(removed)) == dump(foreign_part(before)));
  CHECK(count_named(removed, "clusters", "arc") == 0);
}

TEST_CASE("kubeconfig: a keep-chomped literal keeps its trailing blank line", "[kubeconfig][layout]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, "apiVersion: v1\npreferences:\n  note: |+\n    text\n\ncurrent-context: old\n");
  YamlKubeconfig kc;
  REQUIRE(kc.merge(file, arc_entry()).ok());
  CHECK(YAML::LoadFile(file.string())["preferences"]["note"].Scalar() == "text\n\n");
}
