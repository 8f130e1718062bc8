#include "oidc_credential.hpp"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "encoding.hpp"
#include "jws.hpp"

namespace clusterconnect::oidc {
namespace {

// A minute's margin, so a token is never presented in its last moments.
constexpr std::chrono::seconds expiry_margin{60};

std::string env_or(const char* name, std::string value) {
  if (!value.empty()) return value;
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string trimmed(std::string s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

// An OAuth error answer as one line: `error` and `error_description`.
std::string oauth_error(long status, const std::string& body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  std::string why = "HTTP " + std::to_string(status);
  if (j.is_object() && j.contains("error") && j["error"].is_string()) {
    why += ": " + auth::printable(j["error"].get<std::string>());
    if (j.contains("error_description") && j["error_description"].is_string())
      why += " (" + auth::printable(j["error_description"].get<std::string>(), 200) + ")";
  }
  return why;
}

constexpr const char* device_code_grant = "urn:ietf:params:oauth:grant-type:device_code";

long long integer_or_string(const nlohmann::json& j, const char* name) {
  if (!j.is_object() || !j.contains(name)) return 0;
  const auto& v = j[name];
  if (v.is_number_integer()) return v.get<long long>();
  if (v.is_string()) return std::atoll(v.get<std::string>().c_str());
  return 0;
}

void print_prompt(const DeviceCodePrompt& p) {
  std::fprintf(stderr, "To sign in, open %s and enter the code %s\n", p.verification_uri.c_str(), p.user_code.c_str());
  std::fflush(stderr);
}

}  // namespace

std::string pkce_challenge(const std::string& verifier) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int len = 0;
  if (EVP_Digest(verifier.data(), verifier.size(), digest.data(), &len, EVP_sha256(), nullptr) != 1) return {};
  return auth::base64url_encode(std::string_view(reinterpret_cast<const char*>(digest.data()), len));
}

Pkce make_pkce() {
  std::array<unsigned char, 32> random{};
  if (RAND_bytes(random.data(), static_cast<int>(random.size())) != 1) return {};
  Pkce p;
  p.verifier = auth::base64url_encode(std::string_view(reinterpret_cast<const char*>(random.data()), random.size()));
  p.challenge = pkce_challenge(p.verifier);
  return p;
}

Result<std::chrono::system_clock::time_point> unverified_expiry(const std::string& jwt) {
  auto parsed = auth::parse_jws(jwt);
  if (!parsed.ok()) return fail("not a JWT: " + parsed.message);
  long long exp = 0;
  const auto* claim = auth::claim(parsed.jws.payload, "exp");
  if (!claim || !auth::numeric_date(*claim, exp)) return fail("the JWT has no numeric 'exp' claim");
  return std::chrono::system_clock::time_point(std::chrono::seconds(exp));
}

Result<CredentialConfig> parse_credential_options(const nlohmann::json& options) {
  if (!options.is_null() && !options.is_object()) return fail("credential:oidc options must be a JSON object");
  const nlohmann::json o = options.is_null() ? nlohmann::json::object() : options;
  CredentialConfig c;
  try {
    c.method = o.value("method", std::string("client-credentials"));
    c.http.allow_http_loopback = o.value("allow_http_loopback", false);
    c.http.ca_file = o.value("ca_file", std::string());
    if (c.method == "token-file") {
      c.token_file = env_or("OIDC_TOKEN_FILE", o.value("token_file", std::string()));
      if (c.token_file.empty())
        return fail("credential:oidc method token-file needs 'token_file' (or OIDC_TOKEN_FILE)");
      return c;
    }
    if (c.method == "github-actions") {
      // The request token is a job-scoped secret: from the runner's
      // environment only, never from a configuration file.
      auto runner = auth::actions_id_token_request_from_env();
      if (!runner)
        return fail(
            "credential:oidc method github-actions needs ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN, "
            "which the runner sets only for a job with 'permissions: id-token: write'");
      if (auto ok = auth::check_actions_id_token_url(runner->url, c.http); !ok) return fail(ok.error());
      c.actions_id_token = *runner;
      c.audience = o.value("audience", std::string());
      return c;
    }
    if (c.method != "client-credentials" && c.method != "device-code")
      return fail("credential:oidc method '" + auth::printable(c.method) +
                  "' is not supported; use client-credentials, device-code, token-file or github-actions");
    c.issuer = o.value("issuer", std::string());
    c.client_id = o.value("client_id", std::string());
    c.scope = o.value("scope", std::string(c.method == "device-code" ? "openid offline_access" : ""));
    if (c.issuer.empty()) return fail("credential:oidc needs 'issuer': the OpenID provider's issuer URL");
    if (auto ok = auth::check_url_allowed(c.issuer, c.http); !ok) return fail("issuer: " + ok.error());
    if (c.method == "device-code") {
      if (c.client_id.empty()) return fail("credential:oidc method device-code needs 'client_id' (a public client)");
      return c;
    }
    c.client_secret = env_or("OIDC_CLIENT_SECRET", o.value("client_secret", std::string()));
    if (c.client_id.empty() || c.client_secret.empty())
      return fail(
          "credential:oidc method client-credentials needs 'client_id' and 'client_secret' (or OIDC_CLIENT_SECRET)");
  } catch (const nlohmann::json::exception& e) {
    return fail(std::string("credential:oidc options: ") + e.what());
  }
  return c;
}

OidcCredential::OidcCredential(CredentialConfig config) : config_(std::move(config)), http_(config_.http) {
  if (!config_.device_code_prompt) config_.device_code_prompt = &print_prompt;
  if (!config_.sleep) config_.sleep = [](std::chrono::seconds d) { std::this_thread::sleep_for(d); };
  if (config_.default_poll_interval.count() <= 0) config_.default_poll_interval = std::chrono::seconds(5);
}

Result<AccessToken> OidcCredential::get_token(const std::string& resource) noexcept {
  try {
    std::lock_guard lock(mutex_);
    if (config_.method == "token-file") return from_file();
    if (config_.method == "github-actions") return from_runner(resource);
    if (config_.method == "device-code") return device_code(resource);
    return client_credentials(resource);
  } catch (const std::exception& e) {
    return fail(std::string("credential:oidc: ") + e.what());
  }
}

Result<AccessToken> OidcCredential::from_file() {
  std::ifstream in(config_.token_file, std::ios::binary);
  if (!in) return fail("cannot read the token file " + config_.token_file);
  std::string text(auth::max_token_size + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > auth::max_token_size)
    return fail("the token file " + config_.token_file + " is larger than a token can be");
  AccessToken t{trimmed(std::move(text)), {}};
  auto exp = unverified_expiry(t.token);
  if (!exp) return fail("the token file " + config_.token_file + " holds no usable token: " + exp.error());
  if (config_.clock() >= *exp)
    return fail("the token in " + config_.token_file + " has expired; whatever writes it has not renewed it");
  t.expires_on = *exp;
  return t;
}

Result<std::string> OidcCredential::token_endpoint() {
  if (!token_endpoint_.empty()) return token_endpoint_;
  std::string base = config_.issuer;
  while (!base.empty() && base.back() == '/') base.pop_back();
  const std::string url = base + "/.well-known/openid-configuration";
  auto r = http_.get(url);
  if (!r) return fail("cannot read the OpenID configuration: " + r.error());
  if (r->status != 200) return fail("GET " + url + " answered HTTP " + std::to_string(r->status));
  auto doc = nlohmann::json::parse(r->body, nullptr, false);
  if (!doc.is_object() || !doc.contains("token_endpoint") || !doc["token_endpoint"].is_string())
    return fail("the OpenID configuration at " + url + " has no token_endpoint");
  if (auto ok = auth::check_url_allowed(doc["token_endpoint"].get<std::string>(), config_.http); !ok)
    return fail("token_endpoint: " + ok.error());
  if (doc.contains("device_authorization_endpoint") && doc["device_authorization_endpoint"].is_string()) {
    const std::string device = doc["device_authorization_endpoint"].get<std::string>();
    if (auto ok = auth::check_url_allowed(device, config_.http); !ok) return fail("device_authorization_endpoint: " + ok.error());
    device_authorization_endpoint_ = device;
  }
  token_endpoint_ = doc["token_endpoint"].get<std::string>();
  return token_endpoint_;
}

Result<AccessToken> OidcCredential::client_credentials(const std::string& resource) {
  const auto now = config_.clock();
  if (auto it = cache_.find(resource); it != cache_.end() && it->second.expires_on - expiry_margin > now)
    return it->second;
  auto endpoint = token_endpoint();
  if (!endpoint) return fail(endpoint.error());
  auth::FormFields form{
      {"grant_type", "client_credentials"}, {"client_id", config_.client_id}, {"client_secret", config_.client_secret}};
  if (!config_.scope.empty()) form.emplace_back("scope", config_.scope);
  if (!resource.empty()) form.emplace_back("resource", resource);
  auto r = http_.post_form(*endpoint, auth::form_encode(form));
  if (!r) return fail("token request to " + *endpoint + " failed: " + r.error());
  if (r->status != 200)
    return fail("the identity provider refused the client credentials of " + config_.client_id + ": " +
                oauth_error(r->status, r->body));
  auto body = nlohmann::json::parse(r->body, nullptr, false);
  if (!body.is_object() || !body.contains("access_token") || !body["access_token"].is_string())
    return fail("the token response from " + *endpoint + " has no access_token");
  AccessToken t{body["access_token"].get<std::string>(), {}};
  const long long expires_in =
      body.contains("expires_in") && body["expires_in"].is_number_integer() ? body["expires_in"].get<long long>() : 0;
  if (expires_in > 0) {
    t.expires_on = now + std::chrono::seconds(expires_in);
  } else if (auto exp = unverified_expiry(t.token)) {
    t.expires_on = *exp;
  } else {
    t.expires_on = now + expiry_margin * 2;  // opaque and no lifetime given: ask again soon
  }
  cache_[resource] = t;
  return t;
}

Result<AccessToken> OidcCredential::token_response(const auth::HttpResponse& r, const std::string& what) {
  const auto now = config_.clock();
  auto body = nlohmann::json::parse(r.body, nullptr, false);
  if (!body.is_object() || !body.contains("access_token") || !body["access_token"].is_string())
    return fail(what + ": the token response has no access_token");
  AccessToken t{body["access_token"].get<std::string>(), {}};
  const long long expires_in = integer_or_string(body, "expires_in");
  if (expires_in > 0) {
    t.expires_on = now + std::chrono::seconds(expires_in);
  } else if (auto exp = unverified_expiry(t.token)) {
    t.expires_on = *exp;
  } else {
    t.expires_on = now + expiry_margin * 2;
  }
  return t;
}

Result<AccessToken> OidcCredential::device_code(const std::string& resource) {
  if (auto it = cache_.find(resource); it != cache_.end() && it->second.expires_on - expiry_margin > config_.clock())
    return it->second;
  auto endpoint = token_endpoint();
  if (!endpoint) return fail(endpoint.error());

  // A refresh token renews without asking the person again; one the
  // provider refuses (revoked, expired) means a new sign-in, a network
  // failure does not.
  if (auto rt = refresh_tokens_.find(resource); rt != refresh_tokens_.end()) {
    auth::FormFields form{{"grant_type", "refresh_token"}, {"client_id", config_.client_id}, {"refresh_token", rt->second}};
    if (!resource.empty()) form.emplace_back("resource", resource);
    auto r = http_.post_form(*endpoint, auth::form_encode(form));
    if (!r) return fail("token refresh at " + *endpoint + " failed: " + r.error());
    if (r->status == 200) {
      auto t = token_response(*r, "token refresh");
      if (!t) return t;
      auto body = nlohmann::json::parse(r->body, nullptr, false);
      if (body.is_object() && body.contains("refresh_token") && body["refresh_token"].is_string())
        rt->second = body["refresh_token"].get<std::string>();
      cache_[resource] = *t;
      return t;
    }
    refresh_tokens_.erase(rt);
  }

  if (device_authorization_endpoint_.empty())
    return fail("the OpenID provider " + config_.issuer + " offers no device authorization endpoint; use another method");
  const Pkce pkce = make_pkce();
  if (pkce.verifier.empty() || pkce.challenge.empty()) return fail("cannot generate a PKCE code verifier");
  auth::FormFields start{{"client_id", config_.client_id}};
  if (!config_.scope.empty()) start.emplace_back("scope", config_.scope);
  if (!resource.empty()) start.emplace_back("resource", resource);
  start.emplace_back("code_challenge", pkce.challenge);
  start.emplace_back("code_challenge_method", "S256");
  auto r = http_.post_form(device_authorization_endpoint_, auth::form_encode(start));
  if (!r) return fail("device authorization request to " + device_authorization_endpoint_ + " failed: " + r.error());
  if (r->status != 200)
    return fail("the identity provider refused the device authorization request of " + config_.client_id + ": " +
                oauth_error(r->status, r->body));
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object()) return fail("the device authorization response is not a JSON object");
  const std::string device_code = j.value("device_code", std::string());
  DeviceCodePrompt prompt;
  prompt.user_code = j.value("user_code", std::string());
  prompt.verification_uri = j.value("verification_uri", std::string());
  prompt.verification_uri_complete = j.value("verification_uri_complete", std::string());
  if (device_code.empty() || prompt.user_code.empty() || prompt.verification_uri.empty())
    return fail("the device authorization response lacks device_code, user_code or verification_uri");
  long long expires_in = integer_or_string(j, "expires_in");
  if (expires_in <= 0) expires_in = 600;
  prompt.expires_in = std::chrono::seconds(expires_in);
  long long interval = integer_or_string(j, "interval");
  if (interval <= 0) interval = config_.default_poll_interval.count();
  config_.device_code_prompt(prompt);

