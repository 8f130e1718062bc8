#include "entra_credential.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "azure_cli.hpp"
#include "client_assertion.hpp"
#include "clusterconnect/ascii.hpp"
#include "encoding.hpp"
#include "entra_authenticator.hpp"

namespace clusterconnect::entra {
namespace {

constexpr const char* jwt_bearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
constexpr const char* device_code_grant = "urn:ietf:params:oauth:grant-type:device_code";
constexpr std::size_t max_federated_token_size = 64 * 1024;

std::string env_or(const nlohmann::json& o, const char* option, const char* variable) {
  if (o.contains(option) && o[option].is_string() && !o[option].get<std::string>().empty()) return o[option].get<std::string>();
  const char* v = std::getenv(variable);
  return v ? v : "";
}

std::string scope_for(const std::string& resource) {
  const std::string suffix = "/.default";
  if (resource.size() >= suffix.size() && resource.compare(resource.size() - suffix.size(), suffix.size(), suffix) == 0) return resource;
  return resource + suffix;
}

// The provider's error as one line: code, description's first line, AADSTS number.
std::string describe_error(const nlohmann::json& body, long status) {
  std::string out = body.value("error", std::string("HTTP ") + std::to_string(status));
  std::string desc = body.value("error_description", std::string());
  if (auto nl = desc.find_first_of("\r\n"); nl != std::string::npos) desc.resize(nl);
  if (desc.size() > 300) desc = desc.substr(0, 300) + "...";
  if (!desc.empty()) out += ": " + desc;
  if (body.contains("error_codes") && body["error_codes"].is_array() && !body["error_codes"].empty() && body["error_codes"][0].is_number() &&
      desc.find("AADSTS") == std::string::npos) {
    out += " (AADSTS" + std::to_string(body["error_codes"][0].get<long long>()) + ")";
  }
  return out;
}

long long number_or_string(const nlohmann::json& j, const char* name) {
  if (!j.contains(name)) return 0;
  const auto& v = j[name];
  if (v.is_number_integer()) return v.get<long long>();
  if (v.is_string()) return std::atoll(v.get<std::string>().c_str());  // v1 endpoints send strings
  return 0;
}

Result<std::string> read_federated_token(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail("cannot read the federated token file " + path + " (AZURE_FEDERATED_TOKEN_FILE)");
  std::string token;
  token.resize(max_federated_token_size + 1);
  in.read(token.data(), static_cast<std::streamsize>(token.size()));
  token.resize(static_cast<std::size_t>(in.gcount()));
  if (token.size() > max_federated_token_size) return fail("federated token file " + path + " is larger than 64 KiB");
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.front()))) token.erase(0, 1);
  if (token.empty()) return fail("federated token file " + path + " is empty");
  return token;
}

// One JSON line, for hosts whose stderr is read by a program (`-o json`).
void print_prompt_json(const DeviceCodePrompt& p) {
  const nlohmann::json event = {{"event", "device_code"},
                                {"verification_uri", p.verification_uri},
                                {"user_code", p.user_code},
                                {"message", p.message},
                                {"expires_in", p.expires_in.count()}};
  std::fprintf(stderr, "%s\n", event.dump().c_str());
  std::fflush(stderr);
}

