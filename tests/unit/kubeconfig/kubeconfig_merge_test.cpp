// Merging, replacing, removing and rendering kubeconfig entries, and what
// happens to everything else in the file.

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include "../../support/test_env.hpp"
#include "kubeconfig_test_support.hpp"
#include "yaml_kubeconfig.hpp"

namespace fs = std::filesystem;
using namespace clusterconnect;
using namespace clusterconnect::kubeconfig;
using namespace clusterconnect::kubeconfig::test;
using clusterconnect::test::TempDir;

namespace {

// A hand-edited file in kubectl's layout with foreign entries, comments,
// quoted strings that look like numbers, and fields clusterconnect does not know.
const std::string foreign_header = "# my clusters, edited by hand\napiVersion: v1\nkind: Config\n";
const std::string foreign_preferences =
    "preferences:\n"
    "  colors: true\n"
    "  extensions:\n"
    "  - name: pref-ext\n"
    "    extension:\n"
    "      foo: bar\n";
const std::string foreign_prod_cluster =
    "- cluster:\n"
    "    certificate-authority-data: Zm9vCg==\n"
    "    server: https://prod.example.com:6443\n"
    "    extensions:\n"
    "    - name: client.authentication.k8s.io/exec\n"
    "      extension:\n"
    "        audience: '0123'   # must stay a string\n"
    "  name: prod\n";
const std::string foreign_arc_cluster =
    "- name: arc\n"
    "  cluster:\n"
    "    server: https://old.example.com\n"
    "    insecure-skip-tls-verify: true\n"
    "    extensions:\n"
    "    - name: keep-me\n"
    "      extension: {a: 1}\n";
const std::string foreign_prod_context =
    "- context:\n"
    "    cluster: prod\n"
    "    user: prod-admin\n"
    "    namespace: \"007\"\n"
    "  name: prod\n";
const std::string foreign_arc_context =
    "- name: arc\n"
    "  context:\n"
    "    cluster: arc\n"
    "    user: arc-user\n"
    "    namespace: team-a\n";
const std::string foreign_prod_user =
    "# the admin uses kubelogin\n"
    "- name: prod-admin\n"
    "  user:\n"
    "    exec:\n"
    "      apiVersion: client.authentication.k8s.io/v1\n"
    "      command: kubelogin\n"
    "      args: [get-token, --server-id, \"6256c85f\"]\n"
    "      env: null\n";
const std::string foreign_arc_user =
    "- name: arc-user\n"
    "  user:\n"
    "    token: old-token\n"
    "    username: someone\n";
const std::string foreign_tail =
    "extensions:\n"
    "- name: top-ext\n"
    "  extension:\n"
    "    version: \"1.0\"\n"
    "x-unknown-top: {nested: [1, 2, \"3\"]}  # a tool's own field\n";

std::string foreign_file() {
  return foreign_header + foreign_preferences + "clusters:\n" + foreign_prod_cluster + foreign_arc_cluster +
         "contexts:\n" + foreign_prod_context + foreign_arc_context + "current-context: prod\nusers:\n" +
         foreign_prod_user + foreign_arc_user + foreign_tail;
}

KubeconfigOptions quick_lock() {
  KubeconfigOptions o;
  o.lock_timeout = std::chrono::milliseconds(300);
  o.lock_retry_interval = std::chrono::milliseconds(10);
  return o;
}

}  // namespace

