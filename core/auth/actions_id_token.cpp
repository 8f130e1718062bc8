#include "actions_id_token.hpp"

#include <cstdlib>

#include <nlohmann/json.hpp>

#include "encoding.hpp"
#include "jws.hpp"

namespace clusterconnect::auth {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// The URL without its query, for messages: the runner's URL names the job,
// not a secret, but nothing after `?` needs to be shown.
std::string without_query(const std::string& url) { return url.substr(0, url.find('?')); }

}  // namespace

std::optional<ActionsIdTokenRequest> actions_id_token_request_from_env() {
  ActionsIdTokenRequest r{env("ACTIONS_ID_TOKEN_REQUEST_URL"), env("ACTIONS_ID_TOKEN_REQUEST_TOKEN")};
  if (r.url.empty() || r.token.empty()) return std::nullopt;
  return r;
}

std::string actions_id_token_url(const std::string& url, const std::string& audience) {
  // form_encode percent-encodes ':' and '/' as the runner expects
  // (audience=api%3A%2F%2FAzureADTokenExchange).
  const std::string param = form_encode({{"audience", audience}});
  std::string base = url;
  const auto fragment = base.find('#');
  if (fragment != std::string::npos) base.resize(fragment);
  const auto q = base.find('?');
  if (q == std::string::npos) return base + "?" + param;
  if (q + 1 == base.size() || base.back() == '&') return base + param;
  return base + "&" + param;
}

Result<void> check_actions_id_token_url(const std::string& url, const HttpPolicy& policy) {
  if (auto ok = check_url_allowed(url, policy); !ok)
    return fail("ACTIONS_ID_TOKEN_REQUEST_URL is not usable: " + ok.error() +
                "; the request token is sent only over https");
  return {};
}

Result<std::string> fetch_actions_id_token(const HttpClient& http, const ActionsIdTokenRequest& request,
                                           const std::string& audience) {
  if (auto ok = check_actions_id_token_url(request.url, http.policy()); !ok) return fail(ok.error());
  const std::string where = "the GitHub Actions runner's token endpoint (" + without_query(request.url) + ")";
  auto r = http.get(actions_id_token_url(request.url, audience), {"Authorization: Bearer " + request.token});
  if (!r) return fail("cannot get an ID token from " + where + ": " + r.error());
  if (r->status == 401 || r->status == 403)
    return fail(where + " refused the ID token request (HTTP " + std::to_string(r->status) +
                "): ACTIONS_ID_TOKEN_REQUEST_TOKEN is wrong or has expired; it is valid only inside the job that "
                "received it, and only with 'permissions: id-token: write'");
  if (r->status != 200)
    return fail(where + " answered HTTP " + std::to_string(r->status) + " to the ID token request");
  auto body = nlohmann::json::parse(r->body, nullptr, false);
  if (body.is_discarded() || !body.is_object())
    return fail(where + " answered something that is not a JSON object");
  if (!body.contains("value") || !body["value"].is_string() || body["value"].get<std::string>().empty())
    return fail(where + " answered JSON without a 'value' (the ID token)");
  std::string token = body["value"].get<std::string>();
  if (token.size() > max_token_size) return fail(where + " answered an ID token larger than " +
                                                 std::to_string(max_token_size) + " bytes");
  if (!parse_jws(token).ok()) return fail(where + " answered a 'value' that is not a JWT");
  return token;
}

}  // namespace clusterconnect::auth
