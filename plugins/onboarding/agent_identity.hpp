#pragma once
// The agent's identity: an EC P-256 key pair and a self-signed certificate,
// made on the onboarding machine. Proxies pin its public key; the relay
// learns the pin from the cluster's PUT (agentPublicKeyCertificate).

#include <string>

#include "clusterconnect/result.hpp"

namespace clusterconnect::onboarding {

struct AgentIdentity {
  std::string cert_pem;
  std::string key_pem;          // PKCS#8
  std::string spki_der_base64;  // ARM's properties.agentPublicKeyCertificate
};

// A new key pair and a certificate for `common_name`, valid `days`.
Result<AgentIdentity> create_agent_identity(const std::string& common_name, int days);

// The identity an existing certificate and key hold (reused by a second
// `connect`): refuses a key that does not match the certificate.
Result<AgentIdentity> load_agent_identity(const std::string& cert_pem, const std::string& key_pem);

}  // namespace clusterconnect::onboarding