TEST_CASE("kubeconfig: merge creates a missing file 0600 in a new 0700 directory", "[kubeconfig]") {
  TempDir tmp;
  const fs::path dir = tmp.path() / "home" / ".kube";
  const fs::path file = dir / "config";
  ::umask(022);
  YamlKubeconfig kc(quick_lock());

  auto r = kc.merge(file, arc_entry());
  REQUIRE(r.ok());
  CHECK(mode_of(file) == 0600);
  CHECK(mode_of(dir) == 0700);
  CHECK(mode_of(tmp.path() / "home") == 0700);
  CHECK(listing(dir) == std::vector<std::string>{"config"});

  const YAML::Node root = YAML::LoadFile(file.string());
  CHECK(root["apiVersion"].Scalar() == "v1");
  CHECK(root["kind"].Scalar() == "Config");
  CHECK(root["current-context"].Scalar() == "arc");
  const YAML::Node cluster = named(root, "clusters", "arc")["cluster"];
  CHECK(cluster["server"].Scalar() == "https://127.0.0.1:47011");
  CHECK(cluster["certificate-authority-data"].Scalar() == "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJzekNDQVZtZ0F3SUJBZ0lVVEVTVFRFU1RURVNUVEVTVFRFU1RURVNUVEVTVAotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==");
  CHECK(named(root, "users", "arc-user")["user"]["token"].Scalar() == "secret-arc");
  const YAML::Node context = named(root, "contexts", "arc")["context"];
  CHECK(context["cluster"].Scalar() == "arc");
  CHECK(context["user"].Scalar() == "arc-user");
  CHECK_FALSE(context["namespace"].IsDefined());
}

TEST_CASE("kubeconfig: merge keeps foreign entries, comments and unknown fields byte for byte", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, foreign_file());
  ::chmod(file.c_str(), 0600);
  const YAML::Node before = YAML::LoadFile(file.string());
  YamlKubeconfig kc(quick_lock());

  REQUIRE(kc.merge(file, arc_entry()).ok());
  const std::string text = slurp(file);
  const YAML::Node after = YAML::Load(text);

  // Untouched sections and entries: same data, and the very same text.
  for (const std::string& untouched : {foreign_header, foreign_preferences, foreign_prod_cluster,
                                       foreign_prod_context, foreign_prod_user, foreign_tail})
    CHECK(text.find(untouched) != std::string::npos);
  CHECK(dump(after["preferences"]) == dump(before["preferences"]));
  CHECK(dump(after["extensions"]) == dump(before["extensions"]));
  CHECK(dump(after["x-unknown-top"]) == dump(before["x-unknown-top"]));
  CHECK(dump(named(after, "clusters", "prod")) == dump(named(before, "clusters", "prod")));
  CHECK(dump(named(after, "contexts", "prod")) == dump(named(before, "contexts", "prod")));
  CHECK(dump(named(after, "users", "prod-admin")) == dump(named(before, "users", "prod-admin")));
  // Key order of the top level is unchanged.
  std::vector<std::string> keys;
  for (const auto& kv : after) keys.push_back(kv.first.Scalar());
  CHECK(keys == std::vector<std::string>{"apiVersion", "kind", "preferences", "clusters", "contexts",
                                         "current-context", "users", "extensions", "x-unknown-top"});

  // The entries of the same name were replaced, in place, not duplicated.
  CHECK(count_named(after, "clusters", "arc") == 1);
  CHECK(count_named(after, "users", "arc-user") == 1);
  CHECK(count_named(after, "contexts", "arc") == 1);
  CHECK(after["clusters"][1]["name"].Scalar() == "arc");
  const YAML::Node cluster = named(after, "clusters", "arc")["cluster"];
  CHECK(cluster["server"].Scalar() == "https://127.0.0.1:47011");
  CHECK_FALSE(cluster["insecure-skip-tls-verify"].IsDefined());  // would make kubectl refuse the CA
  CHECK(cluster["extensions"][0]["name"].Scalar() == "keep-me");
  const YAML::Node user = named(after, "users", "arc-user")["user"];
  CHECK(user["token"].Scalar() == "secret-arc");
  CHECK_FALSE(user["username"].IsDefined());
  // Without a namespace in the entry, the namespace the user chose survives.
  CHECK(named(after, "contexts", "arc")["context"]["namespace"].Scalar() == "team-a");
  CHECK(after["current-context"].Scalar() == "arc");
  CHECK(mode_of(file) == 0600);
}

