// The built module as the host loads it: it offers kubeconfig:yaml and the
// capability it returns writes files.

#include <catch2/catch.hpp>

#include <spdlog/spdlog.h>

#include "../../support/test_env.hpp"
#include "clusterconnect/host/runtime.hpp"
#include "kubeconfig_test_support.hpp"

namespace fs = std::filesystem;
using namespace clusterconnect;
using namespace clusterconnect::kubeconfig::test;
using clusterconnect::test::TempDir;

TEST_CASE("kubeconfig: the module provides kubeconfig:yaml to the host", "[kubeconfig][module]") {
  host::Runtime rt(spdlog::default_logger(), 1);
  const fs::path module = clusterconnect::test::stage_dir() / "lib" / "connectedk8s" / "plugins" / "kubeconfig.so";
  REQUIRE(rt.loader().load_file(module, rt));
  CHECK(rt.capabilities().kubeconfig("other") == nullptr);
  auto kc = rt.capabilities().kubeconfig("yaml");
  REQUIRE(kc != nullptr);

  TempDir tmp;
  const fs::path file = tmp.path() / "config";
  REQUIRE(kc->merge(file, arc_entry()).ok());
  CHECK(named(YAML::LoadFile(file.string()), "users", "arc-user")["user"]["token"].Scalar() == "secret-arc");
  REQUIRE(kc->remove(file, "arc", "arc-user", "arc").ok());
  CHECK(YAML::LoadFile(file.string())["users"].size() == 0);
  auto rendered = kc->render(arc_entry());
  REQUIRE(rendered.ok());
  CHECK(YAML::Load(*rendered)["current-context"].Scalar() == "arc");
}
