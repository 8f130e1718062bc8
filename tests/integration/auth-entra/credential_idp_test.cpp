// The credential's sign-in flows against the real test identity provider;
// every token obtained is then checked by the authenticator, as the agent
// would check it.

#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <future>

#include <openssl/pem.h>

#include "client_assertion.hpp"
#include "encoding.hpp"
#include "entra_authenticator.hpp"
#include "entra_credential.hpp"
#include "test_idp.hpp"

using namespace clusterconnect;
using namespace clusterconnect::entra;
using clusterconnect::entra::test::TestIdp;
namespace fs = std::filesystem;

namespace {

nlohmann::json base_options(const TestIdp& idp) {
  return {{"tenant_id", idp.tenant()}, {"authority", idp.authority()}, {"allow_http_loopback", true}};
}

// A clock the test moves: the credential's freshness checks read it.
class TestClock {
 public:
  std::chrono::system_clock::time_point now() const { return std::chrono::system_clock::now() + offset_.load(); }
  void advance(std::chrono::milliseconds d) { offset_ = offset_.load() + d; }
  // Moves the clock so that it reads `t` now.
  void set(std::chrono::system_clock::time_point t) {
    offset_ = std::chrono::duration_cast<std::chrono::milliseconds>(t - std::chrono::system_clock::now());
  }
  std::function<std::chrono::system_clock::time_point()> function() {
    return [this] { return now(); };
  }

 private:
  std::atomic<std::chrono::milliseconds> offset_{std::chrono::milliseconds(0)};
};

std::shared_ptr<EntraCredential> make_credential(const nlohmann::json& options, const fs::path& cache_dir = {},
                                                 std::function<void(const DeviceCodePrompt&)> prompt = {},
                                                 TestClock* clock = nullptr,
                                                 std::function<void(std::chrono::seconds)> sleep = {}) {
  auto config = parse_credential_options(options, cache_dir);
  INFO((config ? std::string() : config.error()));
  REQUIRE(config);
  if (prompt) config->device_code_prompt = std::move(prompt);
  if (clock) config->clock = clock->function();
  if (sleep) config->sleep = std::move(sleep);
  return std::make_shared<EntraCredential>(std::move(*config));
}

// Waits (up to 60 s) until the IdP has answered at least `n` token requests.
void wait_for_token_requests(const TestIdp& idp, int n) {
  for (int i = 0; i < 600; ++i) {
    if (idp.admin("state", nullptr)["token_requests"].get<int>() >= n) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  FAIL("the IdP did not see " << n << " token request(s) within 60 s");
}

AuthOutcome validate(const TestIdp& idp, const std::string& token) {
  asio::io_context io;
  auto config = parse_authenticator_options({{"tenants", {idp.tenant()}}, {"authority", idp.authority()}, {"allow_http_loopback", true}});
  REQUIRE(config);
  auto auth = std::make_shared<EntraAuthenticator>(io, std::move(*config));
  std::optional<AuthOutcome> out;
  auth->async_authenticate(token, [&](AuthOutcome o) { out = std::move(o); });
  for (int i = 0; i < 3000 && !out; ++i) {
    io.restart();
    io.run_for(std::chrono::milliseconds(5));
    if (!out) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(out);
  return *out;
}

// A federated token as a workload's token issuer (the IdP's built-in
// stand-in for a cluster's service-account issuer) would mint it, signed
// with `key_path`; `jti` receives its ID.
std::string federated_token(const TestIdp& idp, const std::string& key_path, std::string* jti = nullptr,
                            const std::string& audience = auth::entra_token_exchange_audience) {
  const auto& c = idp.state()["clients"]["federated"];
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(key_path.c_str(), "r"), &BIO_free);
  REQUIRE(bio);
  std::shared_ptr<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr), &EVP_PKEY_free);
  REQUIRE(key);
  const long long now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string id = random_uuid();
  if (jti) *jti = id;
  nlohmann::json header = {{"alg", "RS256"}, {"typ", "JWT"}, {"kid", c["kid"]}};
  nlohmann::json payload = {{"iss", c["workload_issuer"]}, {"sub", c["workload_subject"]}, {"aud", audience}, {"jti", id},
                            {"iat", now},                  {"exp", now + 3600}};
  const std::string input = base64url_encode(header.dump()) + "." + base64url_encode(payload.dump());
  auto sig = sign_rs256(key.get(), input);
  REQUIRE(sig);
  return input + "." + base64url_encode(*sig);
}

