#pragma once
// TLS connections that negotiate an application protocol by ALPN (HTTP/2 to
// the API server). Apart from tls.hpp so that its many includers are not
// rebuilt for the few that need this.

#include <string>
#include <vector>

#include "clusterconnect/tls.hpp"

namespace clusterconnect::tls {

// As async_connect in tls.hpp, offering the ALPN protocols `alpn` in order of
// preference ({"h2", "http/1.1"}); alpn_protocol() tells which one the server
// chose.
void async_connect(asio::io_context& io, std::string host, std::string port,
                   std::shared_ptr<asio::ssl::context> context, std::vector<std::string> alpn, ConnectHandler handler,
                   std::chrono::milliseconds timeout = std::chrono::seconds(10));

// The ALPN protocol negotiated on a TLS stream made by async_connect ("h2",
// "http/1.1"), or empty (none, or not such a stream).
std::string alpn_protocol(const Stream& stream);

}  // namespace clusterconnect::tls
