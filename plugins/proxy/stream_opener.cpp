#include "stream_opener.hpp"

#include <boost/asio/error.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

namespace clusterconnect::proxy {

bool refused_for_token(error_code ec, const std::string& reason) {
  return ec == asio::error::access_denied || reason.find("HTTP 401") != std::string::npos;
}

void open_stream(asio::io_context* io, std::shared_ptr<TunnelClient> client, std::weak_ptr<Refresher> refresher,
                 http::ConnectHandler done, bool retried) {
  client->async_open(OpenRequest{}, [io, client, refresher, done = std::move(done), retried](
                                        error_code ec, StreamPtr s, std::string reason) mutable {
    if (ec && !retried && refused_for_token(ec, reason)) {
      if (auto r = refresher.lock()) {
        auto pending = std::make_shared<http::ConnectHandler>(std::move(done));
        r->renew_now([io, client, refresher, pending] {
          asio::post(*io, [io, client, refresher, pending] { open_stream(io, client, refresher, std::move(*pending), true); });
        });
        return;
      }
    }
    done(ec, std::move(s), std::move(reason));
  });
}

}  // namespace clusterconnect::proxy
