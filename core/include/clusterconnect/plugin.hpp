#pragma once
// The module contract. Each module exports exactly one Boost.Dll alias,
// `clusterconnect_plugin_v1`, naming a function that returns its descriptor,
// and carries its ABI string in the ELF section `.clusterconnect_abi`, which
// the host reads from the file before loading it.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>
#include <boost/config.hpp>
#include <boost/version.hpp>

#include "clusterconnect/host.hpp"

#define CLUSTERCONNECT_STR2(x) #x
#define CLUSTERCONNECT_STR(x) CLUSTERCONNECT_STR2(x)

// Interface revision: bump on any change to a header in this directory.
#define CLUSTERCONNECT_INTERFACE_REVISION 2

// Modules and hosts must agree on the interface headers, the compiler, the
// standard library and the Boost and nlohmann versions: Asio, Beast and json
// types cross the boundary.
#define CLUSTERCONNECT_ABI_STRING                                                               \
  "clusterconnect-abi/" CLUSTERCONNECT_STR(CLUSTERCONNECT_INTERFACE_REVISION) " gcc-" __VERSION__ \
  " cxx-" CLUSTERCONNECT_STR(__cplusplus) " glibcxx-" CLUSTERCONNECT_STR(__GLIBCXX__)             \
  " boost-" BOOST_LIB_VERSION " json-" CLUSTERCONNECT_STR(NLOHMANN_JSON_VERSION_MAJOR) "."        \
  CLUSTERCONNECT_STR(NLOHMANN_JSON_VERSION_MINOR)

namespace clusterconnect {

class CommandCapability;
class TransportCapability;
class CredentialCapability;
class AuthenticatorCapability;
class KubeconfigCapability;

// A module instance, created once per process by the host after the ABI check.
// Each accessor returns the capability with that name, or null.
class Module {
 public:
  virtual ~Module() = default;
  virtual std::shared_ptr<CommandCapability> command(std::string_view) noexcept { return nullptr; }
  virtual std::shared_ptr<TransportCapability> transport(std::string_view) noexcept { return nullptr; }
  virtual std::shared_ptr<CredentialCapability> credential(std::string_view) noexcept { return nullptr; }
  virtual std::shared_ptr<AuthenticatorCapability> authenticator(std::string_view) noexcept { return nullptr; }
  virtual std::shared_ptr<KubeconfigCapability> kubeconfig(std::string_view) noexcept { return nullptr; }
};

struct PluginDescriptor {
  const char* abi;          // must equal the host's CLUSTERCONNECT_ABI_STRING
  const char* name;         // e.g. "tunnel-ws"
  const char* version;      // module version
  const char* description;  // one line
  const char* const* capabilities;  // "kind:name", e.g. "transport:ws"
  std::size_t capability_count;
  std::unique_ptr<Module> (*create)(HostServices& host) noexcept;
};

using PluginEntry = const PluginDescriptor& (*)() noexcept;

}  // namespace clusterconnect

// CLUSTERCONNECT_PLUGIN(fn) exports `fn` (a `const PluginDescriptor& fn() noexcept`)
// under the alias clusterconnect_plugin_v1 and embeds the ABI string in the
// `.clusterconnect_abi` section.
#include <boost/dll/alias.hpp>
#define CLUSTERCONNECT_PLUGIN(fn)                                                          \
  extern "C" BOOST_SYMBOL_EXPORT __attribute__((used, section(".clusterconnect_abi")))     \
  const char clusterconnect_abi_v1[] = CLUSTERCONNECT_ABI_STRING;                          \
  BOOST_DLL_ALIAS(fn, clusterconnect_plugin_v1)
