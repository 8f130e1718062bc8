#pragma once
// Encodings the OAuth and OpenID Connect protocols use: unpadded base64url (JWS, JWK) and
// application/x-www-form-urlencoded request bodies (token endpoint).

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace clusterconnect::auth {

// Strict RFC 7515 base64url: alphabet [A-Za-z0-9-_] only, no padding, no
// whitespace, and no set bits in the unused tail, so every byte string has
// exactly one accepted encoding.
std::optional<std::string> base64url_decode(std::string_view in);
std::string base64url_encode(std::string_view in);

using FormFields = std::vector<std::pair<std::string, std::string>>;
std::string form_encode(const FormFields& fields);

// A random version-4 UUID, lower case (client assertion `jti`).
std::string random_uuid();

}  // namespace clusterconnect::auth