TEST_CASE("kubeconfig: merge sets the namespace and leaves current-context alone when asked", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, foreign_file());
  YamlKubeconfig kc(quick_lock());
  KubeconfigEntry e = arc_entry();
  e.namespace_ = "ns1";
  e.set_current = false;
  REQUIRE(kc.merge(file, e).ok());
  const YAML::Node after = YAML::LoadFile(file.string());
  CHECK(named(after, "contexts", "arc")["context"]["namespace"].Scalar() == "ns1");
  CHECK(after["current-context"].Scalar() == "prod");
}

TEST_CASE("kubeconfig: merging twice with new values replaces the entries", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.merge(file, arc_entry("one")).ok());
  REQUIRE(kc.merge(file, arc_entry("two")).ok());
  KubeconfigEntry again = arc_entry("one");
  again.token = "rotated";
  again.server = "https://127.0.0.1:47099";
  REQUIRE(kc.merge(file, again).ok());
  const YAML::Node root = YAML::LoadFile(file.string());
  CHECK(root["clusters"].size() == 2);
  CHECK(root["users"].size() == 2);
  CHECK(root["contexts"].size() == 2);
  CHECK(named(root, "users", "one-user")["user"]["token"].Scalar() == "rotated");
  CHECK(named(root, "clusters", "one")["cluster"]["server"].Scalar() == "https://127.0.0.1:47099");
  CHECK(named(root, "users", "two-user")["user"]["token"].Scalar() == "secret-two");
  CHECK(root["current-context"].Scalar() == "one");
}

TEST_CASE("kubeconfig: merging an entry that is already there leaves the file alone", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.merge(file, arc_entry()).ok());
  struct stat first {};
  ::stat(file.c_str(), &first);
  REQUIRE(kc.merge(file, arc_entry()).ok());
  struct stat second {};
  ::stat(file.c_str(), &second);
  CHECK(second.st_ino == first.st_ino);  // a rewrite would rename a new inode in
}

TEST_CASE("kubeconfig: merge removes duplicate entries of the same name", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file,
       "clusters:\n- name: arc\n  cluster: {server: https://a}\n- name: other\n  cluster: {server: https://o}\n"
       "- name: arc\n  cluster: {server: https://b}\n");
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.merge(file, arc_entry()).ok());
  const YAML::Node root = YAML::LoadFile(file.string());
  CHECK(count_named(root, "clusters", "arc") == 1);
  CHECK(named(root, "clusters", "arc")["cluster"]["server"].Scalar() == "https://127.0.0.1:47011");
  CHECK(named(root, "clusters", "other")["cluster"]["server"].Scalar() == "https://o");
}

TEST_CASE("kubeconfig: values that look like numbers or booleans stay strings", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  YamlKubeconfig kc(quick_lock());
  KubeconfigEntry e = arc_entry("true");
  e.user = "0123";
  e.token = "1e3";
  e.namespace_ = "null";
  REQUIRE(kc.merge(file, e).ok());
  const YAML::Node root = YAML::LoadFile(file.string());
  CHECK(root["current-context"].Tag() == "!");
  CHECK(named(root, "users", "0123")["name"].Tag() == "!");
  CHECK(named(root, "users", "0123")["user"]["token"].Tag() == "!");
  CHECK(named(root, "contexts", "true")["context"]["namespace"].Tag() == "!");
  CHECK(named(root, "contexts", "true")["context"]["namespace"].Scalar() == "null");
}

TEST_CASE("kubeconfig: an existing file keeps owner bits but loses group and other access", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, "apiVersion: v1\nkind: Config\n");
  ::chmod(file.c_str(), 0644);
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.merge(file, arc_entry()).ok());
  CHECK(mode_of(file) == 0600);
}

