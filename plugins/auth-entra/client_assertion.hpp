#pragma once
// Client assertions for the certificate credential: a JWT signed with the
// certificate's key, as Entra ID's token endpoint expects it (RS256, `x5t`
// header, `aud` = the token endpoint as advertised, a fresh `jti`).

#include <openssl/evp.h>

#include <chrono>
#include <memory>
#include <string>

#include "clusterconnect/result.hpp"

namespace clusterconnect::entra {

struct ClientCertificate {
  std::shared_ptr<EVP_PKEY> private_key;
  std::string x5t;  // base64url SHA-1 thumbprint of the DER certificate
};

// A PEM file holding the certificate and its (unencrypted) private key, in
// either order: the AZURE_CLIENT_CERTIFICATE_PATH format.
Result<ClientCertificate> load_client_certificate(const std::string& path);

Result<std::string> make_client_assertion(const ClientCertificate& cert, const std::string& client_id, const std::string& token_endpoint,
                                          std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

// RSASSA-PKCS1-v1_5 SHA-256 signature.
Result<std::string> sign_rs256(EVP_PKEY* key, const std::string& input);

}  // namespace clusterconnect::entra