void write_file(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::trunc) << text << "\n"; }

#define REQUIRE_IDP() \
  if (auto why = TestIdp::unavailable()) CLUSTERCONNECT_SKIP(*why)

}  // namespace

TEST_CASE("auth-entra/idp: client secret", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  const auto& c = idp.state()["clients"]["secret"];
  auto options = base_options(idp);
  options["method"] = "client-secret";
  options["client_id"] = c["client_id"];
  options["client_secret"] = c["client_secret"];
  auto cred = make_credential(options);
  CHECK(cred->method() == "client-secret");

  auto token = cred->get_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  CHECK(token->expires_on > std::chrono::system_clock::now() + std::chrono::minutes(50));
  auto out = validate(idp, token->token);
  INFO(out.message);
  REQUIRE(out.ok());
  CHECK(out.identity.uid == c["oid"]);

  // Served from the cache the second time.
  auto again = cred->get_token(arc_server_app_id);
  REQUIRE(again);
  CHECK(again->token == token->token);

  // A wrong secret is refused with the provider's reason and without the secret.
  options["client_secret"] = "not-the-secret";
  auto wrong = make_credential(options)->get_token(arc_server_app_id);
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().find("invalid_client") != std::string::npos);
  CHECK(wrong.error().find("not-the-secret") == std::string::npos);
}

