#pragma once
// Signing in for the relay's management API, as `connectedk8s proxy` does:
// the credential module's chain, for the audience the relay publishes (never
// Azure Resource Manager's).

#include <string>

#include "clusterconnect/host.hpp"
#include "clusterconnect/result.hpp"
#include "connected_clusters.hpp"

namespace CLI {
class App;
}

namespace clusterconnect::onboarding {

struct SignInOptions {
  std::string endpoint;  // https://HOST[:PORT]
  std::string ca_file;
  std::string authority_ca_file;
  std::string auth_method = "auto";
  std::string management_resource;  // empty: the relay's
  bool allow_http_loopback_authority = false;
};

// --endpoint, --ca-file, --authority-ca-file, --auth-method,
// --management-resource, --allow-http-loopback-authority.
void add_sign_in_options(CLI::App& app, SignInOptions& options);

Result<ManagementTarget> sign_in(HostServices& host, SignInOptions options);

}  // namespace clusterconnect::onboarding