  // RFC 8628 polling, bounded by the code's lifetime; the verifier proves
  // the poller is the one that started the flow.
  const auto deadline = std::chrono::steady_clock::now() + prompt.expires_in;
  auth::FormFields poll{{"grant_type", device_code_grant},
                        {"client_id", config_.client_id},
                        {"device_code", device_code},
                        {"code_verifier", pkce.verifier}};
  if (!resource.empty()) poll.emplace_back("resource", resource);
  const std::string body = auth::form_encode(poll);
  for (;;) {
    config_.sleep(std::chrono::seconds(interval));
    if (std::chrono::steady_clock::now() > deadline)
      return fail("the sign-in code expired before sign-in finished; run the command again");
    auto p = http_.post_form(*endpoint, body);
    if (!p) return fail("device-code sign-in: " + p.error());
    if (p->status == 200) {
      auto t = token_response(*p, "device-code sign-in");
      if (!t) return t;
      auto pj = nlohmann::json::parse(p->body, nullptr, false);
      if (pj.is_object() && pj.contains("refresh_token") && pj["refresh_token"].is_string())
        refresh_tokens_[resource] = pj["refresh_token"].get<std::string>();
      cache_[resource] = *t;
      return t;
    }
    auto pj = nlohmann::json::parse(p->body, nullptr, false);
    const std::string error = pj.is_object() && pj.contains("error") && pj["error"].is_string() ? pj["error"].get<std::string>() : "";
    if (error == "authorization_pending") continue;
    if (error == "slow_down") {
      interval += 5;
      continue;
    }
    if (error == "expired_token") return fail("the sign-in code expired before sign-in finished; run the command again");
    if (error == "access_denied") return fail("sign-in was declined in the browser");
    return fail("device-code sign-in was refused: " + oauth_error(p->status, p->body));
  }
}

Result<AccessToken> OidcCredential::from_runner(const std::string& resource) {
  const std::string audience = !resource.empty() ? resource : config_.audience;
  if (audience.empty())
    return fail("credential:oidc method github-actions needs an audience: the cluster's OIDC client ID ('audience')");
  if (auto it = cache_.find(audience); it != cache_.end() && it->second.expires_on - expiry_margin > config_.clock())
    return it->second;
  auto token = auth::fetch_actions_id_token(http_, config_.actions_id_token, audience);
  if (!token) return fail(token.error());
  auto exp = unverified_expiry(*token);
  if (!exp) return fail("the GitHub Actions runner's ID token has no usable expiry: " + exp.error());
  AccessToken t{std::move(*token), *exp};
  cache_[audience] = t;
  return t;
}

}  // namespace clusterconnect::oidc