TEST_CASE("auth-entra/idp: client secret from AZURE_* variables with method auto", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  const auto& c = idp.state()["clients"]["secret"];
  ::setenv("AZURE_CLIENT_ID", c["client_id"].get<std::string>().c_str(), 1);
  ::setenv("AZURE_TENANT_ID", idp.tenant().c_str(), 1);
  ::setenv("AZURE_CLIENT_SECRET", c["client_secret"].get<std::string>().c_str(), 1);
  ::setenv("AZURE_AUTHORITY_HOST", idp.authority().c_str(), 1);
  auto cred = make_credential({{"allow_http_loopback", true}}, dir.path() / "cache");
  ::unsetenv("AZURE_CLIENT_ID");
  ::unsetenv("AZURE_TENANT_ID");
  ::unsetenv("AZURE_CLIENT_SECRET");
  ::unsetenv("AZURE_AUTHORITY_HOST");
  CHECK(cred->method() == "client-secret");
  auto token = cred->get_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  CHECK(validate(idp, token->token).ok());

  // The cache file is private to the user.
  const auto cache = dir.path() / "cache" / "entra-token-cache.json";
  REQUIRE(fs::exists(cache));
  struct stat st {};
  REQUIRE(::stat(cache.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("auth-entra/idp: client certificate", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  const auto& c = idp.state()["clients"]["certificate"];
  auto cert = load_client_certificate(c["certificate_path"]);
  REQUIRE(cert);
  CHECK(cert->x5t == c["x5t"]);

  auto options = base_options(idp);
  options["method"] = "client-certificate";
  options["client_id"] = c["client_id"];
  options["certificate_path"] = c["certificate_path"];
  auto cred = make_credential(options);
  auto token = cred->get_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  auto out = validate(idp, token->token);
  REQUIRE(out.ok());
  CHECK(out.identity.uid == c["oid"]);

  // Another client's certificate does not sign for this one.
  options["certificate_path"] = (dir.path() / "other.pem").string();
  
  auto other = clusterconnect::test::run("openssl req -x509 -newkey rsa:2048 -nodes -keyout " + (dir.path() / "k.pem").string() + " -out " +
                                         (dir.path() / "c.pem").string() + " -days 1 -subj /CN=other && cat " + (dir.path() / "c.pem").string() +
                                         " " + (dir.path() / "k.pem").string() + " > " + (dir.path() / "other.pem").string());
  REQUIRE(other.status == 0);
  auto refused = make_credential(options)->get_token(arc_server_app_id);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("client certificate sign-in was refused") != std::string::npos);
}

TEST_CASE("auth-entra/idp: workload identity federation re-reads the token file", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  const auto& c = idp.state()["clients"]["federated"];
  const std::string key_path = c["key_path"];
  const auto file = dir.path() / "federated-token";
  std::string first_jti;
  write_file(file, federated_token(idp, key_path, &first_jti));
  idp.admin("access-token-lifetime", {{"seconds", 4}});

  auto options = base_options(idp);
  options["method"] = "workload-identity";
  options["client_id"] = c["client_id"];
  options["federated_token_file"] = file.string();
  TestClock clock;
  auto cred = make_credential(options, {}, {}, &clock);
  auto first = cred->get_token(arc_server_app_id);
  INFO((first ? std::string() : first.error()));
  REQUIRE(first);
  REQUIRE(validate(idp, first->token).ok());
  CHECK(idp.admin("state", nullptr)["last_federated_jti"] == first_jti);

  // Past half the 4 s lifetime the cached token is replaced, with the
  // rotated file's new contents as the assertion.
  clock.advance(std::chrono::milliseconds(2500));
  std::string second_jti;
  write_file(file, federated_token(idp, key_path, &second_jti));
  auto second = cred->get_token(arc_server_app_id);
  INFO((second ? std::string() : second.error()));
  REQUIRE(second);
  CHECK(second->token != first->token);
  CHECK(idp.admin("state", nullptr)["last_federated_jti"] == second_jti);

  // An assertion from an issuer the client does not trust is refused.
  idp.admin("access-token-lifetime", {{"seconds", 3600}});
  clusterconnect::test::run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " + (dir.path() / "stranger.pem").string());
  const auto stranger_file = dir.path() / "stranger-token";
  write_file(stranger_file, federated_token(idp, (dir.path() / "stranger.pem").string()));
  options["federated_token_file"] = stranger_file.string();
  auto refused = make_credential(options)->get_token(arc_server_app_id);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("workload identity sign-in was refused") != std::string::npos);
  CHECK(refused.error().find("AADSTS700027") != std::string::npos);

  // A token for another audience than Entra's token exchange is refused too.
  write_file(stranger_file, federated_token(idp, key_path, nullptr, "https://kubernetes.default.svc"));
  auto wrong_audience = make_credential(options)->get_token(arc_server_app_id);
  REQUIRE_FALSE(wrong_audience);
  CHECK(wrong_audience.error().find("AADSTS700212") != std::string::npos);
}

TEST_CASE("auth-entra/idp: device code, then refresh before expiry", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  idp.admin("access-token-lifetime", {{"seconds", 10}});
  auto options = base_options(idp);
  options["method"] = "device-code";
  options["client_id"] = idp.state()["clients"]["public"]["client_id"];

  std::promise<DeviceCodePrompt> prompted;
  std::atomic<int> prompts{0};
  TestClock clock;
  auto cred = make_credential(
      options, dir.path() / "cache",
      [&](const DeviceCodePrompt& p) {
        if (prompts++ == 0) prompted.set_value(p);
      },
      &clock);
  auto pending = std::async(std::launch::async, [&] { return cred->get_token(arc_server_app_id); });
  auto prompt_future = prompted.get_future();
  REQUIRE(prompt_future.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
  auto prompt = prompt_future.get();
  CHECK(prompt.verification_uri == idp.authority() + "/device");
  CHECK_FALSE(prompt.user_code.empty());

  // The user's part, through the provider's own pages.
  auto done = idp.admin("device/complete", {{"user_code", prompt.user_code}});
  CHECK(done["ok"] == true);
  REQUIRE(pending.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  auto token = pending.get();
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);

  auto out = validate(idp, token->token);
  INFO(out.message);
  REQUIRE(out.ok());
  const auto& alice = idp.state()["users"]["alice"];
  CHECK(out.identity.user == "alice@contoso.example");
  CHECK(out.identity.uid == alice["oid"]);
  CHECK(out.identity.groups == alice["groups"].get<std::vector<std::string>>());

  // Still fresh: the same token.
  auto same = cred->get_token(arc_server_app_id);
  REQUIRE(same);
  CHECK(same->token == token->token);

  // Inside the refresh margin (half of a 10 s lifetime) but before expiry:
  // a new token, from the refresh token, with no second prompt.
  clock.set(token->expires_on - std::chrono::milliseconds(4500));
  auto renewed = cred->get_token(arc_server_app_id);
  INFO((renewed ? std::string() : renewed.error()));
  REQUIRE(renewed);
  CHECK(renewed->token != token->token);
  CHECK(renewed->expires_on > token->expires_on);
  CHECK(prompts == 1);
  CHECK(validate(idp, renewed->token).ok());

  // A second process reuses the cached sign-in from disk.
  auto later = make_credential(options, dir.path() / "cache", [&](const DeviceCodePrompt&) { ++prompts; }, &clock);
  auto from_disk = later->get_token(arc_server_app_id);
  REQUIRE(from_disk);
  CHECK(prompts == 1);
  auto cache_text = entra::test::slurp(dir.path() / "cache" / "entra-token-cache.json");
  CHECK(cache_text.find("refresh_token") != std::string::npos);
}

TEST_CASE("auth-entra/idp: retries honour Retry-After on 429", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path());
  const auto& c = idp.state()["clients"]["secret"];
  auto options = base_options(idp);
  options["method"] = "client-secret";
  options["client_id"] = c["client_id"];
  options["client_secret"] = c["client_secret"];
  auto cred = make_credential(options);

  idp.admin("fail-token-requests", {{"count", 2}, {"status", 429}, {"retry_after", 1}});
  const auto start = std::chrono::steady_clock::now();
  auto token = cred->get_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(1900));
  CHECK(idp.admin("state", nullptr)["token_requests"] == 3);

  // More failures than attempts: a clear error with the provider's reason.
  idp.admin("fail-token-requests", {{"count", 5}, {"status", 503}, {"retry_after", 0}});
  auto failed = make_credential(options)->get_token(arc_server_app_id);
  REQUIRE_FALSE(failed);
  CHECK(failed.error().find("AADSTS50196") != std::string::npos);
}

