// The credential's pieces that need no identity provider: option
// resolution, the token cache file, client assertions, Azure CLI output.

#include <catch2/catch.hpp>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <fstream>
#include <set>

#include "../../support/test_env.hpp"
#include "azure_cli.hpp"
#include "client_assertion.hpp"
#include "encoding.hpp"
#include "entra_credential.hpp"
#include "jwks.hpp"
#include "jwt.hpp"

using namespace clusterconnect;
using namespace clusterconnect::entra;
namespace fs = std::filesystem;

namespace {

// Clears the AZURE_* variables and PATH for one test, restoring them after.
class CleanEnvironment {
 public:
  CleanEnvironment() {
    for (const char* v : names) {
      if (const char* s = std::getenv(v)) saved_.emplace_back(v, s);
      ::unsetenv(v);
    }
  }
  ~CleanEnvironment() {
    for (const char* v : names) ::unsetenv(v);
    for (auto& [k, v] : saved_) ::setenv(k.c_str(), v.c_str(), 1);
  }

 private:
  static constexpr const char* names[] = {"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                                          "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "PATH",
                                          "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"};
  std::vector<std::pair<std::string, std::string>> saved_;
};

}  // namespace

TEST_CASE("auth-entra: credential options resolve like the Azure SDK", "[auth-entra][credential]") {
  CleanEnvironment env;
  const fs::path cache = "/tmp/cache-dir";

  auto secret = parse_credential_options({{"tenant_id", "t1"}, {"client_id", "c1"}, {"client_secret", "s"}}, cache);
  REQUIRE(secret);
  CHECK(secret->method == "client-secret");
  CHECK(secret->authority == "https://login.microsoftonline.com");
  CHECK(secret->cache_file == cache / "entra-token-cache.json");

  ::setenv("AZURE_TENANT_ID", "t2", 1);
  ::setenv("AZURE_CLIENT_ID", "c2", 1);
  ::setenv("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token", 1);
  ::setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/", 1);
  auto wi = parse_credential_options(nlohmann::json::object(), cache);
  REQUIRE(wi);
  CHECK(wi->method == "workload-identity");
  CHECK(wi->tenant_id == "t2");
  CHECK(wi->client_id == "c2");
  CHECK(wi->authority == "https://login.microsoftonline.us");

  ::setenv("AZURE_CLIENT_CERTIFICATE_PATH", "/etc/cert.pem", 1);
  auto cert = parse_credential_options({{"cache", false}}, cache);
  REQUIRE(cert);
  CHECK(cert->method == "client-certificate");  // certificate comes before workload identity
  CHECK(cert->cache_file.empty());

  auto device = parse_credential_options({{"method", "device-code"}, {"tenant_id", ""}, {"client_id", ""}}, cache);
  REQUIRE(device);
  CHECK(device->client_id == "c2");

  CleanEnvironment none;
  auto dc = parse_credential_options({{"method", "device-code"}}, cache);
  REQUIRE(dc);
  CHECK(dc->client_id == azure_cli_client_id);
  CHECK(dc->tenant_id == "organizations");

  auto missing = parse_credential_options({{"method", "client-secret"}, {"tenant_id", "t"}}, cache);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().find("AZURE_CLIENT_ID") != std::string::npos);
  auto missing_secret = parse_credential_options({{"method", "client-secret"}, {"tenant_id", "t"}, {"client_id", "c"}}, cache);
  REQUIRE_FALSE(missing_secret);
  CHECK(missing_secret.error().find("AZURE_CLIENT_SECRET") != std::string::npos);
  CHECK_FALSE(parse_credential_options({{"method", "magic"}}, cache));
  CHECK_FALSE(parse_credential_options({{"method", "device-code"}, {"device_code_prompt", "popup"}}, cache));
  auto json_prompt = parse_credential_options({{"method", "device-code"}, {"device_code_prompt", "json"}}, cache);
  REQUIRE(json_prompt);
  CHECK(json_prompt->device_code_prompt);
  CHECK_FALSE(parse_credential_options({{"method", "device-code"}, {"authority", "http://127.0.0.1:9"}}, cache));
  CHECK(parse_credential_options({{"method", "device-code"}, {"authority", "http://127.0.0.1:9"}, {"allow_http_loopback", true}}, cache));
  CHECK_FALSE(parse_credential_options({{"method", "device-code"}, {"tenant_id", "a/b"}}, cache));

  // Nothing configured, no az on PATH, no terminal: a message that says what to set.
  if (!::isatty(STDERR_FILENO)) {
    auto nothing = parse_credential_options(nlohmann::json::object(), cache);
    REQUIRE_FALSE(nothing);
    CHECK(nothing.error().find("AZURE_CLIENT_ID") != std::string::npos);
    CHECK(nothing.error().find("az login") != std::string::npos);
  }
}

