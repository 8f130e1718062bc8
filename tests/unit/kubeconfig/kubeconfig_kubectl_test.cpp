// The real kubectl reads what merge writes, its own writes survive our
// merges, and it honours the same FILE.lock.

#include <catch2/catch.hpp>

#include "../../support/test_env.hpp"
#include "kubeconfig_test_support.hpp"
#include "yaml_kubeconfig.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace clusterconnect;
using namespace clusterconnect::kubeconfig;
using namespace clusterconnect::kubeconfig::test;
using clusterconnect::test::quote;
using clusterconnect::test::TempDir;

namespace {

// kubectl confined to `file`, with a HOME of its own so no user config leaks in.
struct Kubectl {
  fs::path home;
  fs::path file;

  clusterconnect::test::CommandResult operator()(const std::string& args) const {
    return clusterconnect::test::run("env -u KUBECONFIG HOME=" + quote(home.string()) + " kubectl --kubeconfig " +
                                     quote(file.string()) + " " + args);
  }
  std::string ok(const std::string& args) const {
    auto r = (*this)(args);
    INFO("kubectl " << args << "\n" << r.output);
    REQUIRE(r.status == 0);
    return r.output;
  }
};

}  // namespace

TEST_CASE("kubeconfig: kubectl reads the merged entry", "[kubeconfig][kubectl]") {
  TempDir tmp;
  const fs::path file = tmp.path() / ".kube" / "config";
  Kubectl kubectl{tmp.path(), file};
  YamlKubeconfig kc;
  KubeconfigEntry e = arc_entry();
  e.namespace_ = "team-a";
  REQUIRE(kc.merge(file, e).ok());

  CHECK(kubectl.ok("config current-context") == "arc\n");
  const std::string contexts = kubectl.ok("config get-contexts --no-headers");
  CHECK(contexts.find("*") != std::string::npos);
  CHECK(contexts.find("arc") != std::string::npos);
  CHECK(contexts.find("arc-user") != std::string::npos);
  CHECK(contexts.find("team-a") != std::string::npos);
  CHECK(kubectl.ok("config view --raw -o jsonpath='{.users[?(@.name==\"arc-user\")].user.token}'") == "secret-arc");
  CHECK(kubectl.ok("config view --raw -o jsonpath='{.clusters[?(@.name==\"arc\")].cluster.server}'") ==
        "https://127.0.0.1:47011");
  // kubectl decodes certificate-authority-data when it flattens: the PEM comes back.
  const std::string ca = kubectl.ok(
      "config view --raw -o jsonpath='{.clusters[?(@.name==\"arc\")].cluster.certificate-authority-data}' | base64 -d");
  CHECK(ca == test_pem);
}

TEST_CASE("kubeconfig: kubectl reads names and tokens that look like numbers", "[kubeconfig][kubectl]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  Kubectl kubectl{tmp.path(), file};
  YamlKubeconfig kc;
  KubeconfigEntry e = arc_entry("0123");
  e.user = "true";
  e.token = "123456";
  REQUIRE(kc.merge(file, e).ok());
  CHECK(kubectl.ok("config current-context") == "0123\n");
  CHECK(kubectl.ok("config view --raw -o jsonpath='{.users[?(@.name==\"true\")].user.token}'") == "123456");
}

TEST_CASE("kubeconfig: kubectl config writes between two merges are kept", "[kubeconfig][kubectl]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  Kubectl kubectl{tmp.path(), file};
  YamlKubeconfig kc;

  REQUIRE(kc.merge(file, arc_entry("first")).ok());
  kubectl.ok("config set-cluster foreign --server=https://foreign.example.com:6443");
  kubectl.ok("config set-credentials foreign-user --token=foreign-token");
  kubectl.ok("config set-context other --cluster=foreign --user=foreign-user --namespace=x");
  kubectl.ok("config set-context first --namespace=picked-by-user");
  REQUIRE(kc.merge(file, arc_entry("second")).ok());
  REQUIRE(kc.merge(file, arc_entry("first")).ok());  // a proxy restart

  const std::string names = kubectl.ok("config get-contexts -o name");
  CHECK(names.find("first\n") != std::string::npos);
  CHECK(names.find("second\n") != std::string::npos);
  CHECK(names.find("other\n") != std::string::npos);
  CHECK(kubectl.ok("config view --raw -o jsonpath='{.users[?(@.name==\"foreign-user\")].user.token}'") ==
        "foreign-token");
  CHECK(kubectl.ok("config view -o jsonpath='{.clusters[?(@.name==\"foreign\")].cluster.server}'") ==
        "https://foreign.example.com:6443");
  CHECK(kubectl.ok("config view -o jsonpath='{.contexts[?(@.name==\"first\")].context.namespace}'") ==
        "picked-by-user");
  CHECK(kubectl.ok("config current-context") == "first\n");
}

TEST_CASE("kubeconfig: entries kubectl wrote keep their exact text through a merge", "[kubeconfig][kubectl]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  Kubectl kubectl{tmp.path(), file};
  kubectl.ok("config set-cluster foreign --server=https://foreign.example.com:6443");
  kubectl.ok("config set-credentials foreign-user --token=foreign-token");
  kubectl.ok("config set-context other --cluster=foreign --user=foreign-user");
  const std::string before = slurp(file);
  const std::string foreign_cluster =
      "- cluster:\n    server: https://foreign.example.com:6443\n  name: foreign\n";
  REQUIRE(before.find(foreign_cluster) != std::string::npos);

  YamlKubeconfig kc;
  REQUIRE(kc.merge(file, arc_entry()).ok());
  const std::string after = slurp(file);
  CHECK(after.find("apiVersion: v1\nclusters:\n" + foreign_cluster) == 0);
  CHECK(after.find("kind: Config\npreferences: {}\nusers:\n- name: foreign-user\n  user:\n    token: foreign-token\n") !=
        std::string::npos);
  // New entries follow kubectl's indentation ("- " flush with the key).
  CHECK(after.find("\n- name: arc\n  cluster:\n") != std::string::npos);
  CHECK(kubectl.ok("config get-contexts -o name") == "arc\nother\n");
}

TEST_CASE("kubeconfig: kubectl refuses to write while merge would hold FILE.lock", "[kubeconfig][kubectl][lock]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  Kubectl kubectl{tmp.path(), file};
  YamlKubeconfig kc;
  REQUIRE(kc.merge(file, arc_entry()).ok());
  spit(file.string() + ".lock", "");  // what merge creates while it writes
  auto r = kubectl("config set-context blocked --cluster=arc");
  CHECK(r.status != 0);
  CHECK(r.output.find(file.string() + ".lock") != std::string::npos);
  fs::remove(file.string() + ".lock");
  kubectl.ok("config set-context unblocked --cluster=arc");
}

TEST_CASE("kubeconfig: kubectl reads a rendered standalone kubeconfig", "[kubeconfig][kubectl]") {
  TempDir tmp;
  const fs::path file = tmp.path() / "rendered";
  Kubectl kubectl{tmp.path(), file};
  YamlKubeconfig kc;
  auto text = kc.render(arc_entry());
  REQUIRE(text.ok());
  spit(file, *text);
  CHECK(kubectl.ok("config get-contexts -o name") == "arc\n");
  CHECK(kubectl.ok("config current-context") == "arc\n");
}
