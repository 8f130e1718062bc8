#pragma once
// The Azure CLI hand-off: `az account get-access-token --resource R --output json`,
// run without a shell, bounded in time and output.

#include <chrono>
#include <string>

#include "clusterconnect/result.hpp"

namespace clusterconnect::entra {

struct CliToken {
  std::string access_token;
  long long expires_on = 0;  // unix seconds
};

// Full path of `command` when it is an executable on PATH (or a path itself).
std::string find_on_path(const std::string& command);

Result<CliToken> azure_cli_token(const std::string& az_command, const std::string& resource, const std::string& tenant,
                                 std::chrono::seconds timeout);

// Parses the CLI's JSON: `expires_on` (unix seconds, newer CLIs) or
// `expiresOn` (local time "YYYY-MM-DD HH:MM:SS[.ffffff]").
Result<CliToken> parse_azure_cli_output(const std::string& json_text);

}  // namespace clusterconnect::entra
