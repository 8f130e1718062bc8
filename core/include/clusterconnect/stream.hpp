#pragma once
// The byte stream every part of the data path speaks: a TLS connection from
// kubectl, a stream multiplexed over a tunnel, a TLS connection to the API
// server. Asynchronous, flow-controlled (a write completes only when the peer
// has room), bidirectional, with half-close.

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/unique_function.hpp"

namespace clusterconnect {

using IoHandler = UniqueFunction<void(error_code, std::size_t)>;
using DoneHandler = UniqueFunction<void(error_code)>;

class Stream {
 public:
  virtual ~Stream() = default;

  // The executor on which the stream's own work runs. Completion handlers are
  // invoked on it (never inline from the initiating call); callers that need
  // their own executor use StreamAdapter, which re-dispatches.
  virtual asio::any_io_executor get_executor() = 0;

  // Reads at least one byte. After the peer's half-close: asio::error::eof.
  // At most one read may be outstanding.
  virtual void async_read_some(asio::mutable_buffer buffer, IoHandler handler) = 0;

  // Writes at least one byte of the buffers. At most one write may be
  // outstanding. Completes once the bytes are accepted by the flow control.
  virtual void async_write_some(std::span<const asio::const_buffer> buffers, IoHandler handler) = 0;

  // Half-close: no more writes; the peer reads eof after the buffered bytes.
  virtual void async_shutdown_send(DoneHandler handler) = 0;

  // Abort both directions. Pending operations complete with
  // asio::error::operation_aborted (local) or connection_reset (peer).
  virtual void reset(std::string_view reason) noexcept = 0;

  // A short description of the far end for logs (never a credential).
  virtual std::string describe() const { return {}; }
  // Whether a new exchange may start on this open stream (an idle connection
  // pool asks before reusing it): false for a tunnel stream once its tunnel
  // is draining, which it would otherwise keep alive.
  virtual bool reusable() const noexcept { return true; }
};

using StreamPtr = std::shared_ptr<Stream>;

}  // namespace clusterconnect
