#include "listen_failure.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace clusterconnect::proxy {

std::string listen_failure_message(int err, const std::string& address, unsigned port, const std::string& detail) {
  const std::string where = address + ":" + std::to_string(port);
  switch (err) {
    case EADDRINUSE:
      return where + " is already in use (ClientProxyPortInUse): pick another port with --port, or --port 0 for any free "
                     "port; nothing was written";
    case EACCES:
    case EPERM:
      return "not allowed to listen on " + where + " (" + std::strerror(err) +
             "): ports below 1024 need privileges; pick a port from 1024 up with --port, or --port 0 for any free port; "
             "nothing was written";
    case EADDRNOTAVAIL:
      return "cannot listen on " + where + ": the address is not available on this machine (is the loopback interface "
             "up?); nothing was written";
    default:
      return "cannot listen on " + where + ": " + (err ? std::string(std::strerror(err)) : detail) +
             "; nothing was written";
  }
}

int probe_listen_error(const std::string& address, unsigned port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, address.c_str(), &sa.sin_addr) != 1) return EADDRNOTAVAIL;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // as the listener does
  int err = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 1) != 0) err = errno;
  ::close(fd);
  return err;
}

}  // namespace clusterconnect::proxy
