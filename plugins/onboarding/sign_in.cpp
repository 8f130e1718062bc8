#include "sign_in.hpp"

#include <CLI/CLI.hpp>

#include "clusterconnect/arm_audience.hpp"
#include "clusterconnect/credential.hpp"
#include "clusterconnect/registry.hpp"

namespace clusterconnect::onboarding {

void add_sign_in_options(CLI::App& app, SignInOptions& o) {
  app.add_option("--endpoint", o.endpoint, "Relay management endpoint, https://HOST[:PORT]")
      ->envname("CONNECTEDK8S_ENDPOINT");
  app.add_option("--ca-file", o.ca_file,
                 "CA bundle that verifies the relay (default: $SSL_CERT_FILE, else the system store)")
      ->envname("CONNECTEDK8S_CA_FILE");
  app.add_option("--authority-ca-file", o.authority_ca_file, "CA bundle that verifies the identity provider")
      ->envname("CONNECTEDK8S_AUTHORITY_CA_FILE");
  app.add_option("--auth-method", o.auth_method,
                 "Sign-in: auto, client-secret, client-certificate, workload-identity, azure-cli, device-code")
      ->envname("CONNECTEDK8S_AUTH_METHOD")
      ->capture_default_str();
  app.add_option("--management-resource", o.management_resource,
                 "Token audience of the relay's management API (default: the one it publishes)");
  app.add_flag("--allow-http-loopback-authority", o.allow_http_loopback_authority,
               "Allow an http:// identity provider on loopback (tests and sandboxes)")
      ->envname("CONNECTEDK8S_ALLOW_HTTP_LOOPBACK_AUTHORITY");
}

Result<ManagementTarget> sign_in(HostServices& host, SignInOptions o) {
  if (o.endpoint.empty()) return fail("no management endpoint: pass --endpoint or set CONNECTEDK8S_ENDPOINT");
  auto credential_cap = host.capabilities().credential("entra");
  if (!credential_cap) return fail("no credential module (credential:entra) is loaded; see 'connectedk8s plugin list'");
  nlohmann::json cred_options{{"method", o.auth_method},
                              {"allow_http_loopback", o.allow_http_loopback_authority},
                              {"ca_file", o.authority_ca_file},
                              {"device_code_prompt", "text"}};
  auto credential = credential_cap->create(cred_options);
  if (!credential) return fail(credential.error());
  if (o.management_resource.empty()) {
    auto audience = management_audience(o.endpoint, o.ca_file);
    if (!audience) return fail(audience.error());
    o.management_resource = audience.value();
  } else if (is_arm_audience(o.management_resource)) {
    return fail("--management-resource " + o.management_resource +
                " is Azure Resource Manager's audience; use the relay's application ID (leave the option out to ask "
                "the relay)");
  }
  auto token = credential.value()->get_token(o.management_resource);
  if (!token) return fail(token.error());
  return ManagementTarget{o.endpoint, o.ca_file, token->token};
}

}  // namespace clusterconnect::onboarding
