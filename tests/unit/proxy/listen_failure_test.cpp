// Listen failures of the local endpoint: only a port in use is ClientProxyPortInUse.

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "listen_failure.hpp"

using namespace clusterconnect::proxy;

TEST_CASE("a port in use is ClientProxyPortInUse", "[proxy][listen]") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::listen(fd, 1) == 0);
  socklen_t len = sizeof sa;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  const unsigned port = ntohs(sa.sin_port);

  const int err = probe_listen_error("127.0.0.1", port);
  CHECK(err == EADDRINUSE);
  auto msg = listen_failure_message(err, "127.0.0.1", port, "127.0.0.1:" + std::to_string(port) + " is already in use");
  CHECK(msg.find("ClientProxyPortInUse") != std::string::npos);
  CHECK(msg.find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
  CHECK(msg.find("--port") != std::string::npos);
  ::close(fd);
  CHECK(probe_listen_error("127.0.0.1", port) == 0);
}

TEST_CASE("other listen failures say what they are, without ClientProxyPortInUse", "[proxy][listen]") {
  auto denied = listen_failure_message(EACCES, "127.0.0.1", 80, "cannot listen on 127.0.0.1:80: Permission denied");
  CHECK(denied.find("ClientProxyPortInUse") == std::string::npos);
  CHECK(denied.find("not allowed to listen on 127.0.0.1:80") != std::string::npos);
  CHECK(denied.find("1024") != std::string::npos);

  auto no_addr = listen_failure_message(EADDRNOTAVAIL, "127.0.0.1", 5000, "cannot listen");
  CHECK(no_addr.find("ClientProxyPortInUse") == std::string::npos);
  CHECK(no_addr.find("not available") != std::string::npos);

  auto other = listen_failure_message(EMFILE, "127.0.0.1", 5000, "cannot listen");
  CHECK(other.find("ClientProxyPortInUse") == std::string::npos);
  CHECK(other.find("cannot listen on 127.0.0.1:5000") != std::string::npos);

  // An address that is not this machine's fails to bind with its own error.
  CHECK(probe_listen_error("192.0.2.1", 5000) == EADDRNOTAVAIL);
  CHECK(probe_listen_error("not-an-address", 5000) == EADDRNOTAVAIL);
}
