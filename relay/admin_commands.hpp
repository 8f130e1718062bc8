#pragma once
// The relay's admin commands (`clusterconnect-relay cluster add|remove|show|list`,
// `key rotate`, `role assign|unassign`, `agent-cert set`, `import`), on
// either store: control plane, blocking, errors as exceptions turned into a
// one-line message and exit code 1.

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

namespace spdlog {
class logger;
}

namespace clusterconnect::relay {

class RegistryStore;
class RelayMetrics;
struct EtcdOptions;

struct StoreFlags {
  std::string url;  // etcd://… ; empty: the --config file
  std::string prefix = "/clusterconnect/";
  std::string ca_file, cert_file, key_file;
};

void add_store_options(CLI::App& app, StoreFlags& flags);
void add_admin_commands(CLI::App& app, const StoreFlags& flags, const std::string& config_file);
// Runs the subcommand the command line chose; the exit code.
int run_admin_command(CLI::App& app, const StoreFlags& flags, const std::string& config_file, spdlog::logger& logger);

// The etcd the flags name (--store etcd://…, its prefix and TLS files).
EtcdOptions etcd_options(const StoreFlags& flags);

// The store the flags name: etcd, else the configuration file, else an empty
// fixed registry. Throws with a message naming the store.
std::shared_ptr<RegistryStore> open_store(const StoreFlags& flags, const std::string& config_file,
                                          std::shared_ptr<spdlog::logger> logger, RelayMetrics* metrics);

// SHA-256 of the DER SubjectPublicKeyInfo (lowercase hex) of a PEM
// certificate or public key, or of DER SPKI bytes; throws when it is neither.
std::string agent_key_pin_from_pem(const std::string& pem);
// ARM's agentPublicKeyCertificate for the same PEM: base64 of the key's DER
// SubjectPublicKeyInfo.
std::string agent_public_key_certificate_from_pem(const std::string& pem);
std::string agent_key_pin_from_spki_der(const std::string& der);

}  // namespace clusterconnect::relay