TEST_CASE("auth-entra: refresh margin", "[auth-entra][credential]") {
  CHECK(refresh_margin({"a", "", 1000 + 3600, 1000}) == 300);
  CHECK(refresh_margin({"a", "", 1000 + 60, 1000}) == 30);
  CHECK(refresh_margin({"a", "", 1000, 2000}) == 0);
}

TEST_CASE("auth-entra: token cache file", "[auth-entra][credential]") {
  clusterconnect::test::TempDir dir;
  const auto file = dir.path() / "sub" / "tokens.json";
  TokenCache cache(file);
  const auto key = TokenCache::key("https://login", "t", "c", "r");
  CHECK_FALSE(cache.load(key));
  cache.store(key, {"at", "rt", 2000, 1000});
  auto got = cache.load(key);
  REQUIRE(got);
  CHECK(got->access_token == "at");
  CHECK(got->refresh_token == "rt");
  CHECK(got->expires_on == 2000);
  CHECK(got->issued_on == 1000);
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat(file.parent_path().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);

  // Another key does not disturb the first; erase removes only its own.
  const auto other = TokenCache::key("https://login", "t", "c", "r2");
  cache.store(other, {"at2", "", 3000, 1000});
  cache.erase(key);
  CHECK_FALSE(cache.load(key));
  CHECK(cache.load(other));

  // A corrupt file is treated as empty and replaced on the next store.
  std::ofstream(file, std::ios::trunc) << "{not json";
  CHECK_FALSE(cache.load(other));
  cache.store(key, {"at3", "", 3000, 1000});
  CHECK(cache.load(key));
}

TEST_CASE("auth-entra: client assertion for a certificate", "[auth-entra][credential]") {
  clusterconnect::test::TempDir dir;
  const auto key = dir.path() / "k.pem", crt = dir.path() / "c.pem", both = dir.path() / "both.pem";
  auto made = clusterconnect::test::run("openssl req -x509 -newkey rsa:2048 -nodes -keyout " + key.string() + " -out " + crt.string() +
                                        " -days 1 -subj /CN=test && cat " + key.string() + " " + crt.string() + " > " + both.string());
  REQUIRE(made.status == 0);

  auto cert = load_client_certificate(both.string());  // key first, then certificate
  INFO((cert ? std::string() : cert.error()));
  REQUIRE(cert);
  auto fingerprint = clusterconnect::test::run("openssl x509 -in " + crt.string() + " -noout -fingerprint -sha1");
  std::string hex;
  for (char ch : fingerprint.output.substr(fingerprint.output.find('=') + 1))
    if (std::isxdigit(static_cast<unsigned char>(ch))) hex += ch;
  std::string raw;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) raw += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  CHECK(cert->x5t == base64url_encode(raw));

  const std::string endpoint = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
  auto a = make_client_assertion(*cert, "client-1", endpoint);
  auto b = make_client_assertion(*cert, "client-1", endpoint);
  REQUIRE(a);
  REQUIRE(b);
  auto pa = parse_jws(*a), pb = parse_jws(*b);
  REQUIRE(pa.ok());
  CHECK(pa.jws.header["alg"] == "RS256");
  CHECK(pa.jws.header["x5t"] == cert->x5t);
  CHECK(pa.jws.payload["aud"] == endpoint);
  CHECK(pa.jws.payload["iss"] == "client-1");
  CHECK(pa.jws.payload["sub"] == "client-1");
  CHECK(pa.jws.payload["exp"].get<long long>() - pa.jws.payload["nbf"].get<long long>() == 600);
  CHECK(pa.jws.payload["jti"] != pb.jws.payload["jti"]);

  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(crt.c_str(), "r"), &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), &X509_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pub(X509_get_pubkey(x.get()), &EVP_PKEY_free);
  CHECK(verify_rs256(pub.get(), pa.jws.signing_input, pa.jws.signature));

  CHECK_FALSE(load_client_certificate((dir.path() / "missing.pem").string()));
  CHECK_FALSE(load_client_certificate(crt.string()));  // no key
}

