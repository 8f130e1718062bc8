#pragma once
// Opens streams through the relay tunnel for the local endpoint. When the
// relay refuses the tunnel's connect token (HTTP 401, e.g. "token expired"
// after a GOAWAY), the refresher fetches a new token from the management API
// and the stream is opened once more, instead of failing every request.

#include <memory>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/transport.hpp"
#include "token_refresher.hpp"

namespace clusterconnect::proxy {

// The relay refused the tunnel's token: HTTP 401 on the upgrade.
bool refused_for_token(error_code ec, const std::string& reason);

// Opens a stream through `client`; on a refused token (and when `retried` is
// false) asks `refresher` for a new token and opens again on `io`.
void open_stream(asio::io_context* io, std::shared_ptr<TunnelClient> client, std::weak_ptr<Refresher> refresher,
                 http::ConnectHandler done, bool retried = false);

}  // namespace clusterconnect::proxy
