// What the command after `--` inherits: no credential of the proxy's sign-in.

#include <catch2/catch.hpp>

#include <algorithm>

#include "child_process.hpp"

using namespace clusterconnect::proxy;

namespace {

bool has(const std::vector<std::string>& env, const std::string& entry) {
  return std::find(env.begin(), env.end(), entry) != env.end();
}

bool names(const std::vector<std::string>& env, const std::string& name) {
  return std::any_of(env.begin(), env.end(), [&](const std::string& e) { return e.rfind(name + "=", 0) == 0; });
}

}  // namespace

TEST_CASE("the child's environment has no credential variables", "[proxy][child]") {
  const char* env[] = {"PATH=/usr/bin",
                       "HOME=/home/u",
                       "KUBECONFIG=/home/u/.kube/config",
                       "AZURE_CLIENT_ID=app",
                       "AZURE_TENANT_ID=tenant",
                       "AZURE_CLIENT_SECRET=s3cret",
                       "AZURE_CLIENT_CERTIFICATE_PASSWORD=pw",
                       "AZURE_FEDERATED_TOKEN=eyJfed",
                       "ACTIONS_ID_TOKEN_REQUEST_TOKEN=gh",
                       "SA_TOKEN=the-service-account-token\n",
                       "AUTH_HEADER=Bearer the-access-token",
                       "UNRELATED=the-service-account-token-not",
                       nullptr};
  auto out = child_environment(env, "/tmp/private/kubeconfig", {"the-service-account-token", "the-access-token", ""});
  CHECK(has(out, "PATH=/usr/bin"));
  CHECK(has(out, "HOME=/home/u"));
  CHECK(has(out, "AZURE_CLIENT_ID=app"));
  CHECK(has(out, "AZURE_TENANT_ID=tenant"));
  CHECK(has(out, "UNRELATED=the-service-account-token-not"));
  CHECK(has(out, "KUBECONFIG=/tmp/private/kubeconfig"));
  CHECK_FALSE(has(out, "KUBECONFIG=/home/u/.kube/config"));
  for (const char* name : {"AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_FEDERATED_TOKEN",
                           "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "SA_TOKEN", "AUTH_HEADER"})
    CHECK_FALSE(names(out, name));
  // An empty held secret removes nothing (every empty variable would match).
  const char* empty[] = {"EMPTY=", nullptr};
  CHECK(has(child_environment(empty, "k", {""}), "EMPTY="));
}