TEST_CASE("auth-entra: Azure CLI output", "[auth-entra][credential]") {
  auto unix_form = parse_azure_cli_output(R"({"accessToken":"t","expires_on":1800000000,"expiresOn":"2027-01-15 08:00:00.000000"})");
  REQUIRE(unix_form);
  CHECK(unix_form->expires_on == 1800000000);
  auto local_form = parse_azure_cli_output(R"({"accessToken":"t","expiresOn":"2027-01-15 08:00:00.123456"})");
  REQUIRE(local_form);
  CHECK(local_form->expires_on > 1790000000);
  CHECK_FALSE(parse_azure_cli_output(R"({"expiresOn":"2027-01-15 08:00:00"})"));
  CHECK_FALSE(parse_azure_cli_output(R"({"accessToken":"t"})"));
  CHECK_FALSE(parse_azure_cli_output("ERROR: Please run 'az login'"));
}

TEST_CASE("auth-entra: the GitHub Actions runner's token comes after explicit settings and before the Azure CLI", "[auth-entra][credential]") {
  CleanEnvironment env;
  ::setenv("AZURE_TENANT_ID", "t1", 1);
  ::setenv("AZURE_CLIENT_ID", "c1", 1);
  ::setenv("ACTIONS_ID_TOKEN_REQUEST_URL", "https://pipelines.actions.githubusercontent.com/x/idtoken?api-version=2.0", 1);
  ::setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token", 1);
  // `az` on PATH (GitHub's hosted runners have it) does not win over the runner's token.
  const auto bin = fs::temp_directory_path() / ("az-path-" + std::to_string(::getpid()));
  fs::create_directories(bin);
  std::ofstream(bin / "az") << "#!/bin/sh\nexit 1\n";
  fs::permissions(bin / "az", fs::perms::owner_all);
  ::setenv("PATH", bin.c_str(), 1);

  auto gh = parse_credential_options(nlohmann::json::object(), {});
  REQUIRE(gh);
  CHECK(gh->method == "github-actions");
  CHECK(gh->federated_audience == "api://AzureADTokenExchange");
  CHECK(gh->actions_id_token.token == "request-token");

  ::setenv("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token", 1);
  auto wi = parse_credential_options(nlohmann::json::object(), {});
  REQUIRE(wi);
  CHECK(wi->method == "workload-identity");  // an explicit token file first
  ::unsetenv("AZURE_FEDERATED_TOKEN_FILE");

  auto sovereign = parse_credential_options({{"federated_audience", "api://AzureADTokenExchangeUSGov"}}, {});
  REQUIRE(sovereign);
  CHECK(sovereign->federated_audience == "api://AzureADTokenExchangeUSGov");

  // Without a client the runner's token cannot name an application: the CLI.
  ::unsetenv("AZURE_CLIENT_ID");
  auto cli = parse_credential_options(nlohmann::json::object(), {});
  REQUIRE(cli);
  CHECK(cli->method == "azure-cli");

  // The request token is never sent over plain http to another host.
  ::setenv("AZURE_CLIENT_ID", "c1", 1);
  ::setenv("ACTIONS_ID_TOKEN_REQUEST_URL", "http://runner.example/idtoken?api-version=2.0", 1);
  auto plain = parse_credential_options({{"allow_http_loopback", true}}, {});
  REQUIRE_FALSE(plain);
  CHECK(plain.error().find("must use https") != std::string::npos);
  CHECK(plain.error().find("request-token") == std::string::npos);
  fs::remove_all(bin);
}
