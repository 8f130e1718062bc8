#pragma once
// Dials a tunnel: TCP (TCP_NODELAY), TLS with verification, WebSocket upgrade
// with the SAS token and the subprotocol. Light header: the Beast code lives
// in dialer.cpp only.

#include <chrono>
#include <memory>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/unique_function.hpp"
#include "protocol/session.hpp"

namespace boost::asio::ssl {
class context;
}

namespace clusterconnect::tunnel_ws {

struct DialTarget {
  std::string host;         // for DNS, SNI and certificate verification
  std::string port;
  std::string host_header;  // host[:port]
  std::string target;       // /$hc/PATH?sb-hc-action=...
};

// The session is created but not started, so the caller can set its handlers.
using DialHandler = UniqueFunction<void(error_code, std::shared_ptr<tunnel::Session>, std::string /*reason*/)>;

void async_dial(asio::io_context& io, DialTarget target, std::shared_ptr<asio::ssl::context> tls, std::string token,
                tunnel::SessionOptions options, std::shared_ptr<spdlog::logger> logger, DialHandler handler,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace clusterconnect::tunnel_ws