void print_prompt(const DeviceCodePrompt& p) {
  const std::string line = !p.message.empty() ? p.message
                                              : "To sign in, use a web browser to open the page " + p.verification_uri + " and enter the code " +
                                                    p.user_code + " to authenticate.";
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace

long long refresh_margin(const CachedToken& t) {
  const long long lifetime = std::max(0LL, t.expires_on - t.issued_on);
  return std::min(300LL, lifetime / 2);
}

Result<CredentialConfig> parse_credential_options(const nlohmann::json& options, const std::filesystem::path& cache_dir) {
  if (!options.is_null() && !options.is_object()) return fail("credential:entra options must be a JSON object");
  const nlohmann::json o = options.is_null() ? nlohmann::json::object() : options;
  CredentialConfig c;
  try {
    c.tenant_id = env_or(o, "tenant_id", "AZURE_TENANT_ID");
    c.client_id = env_or(o, "client_id", "AZURE_CLIENT_ID");
    c.client_secret = env_or(o, "client_secret", "AZURE_CLIENT_SECRET");
    c.certificate_path = env_or(o, "certificate_path", "AZURE_CLIENT_CERTIFICATE_PATH");
    c.federated_token_file = env_or(o, "federated_token_file", "AZURE_FEDERATED_TOKEN_FILE");
    c.authority = env_or(o, "authority", "AZURE_AUTHORITY_HOST");
    // The runner's request token is a job-scoped secret: from the
    // environment only, where the runner puts it, never from a config file.
    if (auto runner = actions_id_token_request_from_env()) c.actions_id_token = *runner;
    c.federated_audience = o.value("federated_audience", std::string(entra_token_exchange_audience));
    if (c.federated_audience.empty()) return fail("federated_audience must not be empty");
    if (c.authority.empty()) c.authority = default_authority;
    while (!c.authority.empty() && c.authority.back() == '/') c.authority.pop_back();
    c.http.allow_http_loopback = o.value("allow_http_loopback", false);
    c.http.ca_file = o.value("ca_file", std::string());
    if (auto ok = check_url_allowed(c.authority + "/", c.http); !ok) return fail("authority: " + ok.error());
    if (o.value("cache", true) && !cache_dir.empty()) c.cache_file = cache_dir / "entra-token-cache.json";

    std::string method = o.value("method", std::string("auto"));
    const bool have_app = !c.client_id.empty() && !c.tenant_id.empty();
    if (method == "auto") {
      if (have_app && !c.client_secret.empty()) {
        method = "client-secret";
      } else if (have_app && !c.certificate_path.empty()) {
        method = "client-certificate";
      } else if (have_app && !c.federated_token_file.empty()) {
        method = "workload-identity";
      } else if (have_app && !c.actions_id_token.url.empty()) {
        method = "github-actions";
      } else if (!find_on_path(c.az_command).empty()) {
        method = "azure-cli";
      } else if (::isatty(STDERR_FILENO)) {
        method = "device-code";
      } else {
        return fail(
            "no Entra ID credential is available: set AZURE_CLIENT_ID and AZURE_TENANT_ID with AZURE_CLIENT_SECRET, "
            "AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE (or, in GitHub Actions, give the job "
            "'permissions: id-token: write'); or install the Azure CLI and run 'az login'; "
            "or run on a terminal to sign in with a device code");
      }
    }
    auto need = [&](const std::string& value, const char* what) -> Result<void> {
      if (value.empty()) return fail("credential method '" + method + "' needs " + what);
      return {};
    };
    Result<void> ok;
    if (method == "client-secret") {
      if (!(ok = need(c.client_id, "a client ID (client_id or AZURE_CLIENT_ID)"))) return fail(ok.error());
      if (!(ok = need(c.tenant_id, "a tenant ID (tenant_id or AZURE_TENANT_ID)"))) return fail(ok.error());
      if (!(ok = need(c.client_secret, "a client secret (client_secret or AZURE_CLIENT_SECRET)"))) return fail(ok.error());
    } else if (method == "client-certificate") {
      if (!(ok = need(c.client_id, "a client ID (client_id or AZURE_CLIENT_ID)"))) return fail(ok.error());
      if (!(ok = need(c.tenant_id, "a tenant ID (tenant_id or AZURE_TENANT_ID)"))) return fail(ok.error());
      if (!(ok = need(c.certificate_path, "a PEM certificate with its key (certificate_path or AZURE_CLIENT_CERTIFICATE_PATH)")))
        return fail(ok.error());
    } else if (method == "workload-identity") {
      if (!(ok = need(c.client_id, "a client ID (client_id or AZURE_CLIENT_ID)"))) return fail(ok.error());
      if (!(ok = need(c.tenant_id, "a tenant ID (tenant_id or AZURE_TENANT_ID)"))) return fail(ok.error());
      if (!(ok = need(c.federated_token_file, "a federated token file (federated_token_file or AZURE_FEDERATED_TOKEN_FILE)")))
        return fail(ok.error());
    } else if (method == "github-actions") {
      if (!(ok = need(c.client_id, "a client ID (client_id or AZURE_CLIENT_ID)"))) return fail(ok.error());
      if (!(ok = need(c.tenant_id, "a tenant ID (tenant_id or AZURE_TENANT_ID)"))) return fail(ok.error());
      if (c.actions_id_token.url.empty())
        return fail(
            "credential method 'github-actions' needs ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN, "
            "which the runner sets only for a job with 'permissions: id-token: write'");
      if (auto url_ok = check_actions_id_token_url(c.actions_id_token.url, c.http); !url_ok) return fail(url_ok.error());
    } else if (method == "device-code") {
      if (c.client_id.empty()) c.client_id = azure_cli_client_id;
      if (c.tenant_id.empty()) c.tenant_id = "organizations";
    } else if (method != "azure-cli") {
      return fail("unknown credential method '" + method +
                  "'; use auto, client-secret, client-certificate, workload-identity, github-actions, azure-cli or device-code");
    }
    if (!c.tenant_id.empty() && !valid_tenant(c.tenant_id)) return fail("tenant '" + c.tenant_id + "' is not a tenant ID or domain name");
    c.method = method;
    const std::string prompt = o.value("device_code_prompt", std::string("text"));
    if (prompt == "json") {
      c.device_code_prompt = &print_prompt_json;
    } else if (prompt == "text") {
      c.device_code_prompt = &print_prompt;
    } else {
      return fail("device_code_prompt must be \"text\" or \"json\"");
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(std::string("credential:entra options: ") + e.what());
  }
  return c;
}

EntraCredential::EntraCredential(CredentialConfig config) : config_(std::move(config)), http_(config_.http) {
  if (!config_.cache_file.empty()) {
    disk_.emplace(config_.cache_file);
    if (auto ok = disk_->usable(); !ok) {
      std::fprintf(stderr, "connectedk8s: warning: %s; signing in without a token cache\n", ok.error().c_str());
      std::fflush(stderr);
      disk_.reset();
    }
  }
  if (!config_.clock) config_.clock = [] { return std::chrono::system_clock::now(); };
  if (!config_.sleep) config_.sleep = [](std::chrono::seconds d) { std::this_thread::sleep_for(d); };
  if (!config_.device_code_prompt) config_.device_code_prompt = &print_prompt;
}

long long EntraCredential::now() const {
  return std::chrono::duration_cast<std::chrono::seconds>(config_.clock().time_since_epoch()).count();
}

Result<EntraCredential::Endpoints> EntraCredential::endpoints() {
  if (endpoints_) return *endpoints_;
  const std::string url = config_.authority + "/" + config_.tenant_id + "/v2.0/.well-known/openid-configuration";
  auto r = http_.get(url);
  if (!r) return fail("cannot reach Entra ID: " + r.error());
  if (r->status != 200) return fail("Entra ID discovery at " + url + " answered HTTP " + std::to_string(r->status) + " (wrong tenant or authority?)");
  auto doc = nlohmann::json::parse(r->body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("token_endpoint") || !doc["token_endpoint"].is_string()) {
    return fail("Entra ID discovery at " + url + " has no token_endpoint");
  }
  Endpoints ep;
  ep.token = doc["token_endpoint"].get<std::string>();
  ep.device_authorization = doc.value("device_authorization_endpoint", std::string());
  endpoints_ = ep;
  return ep;
}

Result<EntraCredential::Acquired> EntraCredential::token_request(const std::string& url, const std::string& body, const char* what) {
  last_oauth_error_.clear();
  auto r = http_.post_form(url, body);
  if (!r) return fail(std::string(what) + ": " + r.error());
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail(std::string(what) + ": Entra ID answered HTTP " + std::to_string(r->status) + " without JSON");
  if (r->status != 200) {
    last_oauth_error_ = j.value("error", std::string());
    return fail(std::string(what) + " was refused: " + describe_error(j, r->status));
  }
  Acquired a;
  a.access_token = j.value("access_token", std::string());
  a.refresh_token = j.value("refresh_token", std::string());
  a.token_type = j.value("token_type", std::string());
  a.expires_in = number_or_string(j, "expires_in");
  if (a.access_token.empty() || a.expires_in <= 0) return fail(std::string(what) + ": the token response has no access_token or expires_in");
  return a;
}

Result<EntraCredential::Acquired> EntraCredential::client_credentials(const std::string& resource, const Endpoints& ep) {
  FormFields f = {{"grant_type", "client_credentials"}, {"client_id", config_.client_id}, {"scope", scope_for(resource)}};
  const char* what = "client secret sign-in";
  if (config_.method == "client-secret") {
    f.emplace_back("client_secret", config_.client_secret);
  } else if (config_.method == "client-certificate") {
    what = "client certificate sign-in";
    auto cert = load_client_certificate(config_.certificate_path);
    if (!cert) return fail(cert.error());
    auto assertion = make_client_assertion(*cert, config_.client_id, ep.token);
    if (!assertion) return fail(assertion.error());
    f.emplace_back("client_assertion_type", jwt_bearer);
    f.emplace_back("client_assertion", *assertion);
  } else {
    auto assertion = federated_assertion(what);
    if (!assertion) return fail(assertion.error());
    f.emplace_back("client_assertion_type", jwt_bearer);
    f.emplace_back("client_assertion", *assertion);
  }
  add_pop_fields(f);
  return token_request(ep.token, form_encode(f), what);
}

// A fresh federated token for every exchange: the kubelet rotates the
// projected token file, and the runner's tokens live minutes.
Result<std::string> EntraCredential::federated_assertion(const char*& what) {
  if (config_.method == "github-actions") {
    what = "GitHub Actions workload identity sign-in";
    return fetch_actions_id_token(http_, config_.actions_id_token, config_.federated_audience);
  }
  what = "workload identity sign-in";
  return read_federated_token(config_.federated_token_file);
}

Result<EntraCredential::Acquired> EntraCredential::refresh(const std::string& resource, const std::string& refresh_token, const Endpoints& ep) {
  FormFields f = {{"grant_type", "refresh_token"},
                  {"client_id", config_.client_id},
                  {"refresh_token", refresh_token},
                  {"scope", scope_for(resource) + " offline_access"}};
  add_pop_fields(f);
  return token_request(ep.token, form_encode(f), "token refresh");
}

Result<EntraCredential::Acquired> EntraCredential::device_code(const std::string& resource, const Endpoints& ep) {
  if (ep.device_authorization.empty()) return fail("this Entra ID authority offers no device-code sign-in");
  auto r = http_.post_form(ep.device_authorization,
                           form_encode({{"client_id", config_.client_id}, {"scope", scope_for(resource) + " offline_access"}}));
  if (!r) return fail("device-code sign-in: " + r.error());
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail("device-code sign-in: Entra ID answered HTTP " + std::to_string(r->status) + " without JSON");
  if (r->status != 200) return fail("device-code sign-in was refused: " + describe_error(j, r->status));
  const std::string device_code = j.value("device_code", std::string());
  DeviceCodePrompt prompt;
  prompt.user_code = j.value("user_code", std::string());
  prompt.verification_uri = j.value("verification_uri", j.value("verification_url", std::string()));
  prompt.message = j.value("message", std::string());
  long long expires_in = number_or_string(j, "expires_in");
  if (expires_in <= 0) expires_in = 900;
  prompt.expires_in = std::chrono::seconds(expires_in);
  if (device_code.empty() || prompt.user_code.empty() || prompt.verification_uri.empty()) {
    return fail("device-code sign-in: the response lacks device_code, user_code or verification_uri");
  }
  long long interval = number_or_string(j, "interval");
  if (interval <= 0) interval = config_.default_poll_interval.count();
  config_.device_code_prompt(prompt);

  const auto deadline = std::chrono::steady_clock::now() + prompt.expires_in;
  FormFields poll = {{"grant_type", device_code_grant}, {"client_id", config_.client_id}, {"device_code", device_code}};
  add_pop_fields(poll);
  const std::string body = form_encode(poll);
  for (;;) {
    config_.sleep(std::chrono::seconds(interval));
    if (std::chrono::steady_clock::now() > deadline) return fail("the sign-in code expired before sign-in finished; run the command again");
    auto p = http_.post_form(ep.token, body);
    if (!p) return fail("device-code sign-in: " + p.error());
    auto pj = nlohmann::json::parse(p->body, nullptr, false);
    if (pj.is_discarded() || !pj.is_object()) return fail("device-code sign-in: Entra ID answered HTTP " + std::to_string(p->status) + " without JSON");
    if (p->status == 200) {
      Acquired a;
      a.access_token = pj.value("access_token", std::string());
      a.refresh_token = pj.value("refresh_token", std::string());
      a.token_type = pj.value("token_type", std::string());
      a.expires_in = number_or_string(pj, "expires_in");
      if (a.access_token.empty() || a.expires_in <= 0) return fail("device-code sign-in: the token response has no access_token or expires_in");
      return a;
    }
    const std::string error = pj.value("error", std::string());
    if (error == "authorization_pending") continue;
    if (error == "slow_down") {
      interval += 5;
      continue;
    }
    if (error == "expired_token") return fail("the sign-in code expired before sign-in finished; run the command again");
    if (error == "authorization_declined" || error == "access_denied") return fail("sign-in was declined in the browser");
    return fail("device-code sign-in was refused: " + describe_error(pj, p->status));
  }
}

Result<EntraCredential::Acquired> EntraCredential::azure_cli(const std::string& resource, long long& expires_on) {
  auto t = azure_cli_token(config_.az_command, resource, config_.tenant_id, config_.az_timeout);
  if (!t) return fail(t.error());
  Acquired a;
  a.access_token = t->access_token;
  expires_on = t->expires_on;
  a.expires_in = std::max(1LL, t->expires_on - now());
  return a;
}

void EntraCredential::add_pop_fields(FormFields& f) const {
  if (!requesting_pop_ || !pop_key_) return;
  f.emplace_back("token_type", "pop");
  f.emplace_back("req_cnf", pop_req_cnf(pop_key_->thumbprint()));
}

std::shared_ptr<PopSigner> EntraCredential::pop_signer() noexcept {
  try {
    std::lock_guard lock(mutex_);
    if (!pop_key_) {
      auto made = PopKey::generate();
      if (!made) return nullptr;
      pop_key_ = *made;
    }
    return pop_key_;
  } catch (...) {
    return nullptr;
  }
}

Result<AccessToken> EntraCredential::get_token(const std::string& resource) noexcept {
  try {
    std::lock_guard lock(mutex_);
    return get(resource, false);
  } catch (const std::exception& e) {
    return fail(std::string("credential:entra: ") + e.what());
  }
}

Result<AccessToken> EntraCredential::get_pop_token(const std::string& resource) noexcept {
  try {
    if (config_.method == "azure-cli")
      return fail(
          "the Azure CLI cannot obtain proof-of-possession tokens; sign in with --auth-method device-code or an "
          "application credential, or connect without --pop");
    if (!pop_signer()) return fail("cannot generate an RSA key for proof-of-possession tokens");
    std::lock_guard lock(mutex_);
    requesting_pop_ = true;
    auto got = get(resource, true);
    requesting_pop_ = false;
    return got;
  } catch (const std::exception& e) {
    requesting_pop_ = false;
    return fail(std::string("credential:entra: ") + e.what());
  }
}

Result<AccessToken> EntraCredential::get(const std::string& resource, bool pop) {
  if (resource.empty()) return fail("no resource given to get a token for");
  const std::string key = TokenCache::key(config_.authority, config_.tenant_id, config_.client_id,
                                          config_.method == "azure-cli" ? "az:" + resource : resource);
  // A PoP token is good only with the key it was issued for: cached by that
  // key's thumbprint, in memory only (the key itself never leaves memory).
  const std::string pop_key = pop ? TokenCache::key(config_.authority, config_.tenant_id, config_.client_id,
                                                    "pop:" + pop_key_->thumbprint() + ":" + resource)
                                  : std::string();
  const std::string& own_key = pop ? pop_key : key;
  std::optional<CachedToken> cached;
  if (auto it = memory_.find(own_key); it != memory_.end()) cached = it->second;
  // The Azure CLI keeps its own cache; ours would only hold a copy on disk.
  if (!cached && !pop && disk_ && config_.method != "azure-cli") cached = disk_->load(key);

  if (cached && !cached->access_token.empty() && now() < cached->expires_on - refresh_margin(*cached)) {
    memory_[own_key] = *cached;
    return AccessToken{cached->access_token,
                       std::chrono::system_clock::time_point(std::chrono::seconds(cached->expires_on))};
  }
  // A refresh token is not bound to a key: a PoP sign-in may start from the
  // bearer entry's refresh token, and shares its own with it (below).
  std::optional<CachedToken> bearer_entry;
  if (pop) {
    if (auto it = memory_.find(key); it != memory_.end()) bearer_entry = it->second;
    if (!bearer_entry && disk_) bearer_entry = disk_->load(key);
    if ((!cached || cached->refresh_token.empty()) && bearer_entry && !bearer_entry->refresh_token.empty()) {
      CachedToken from_bearer;
      from_bearer.refresh_token = bearer_entry->refresh_token;
      cached = from_bearer;
    }
  }

  Result<Acquired> got = fail("not acquired");
  long long expires_on = 0;
  if (config_.method == "azure-cli") {
    got = azure_cli(resource, expires_on);
  } else {
    auto ep = endpoints();
    if (!ep) return fail(ep.error());
    if (cached && !cached->refresh_token.empty()) {
      got = refresh(resource, cached->refresh_token, *ep);
      if (!got) {
        // A refused refresh token (revoked, expired, consent changed) means
        // a full sign-in; a network failure does not: prompting a person
        // for a device code because the provider was briefly unreachable
        // would be wrong, so that error goes back to the caller.
        const bool refused = last_oauth_error_ == "invalid_grant" || last_oauth_error_ == "interaction_required";
        if (!refused && config_.method == "device-code") return fail(got.error());
        memory_.erase(own_key);
        if (!pop && disk_) disk_->erase(key);
        cached.reset();
      }
    }
    if (!got) {
      if (config_.method == "device-code") {
        got = device_code(resource, *ep);
      } else {
        got = client_credentials(resource, *ep);
      }
    }
  }
  if (!got) return fail(got.error());
  if (pop && !ascii_iequals(got->token_type, "pop"))
    return fail("the identity provider issued a '" + got->token_type +
                "' token where a proof-of-possession token was asked for: it does not support PoP tokens for " +
                resource + "; connect without --pop");

  CachedToken fresh;
  fresh.access_token = got->access_token;
  fresh.issued_on = now();
  fresh.expires_on = expires_on ? expires_on : fresh.issued_on + got->expires_in;
  // Entra keeps a refresh token valid when it sends no new one.
  fresh.refresh_token =
      !got->refresh_token.empty() ? got->refresh_token : (cached ? cached->refresh_token : std::string());
  memory_[own_key] = fresh;
  if (pop) {
    // The rotated refresh token replaces the bearer entry's, whose access
    // token stays; the PoP access token is not written anywhere.
    if (!got->refresh_token.empty() && config_.method != "azure-cli") {
      CachedToken shared = bearer_entry ? *bearer_entry : CachedToken{};
      shared.refresh_token = got->refresh_token;
      memory_[key] = shared;
      if (disk_) disk_->store(key, shared);
    }
  } else if (disk_ && config_.method != "azure-cli") {
    disk_->store(key, fresh);
  }
  return AccessToken{fresh.access_token, std::chrono::system_clock::time_point(std::chrono::seconds(fresh.expires_on))};
}

}  // namespace clusterconnect::entra
