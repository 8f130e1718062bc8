#pragma once
// Why the local endpoint could not listen, in words a user can act on. Only a
// port that is in use (EADDRINUSE) is reported as ClientProxyPortInUse.

#include <string>

namespace clusterconnect::proxy {

// The message for a listen failure with `err` (an errno value) on
// address:port; `detail` is the listener's own description.
std::string listen_failure_message(int err, const std::string& address, unsigned port, const std::string& detail);

// Binds a throw-away socket to address:port the way the listener does and
// returns the errno it fails with (0 when it binds now), to tell why the
// listener failed.
int probe_listen_error(const std::string& address, unsigned port);

}  // namespace clusterconnect::proxy
