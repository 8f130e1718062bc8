#include "oidc_credential.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>

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

}  // namespace

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
    if (c.method == "token-file") {
      c.token_file = env_or("OIDC_TOKEN_FILE", o.value("token_file", std::string()));
      if (c.token_file.empty())
        return fail("credential:oidc method token-file needs 'token_file' (or OIDC_TOKEN_FILE)");
      return c;
    }
    if (c.method != "client-credentials")
      return fail("credential:oidc method '" + auth::printable(c.method) +
                  "' is not supported; use client-credentials or token-file");
    c.issuer = o.value("issuer", std::string());
    c.client_id = o.value("client_id", std::string());
    c.client_secret = env_or("OIDC_CLIENT_SECRET", o.value("client_secret", std::string()));
    c.scope = o.value("scope", std::string());
    c.http.allow_http_loopback = o.value("allow_http_loopback", false);
    c.http.ca_file = o.value("ca_file", std::string());
    if (c.issuer.empty()) return fail("credential:oidc needs 'issuer': the OpenID provider's issuer URL");
    if (auto ok = auth::check_url_allowed(c.issuer, c.http); !ok) return fail("issuer: " + ok.error());
    if (c.client_id.empty() || c.client_secret.empty())
      return fail(
          "credential:oidc method client-credentials needs 'client_id' and 'client_secret' (or OIDC_CLIENT_SECRET)");
  } catch (const nlohmann::json::exception& e) {
    return fail(std::string("credential:oidc options: ") + e.what());
  }
  return c;
}

OidcCredential::OidcCredential(CredentialConfig config) : config_(std::move(config)), http_(config_.http) {}

Result<AccessToken> OidcCredential::get_token(const std::string& resource) noexcept {
  try {
    std::lock_guard lock(mutex_);
    return config_.method == "token-file" ? from_file() : client_credentials(resource);
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

}  // namespace clusterconnect::oidc
