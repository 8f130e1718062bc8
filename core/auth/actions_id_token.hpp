#pragma once
// The GitHub Actions runner's OIDC token: a job with `permissions: id-token:
// write` gets ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN;
// a GET of the URL with `&audience=<aud>` and the request token as a bearer
// answers `{"value":"<JWT>"}`, a token of issuer
// https://token.actions.githubusercontent.com for that audience, valid for
// minutes. Both identity backends use it: Entra ID as a federated client
// assertion, a generic OpenID provider's clusters as the bearer token itself.
// Control plane: blocks on HTTP.

#include <optional>
#include <string>

#include "clusterconnect/result.hpp"
#include "http_client.hpp"

namespace clusterconnect::auth {

// The audience Entra ID expects in a federated token (public cloud).
inline constexpr const char* entra_token_exchange_audience = "api://AzureADTokenExchange";

struct ActionsIdTokenRequest {
  std::string url;    // ACTIONS_ID_TOKEN_REQUEST_URL
  std::string token;  // ACTIONS_ID_TOKEN_REQUEST_TOKEN: a secret, never logged
};

// Both variables, when both are set and not empty.
std::optional<ActionsIdTokenRequest> actions_id_token_request_from_env();

// `url` with `audience=<percent-encoded audience>` appended after `?` or `&`.
std::string actions_id_token_url(const std::string& url, const std::string& audience);

// Checks the request URL before the request token is sent anywhere: https,
// or http to a loopback host when the policy allows it (a test stand-in);
// never plain http to another host, which would hand the bearer token to
// anyone on the path.
Result<void> check_actions_id_token_url(const std::string& url, const HttpPolicy& policy);

// Asks the runner for a fresh token for `audience`. Errors say whether the
// runner refused (wrong or expired request token), answered something that
// is not `{"value": JWT}`, or could not be reached; neither token appears in
// them.
Result<std::string> fetch_actions_id_token(const HttpClient& http, const ActionsIdTokenRequest& request,
                                           const std::string& audience);

}  // namespace clusterconnect::auth
