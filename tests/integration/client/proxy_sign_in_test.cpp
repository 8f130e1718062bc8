// `connectedk8s proxy` signs in to an identity provider served over HTTPS by
// a private CA: trusted through --authority-ca-file, its environment variable
// or SSL_CERT_FILE, refused without any of them.

#include <catch2/catch.hpp>

#include <fstream>

#include "test_env.hpp"
#include "test_idp.hpp"

using namespace clusterconnect;
using clusterconnect::entra::test::TestIdp;
using clusterconnect::test::quote;
namespace fs = std::filesystem;

namespace {

const std::string signed_in = "done: Signing in to Microsoft Entra ID: client-secret";

// The proxy with the IdP's secret client; `extra_env` and `extra_args` vary.
// The management endpoint refuses connections, so a run that signed in stops
// at the next step.
clusterconnect::test::CommandResult proxy(const TestIdp& idp, const fs::path& home, const std::string& extra_env,
                                          const std::string& extra_args) {
  const auto& c = idp.state()["clients"]["secret"];
  std::string cmd = "env -u CONNECTEDK8S_PLUGIN_PATH -u SSL_CERT_FILE -u SSL_CERT_DIR -u CONNECTEDK8S_AUTHORITY_CA_FILE "
                    "-u CONNECTEDK8S_CA_FILE HOME=" + quote(home.string()) +
                    " XDG_CACHE_HOME=" + quote((home / "cache").string()) +
                    " XDG_CONFIG_HOME=" + quote((home / "config").string()) +
                    " AZURE_TENANT_ID=" + quote(idp.tenant()) +
                    " AZURE_CLIENT_ID=" + quote(c["client_id"].get<std::string>()) +
                    " AZURE_CLIENT_SECRET=" + quote(c["client_secret"].get<std::string>()) +
                    " AZURE_AUTHORITY_HOST=" + quote(idp.authority()) + " " + extra_env + " " +
                    quote((clusterconnect::test::stage_dir() / "bin" / "connectedk8s").string()) +
                    " proxy -n demo -g sandbox --subscription 00000000-0000-0000-0000-000000000000"
                    " --endpoint https://127.0.0.1:1 --management-resource 5e1a7000-0000-4000-8000-00000000c0de"
                    " -f - --port 0 --auth-method client-secret " + extra_args;
  return clusterconnect::test::run(cmd);
}

}  // namespace

TEST_CASE("proxy: an identity provider behind a private CA", "[proxy][idp][tls]") {
  if (auto why = TestIdp::unavailable()) CLUSTERCONNECT_SKIP(*why);
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path(), nullptr, /*tls=*/true);
  REQUIRE(idp.authority().rfind("https://", 0) == 0);
  REQUIRE_FALSE(idp.ca_file().empty());
  const std::string ca = quote(idp.ca_file());

  SECTION("without the CA the sign-in fails on the certificate") {
    auto r = proxy(idp, dir.path() / "h1", "", "");
    INFO(r.output);
    CHECK(r.status != 0);
    CHECK(r.output.find(signed_in) == std::string::npos);
    CHECK(r.output.find("certificate") != std::string::npos);
  }
  SECTION("--authority-ca-file") {
    auto r = proxy(idp, dir.path() / "h2", "", "--authority-ca-file " + ca);
    INFO(r.output);
    CHECK(r.output.find(signed_in) != std::string::npos);
    CHECK(r.output.find("cannot reach the management endpoint") != std::string::npos);
  }
  SECTION("CONNECTEDK8S_AUTHORITY_CA_FILE") {
    auto r = proxy(idp, dir.path() / "h3", "CONNECTEDK8S_AUTHORITY_CA_FILE=" + ca, "");
    INFO(r.output);
    CHECK(r.output.find(signed_in) != std::string::npos);
  }
  SECTION("SSL_CERT_FILE, as OpenSSL honours it") {
    auto r = proxy(idp, dir.path() / "h4", "SSL_CERT_FILE=" + ca, "");
    INFO(r.output);
    CHECK(r.output.find(signed_in) != std::string::npos);
  }
  SECTION("a CA file that does not exist is named in the error") {
    auto r = proxy(idp, dir.path() / "h5", "", "--authority-ca-file " + quote((dir.path() / "missing.pem").string()));
    INFO(r.output);
    CHECK(r.status != 0);
    CHECK(r.output.find(signed_in) == std::string::npos);
  }
}