TEST_CASE("auth-entra/idp: Azure CLI hand-off", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  // A stand-in `az` that records its arguments and prints what the real one does.
  const auto az = dir.path() / "az";
  const auto args = dir.path() / "az-args";
  const long long expires = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count() + 3000;
  write_file(az, "#!/bin/sh\necho \"$@\" > " + args.string() + "\ncat <<'JSON'\n{\"accessToken\":\"cli-token\",\"expiresOn\":\"2099-01-01 00:00:00.000000\",\"expires_on\":" +
                     std::to_string(expires) + ",\"tokenType\":\"Bearer\"}\nJSON\n");
  fs::permissions(az, fs::perms::owner_all);

  auto config = parse_credential_options({{"method", "azure-cli"}}, {});
  REQUIRE(config);
  config->az_command = az.string();
  EntraCredential cred(std::move(*config));
  auto token = cred.get_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);
  CHECK(token->token == "cli-token");
  CHECK(std::chrono::duration_cast<std::chrono::seconds>(token->expires_on.time_since_epoch()).count() == expires);
  CHECK(entra::test::slurp(args).find(std::string("account get-access-token --resource ") + arc_server_app_id + " --output json") != std::string::npos);

  write_file(az, "#!/bin/sh\necho 'ERROR: Please run az login to setup account.' >&2\nexit 1\n");
  auto config2 = parse_credential_options({{"method", "azure-cli"}}, {});
  REQUIRE(config2);
  config2->az_command = az.string();
  auto failed = EntraCredential(std::move(*config2)).get_token(arc_server_app_id);
  REQUIRE_FALSE(failed);
  CHECK(failed.error().find("az login") != std::string::npos);
}

namespace {

struct DeviceFlow {
  std::promise<DeviceCodePrompt> prompted;
  std::atomic<int> prompts{0};
  std::shared_ptr<EntraCredential> cred;
  std::future<Result<AccessToken>> pending;

  std::mutex mutex;
  std::vector<std::chrono::seconds> waits;  // between polls, as the credential asked

  DeviceFlow(const TestIdp& idp, const fs::path& cache_dir) {
    auto options = base_options(idp);
    options["method"] = "device-code";
    options["client_id"] = idp.state()["clients"]["public"]["client_id"];
    cred = make_credential(
        options, cache_dir,
        [this](const DeviceCodePrompt& p) {
          if (prompts++ == 0) prompted.set_value(p);
        },
        nullptr,
        [this](std::chrono::seconds d) {
          {
            std::lock_guard lock(mutex);
            waits.push_back(d);
          }
          std::this_thread::sleep_for(d);  // the provider enforces the interval in real time
        });
    pending = std::async(std::launch::async, [this] { return cred->get_token(arc_server_app_id); });
  }

