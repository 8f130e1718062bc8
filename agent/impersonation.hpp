#pragma once
// How the agent turns an authenticated caller into Kubernetes impersonation
// headers on the request it forwards with its own credential.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "clusterconnect/authenticator.hpp"
#include "clusterconnect/http/forward.hpp"

namespace clusterconnect::agent {

// True when the caller sent any Impersonate-* header of its own.
bool has_caller_impersonation(const http::RequestHead& head);

// The bearer token of an `Authorization: Bearer ...` header, or empty.
std::string bearer_token(const http::RequestHead& head);

// Escapes an extra key the way client-go does: bytes that are not legal in a
// header name, and '%', become %XX; the API server unescapes it.
std::string escape_extra_key(std::string_view key);

// Identity claims come from a token; a value with CR, LF or other control
// characters would split a header, so such an identity is refused.
bool header_safe(std::string_view value);

// Why the agent will not impersonate this identity, or empty: a user or group
// in the reserved `system:` namespace, or with whitespace or control
// characters (a look-alike of another name). The authenticator refuses such
// tokens already; this holds for any authenticator.
std::string refused_identity(const Identity& identity);

// The Impersonate-User, -Uid, one -Group per group and -Extra-<key> per extra
// value of one identity: built once per verified caller and added to each of
// its requests.
struct ImpersonationHeaders {
  std::vector<http::Header> headers;
};

// Empty when a claim cannot be carried in a header.
std::optional<ImpersonationHeaders> impersonation_headers(const Identity& identity);

// Replaces the caller's credential and any Impersonate-* header it sent with
// the agent's service-account token and `block`.
void apply_impersonation(http::RequestHead& head, const ImpersonationHeaders& block, const std::string& agent_token);

// Both steps at once. Returns false (and leaves `head` unchanged) when a claim
// cannot be carried in a header.
bool apply_impersonation(http::RequestHead& head, const Identity& identity, const std::string& agent_token);

}  // namespace clusterconnect::agent