TEST_CASE("kubeconfig: an empty or comment-only file counts as a new kubeconfig", "[kubeconfig]") {
  TempDir tmp;
  const std::string content = GENERATE(std::string(""), std::string("\n\n"), std::string("# nothing yet\n"));
  const fs::path file = tmp.path() / "config";
  spit(file, content);
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.merge(file, arc_entry()).ok());
  const YAML::Node root = YAML::LoadFile(file.string());
  CHECK(root["kind"].Scalar() == "Config");
  CHECK(named(root, "users", "arc-user")["user"]["token"].Scalar() == "secret-arc");
}

TEST_CASE("kubeconfig: a file that is not a kubeconfig is refused and left untouched", "[kubeconfig]") {
  struct Case {
    std::string content;
    std::string reason;
  };
  const Case c = GENERATE(Case{"apiVersion: v1\nclusters:\n- name: a\n  cluster: [\n", "not valid YAML (line "},
                          Case{"apiVersion: v1\n  kind: Config\n bad", "not valid YAML (line 2, column"},
                          Case{"- just\n- a list\n", "top level is not a mapping"},
                          Case{"clusters:\n  arc: {server: x}\n", "'clusters' field is not a list"},
                          Case{"apiVersion: v1\n---\napiVersion: v1\n", "2 YAML documents"},
                          // yaml-cpp accepts both: kubectl refuses the first and reads the
                          // second as name "b" where yaml-cpp would see "a".
                          Case{"apiVersion: v1\nkind: \"Config\n", "line 2, column 7: a quoted string is never closed"},
                          Case{"users:\n- name: a\n  user: {token: x}\n  name: b\n", "line 4, column 3: duplicate key 'name'"});
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, c.content);
  ::chmod(file.c_str(), 0640);
  YamlKubeconfig kc(quick_lock());

  for (int op = 0; op < 2; ++op) {
    auto r = op == 0 ? kc.merge(file, arc_entry()) : kc.remove(file, "arc", "arc-user", "arc");
    REQUIRE_FALSE(r.ok());
    INFO(r.error());
    CHECK(r.error().rfind("cannot update " + file.string() + ": ", 0) == 0);
    CHECK(r.error().find(c.reason) != std::string::npos);
    CHECK(r.error().find("nothing was written") != std::string::npos);
    CHECK(r.error().find('\n') == std::string::npos);
    CHECK(slurp(file) == c.content);
    CHECK(mode_of(file) == 0640);
    CHECK(listing(tmp.path()) == std::vector<std::string>{"config"});
  }
}

TEST_CASE("kubeconfig: a file over 16 MiB is refused", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, "apiVersion: v1\n" + std::string(16u << 20, '#'));
  YamlKubeconfig kc(quick_lock());
  auto r = kc.merge(file, arc_entry());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().find("larger than 16 MiB") != std::string::npos);
  CHECK(fs::file_size(file) == 15 + (16u << 20));
  CHECK(listing(tmp.path()) == std::vector<std::string>{"config"});
}

TEST_CASE("kubeconfig: an entry without names or server is refused before touching the file", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "sub" / "config";
  YamlKubeconfig kc(quick_lock());
  KubeconfigEntry e = arc_entry();
  e.server.clear();
  auto r = kc.merge(file, e);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().find("server") != std::string::npos);
  CHECK_FALSE(fs::exists(tmp.path() / "sub"));
  CHECK_FALSE(kc.render(e).ok());
}

TEST_CASE("kubeconfig: remove drops the named entries and clears current-context", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, foreign_file());
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.merge(file, arc_entry()).ok());
  REQUIRE(kc.remove(file, "arc", "arc-user", "arc").ok());

  const std::string text = slurp(file);
  const YAML::Node root = YAML::Load(text);
  CHECK(count_named(root, "clusters", "arc") == 0);
  CHECK(count_named(root, "users", "arc-user") == 0);
  CHECK(count_named(root, "contexts", "arc") == 0);
  CHECK(root["current-context"].IsScalar());
  CHECK(root["current-context"].Scalar().empty());
  for (const std::string& untouched : {foreign_header, foreign_preferences, foreign_prod_cluster,
                                       foreign_prod_context, foreign_prod_user, foreign_tail})
    CHECK(text.find(untouched) != std::string::npos);
}

