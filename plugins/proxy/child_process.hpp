#pragma once
// CI mode: run a command with KUBECONFIG pointing at a private kubeconfig and
// pass on its exit status.

#include <string>
#include <sys/types.h>
#include <vector>

#include "clusterconnect/result.hpp"

namespace clusterconnect::proxy {

// Variables that hold a credential of the proxy's sign-in; the command never
// sees them (it reaches the cluster through the kubeconfig).
inline constexpr const char* credential_variables[] = {
    "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_FEDERATED_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN"};

// The command's environment: `env` (NAME=VALUE entries) without KUBECONFIG,
// the credential variables above and any variable whose value is one of
// `secrets` (the tokens the proxy holds), plus KUBECONFIG=kubeconfig.
std::vector<std::string> child_environment(const char* const* env, const std::string& kubeconfig,
                                           const std::vector<std::string>& secrets);

// Starts argv[0] (searched on PATH) with child_environment(environ, ...).
Result<pid_t> spawn_with_kubeconfig(const std::vector<std::string>& argv, const std::string& kubeconfig,
                                    const std::vector<std::string>& secrets = {});

// Waits for the child; returns its exit status, or 128 + signal number.
int wait_for_exit(pid_t pid);

}  // namespace clusterconnect::proxy