  DeviceCodePrompt prompt() {
    auto f = prompted.get_future();
    REQUIRE(f.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
    return f.get();
  }

  Result<AccessToken> result() {
    REQUIRE(pending.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    return pending.get();
  }
};

}  // namespace

TEST_CASE("auth-entra/idp: device code declined, slowed down, expired", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  // Each section starts its own provider: the last one needs short-lived codes.

  SECTION("declined in the browser") {
    TestIdp idp(dir.path(), {{"device_interval", 1}});
    DeviceFlow flow(idp, dir.path() / "cache");
    auto p = flow.prompt();
    idp.admin("device/decline", {{"user_code", p.user_code}});
    auto r = flow.result();
    REQUIRE_FALSE(r);
    CHECK(r.error().find("declined") != std::string::npos);
  }
  SECTION("slow_down widens the polling interval, then sign-in completes") {
    TestIdp idp(dir.path(), {{"device_interval", 1}});
    idp.admin("fail-token-requests", {{"count", 1}, {"status", 400}, {"error", "slow_down"}});
    DeviceFlow flow(idp, dir.path() / "cache");
    auto p = flow.prompt();
    wait_for_token_requests(idp, 1);  // the first poll got slow_down
    idp.admin("device/complete", {{"user_code", p.user_code}});
    auto r = flow.result();
    INFO((r ? std::string() : r.error()));
    REQUIRE(r);
    // 1 s to the first poll, then 1 + 5 s to the next.
    std::lock_guard lock(flow.mutex);
    REQUIRE(flow.waits.size() >= 2);
    CHECK(flow.waits[0] == std::chrono::seconds(1));
    CHECK(flow.waits[1] == std::chrono::seconds(6));
  }
  SECTION("nobody signs in before the code expires") {
    TestIdp idp(dir.path(), {{"device_interval", 1}, {"device_code_ttl", 3}});
    DeviceFlow flow(idp, dir.path() / "cache");
    flow.prompt();
    auto r = flow.result();
    REQUIRE_FALSE(r);
    CHECK(r.error().find("expired") != std::string::npos);
  }
}

TEST_CASE("auth-entra/idp: a user with too many groups is refused as group overage", "[auth-entra][idp]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path(), {{"users", {{{"id", "bob"}, {"upn", "bob@contoso.example"}, {"name", "Bob"}, {"groups_overage", true}}}},
                           {"device_interval", 1}});
  DeviceFlow flow(idp, dir.path() / "cache");
  auto p = flow.prompt();
  idp.admin("device/complete", {{"user_code", p.user_code}, {"user", "bob"}});
  auto r = flow.result();
  INFO((r ? std::string() : r.error()));
  REQUIRE(r);
  auto out = validate(idp, r->token);
  CHECK(out.failure == AuthFailure::group_overage);
}

TEST_CASE("auth-entra/idp: credential over TLS with ca_file", "[auth-entra][idp][credential][tls]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path(), nullptr, /*tls=*/true);
  const auto& c = idp.state()["clients"]["certificate"];
  nlohmann::json options = {{"method", "client-certificate"},
                            {"tenant_id", idp.tenant()},
                            {"authority", idp.authority()},
                            {"client_id", c["client_id"]},
                            {"certificate_path", c["certificate_path"]},
                            {"ca_file", idp.ca_file()}};
  auto token = make_credential(options)->get_token(arc_server_app_id);
  INFO((token ? std::string() : token.error()));
  REQUIRE(token);

  options.erase("ca_file");
  auto refused = make_credential(options)->get_token(arc_server_app_id);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().find("certificate") != std::string::npos);
}

TEST_CASE("auth-entra/idp: a refused refresh token leads to a new sign-in", "[auth-entra][idp][credential]") {
  REQUIRE_IDP();
  clusterconnect::test::TempDir dir;
  TestIdp idp(dir.path(), {{"device_interval", 1}});
  const std::string client_id = idp.state()["clients"]["public"]["client_id"];
  // An expired access token and a refresh token the provider never issued.
  TokenCache(dir.path() / "cache" / "entra-token-cache.json")
      .store(TokenCache::key(idp.authority(), idp.tenant(), client_id, arc_server_app_id), {"stale", "not-a-refresh-token", 1000, 900});

  DeviceFlow flow(idp, dir.path() / "cache");
  auto p = flow.prompt();
  idp.admin("device/complete", {{"user_code", p.user_code}});
  auto r = flow.result();
  INFO((r ? std::string() : r.error()));
  REQUIRE(r);
  CHECK(r->token != "stale");
  CHECK(validate(idp, r->token).ok());
}