TEST_CASE("kubeconfig: remove keeps current-context naming another context", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, foreign_file());
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.remove(file, "arc", "arc-user", "arc").ok());
  const YAML::Node root = YAML::LoadFile(file.string());
  CHECK(root["current-context"].Scalar() == "prod");
  CHECK(root["clusters"].size() == 1);
}

TEST_CASE("kubeconfig: remove of absent entries or an absent file writes nothing", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.remove(file, "arc", "arc-user", "arc").ok());
  CHECK(listing(tmp.path()).empty());

  // Flow style is not what the splice copies, so a rewrite would show.
  const std::string content = "{apiVersion: v1, clusters: [{name: a, cluster: {server: 'https://a'}}]}\n";
  spit(file, content);
  REQUIRE(kc.remove(file, "nope", "nope", "nope").ok());
  CHECK(slurp(file) == content);
  CHECK(listing(tmp.path()) == std::vector<std::string>{"config"});
}

TEST_CASE("kubeconfig: a flow-style file is merged by re-emitting it", "[kubeconfig]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  spit(file, "{apiVersion: v1, kind: Config, clusters: [{name: a, cluster: {server: 'https://a'}}], x: '12'}\n");
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.merge(file, arc_entry()).ok());
  const YAML::Node root = YAML::LoadFile(file.string());
  CHECK(named(root, "clusters", "a")["cluster"]["server"].Scalar() == "https://a");
  CHECK(named(root, "clusters", "arc")["cluster"]["server"].Scalar() == "https://127.0.0.1:47011");
  CHECK(root["x"].Tag() == "!");
  CHECK(root["x"].Scalar() == "12");
}

TEST_CASE("kubeconfig: merge through a symlink updates its target and keeps the link", "[kubeconfig]") {
  TempDir tmp;
  const fs::path real = tmp.path() / "real-config";
  const fs::path link = tmp.path() / "config";
  spit(real, "apiVersion: v1\nkind: Config\n");
  fs::create_symlink("real-config", link);
  YamlKubeconfig kc(quick_lock());
  REQUIRE(kc.merge(link, arc_entry()).ok());
  CHECK(fs::is_symlink(fs::symlink_status(link)));
  CHECK(named(YAML::LoadFile(real.string()), "users", "arc-user")["user"]["token"].Scalar() == "secret-arc");
  CHECK(listing(tmp.path()) == std::vector<std::string>{"config", "real-config"});
}

TEST_CASE("kubeconfig: render yields a standalone kubeconfig with only the entry", "[kubeconfig]") {
  YamlKubeconfig kc(quick_lock());
  KubeconfigEntry e = arc_entry();
  e.namespace_ = "ns1";
  e.set_current = false;  // a standalone document always names its context
  auto r = kc.render(e);
  REQUIRE(r.ok());
  const YAML::Node root = YAML::Load(*r);
  std::vector<std::string> keys;
  for (const auto& kv : root) keys.push_back(kv.first.Scalar());
  CHECK(keys == std::vector<std::string>{"apiVersion", "kind", "clusters", "users", "contexts", "current-context"});
  CHECK(root["apiVersion"].Scalar() == "v1");
  CHECK(root["kind"].Scalar() == "Config");
  CHECK(root["clusters"].size() == 1);
  CHECK(root["users"].size() == 1);
  CHECK(root["contexts"].size() == 1);
  CHECK(root["current-context"].Scalar() == "arc");
  CHECK(named(root, "contexts", "arc")["context"]["namespace"].Scalar() == "ns1");
  CHECK(named(root, "users", "arc-user")["user"]["token"].Scalar() == "secret-arc");
}
