#pragma once
// Capability kind "transport": streams to a cluster through a relay.
//   dial   (client side): one persistent tunnel, one stream per connection.
//   listen (agent side):  N outbound connections to the relay; streams come
//                         over them (ws) or over rendezvous they announce (tls).

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "clusterconnect/result.hpp"
#include "clusterconnect/stream.hpp"

namespace clusterconnect {

struct RelayEndpoint {
  // wss://HOST[:PORT]/$hc/PATH  (no query; the action is added by the transport)
  std::string url;
  std::string ca_file;              // PEM bundle; empty = system store
  bool insecure_skip_verify = false;  // dev only; logged as a warning
  // End-to-end transports (tls): the pins of the keys the cluster's agents
  // prove (SHA-256 of the public key, hex), from listClusterUserCredential.
  // An agent whose key is not among them gets nothing; none pinned, no
  // stream is opened.
  std::vector<std::string> agent_key_pins;
};

// Returns the current SAS token ("SharedAccessSignature sr=...") for the
// endpoint; called before every handshake and before expiry, so rotation
// needs no restart. Runs on an io thread: must not block.
//
// The host's function is wrapped where the TokenSource is made, in the
// host's code: an exception it throws is caught there and becomes a failure,
// so no exception ever crosses into the transport module, which only sees a
// noexcept call that returns a Result.
class TokenSource {
 public:
  TokenSource() = default;
  TokenSource(std::nullptr_t) {}
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, TokenSource> &&
                                              std::is_invocable_r_v<std::string, F&>>>
  TokenSource(F f)
      : fn_([f = std::move(f)]() mutable noexcept -> Result<std::string> {
          try {
            return Result<std::string>(std::string(f()));
          } catch (const std::exception& e) {
            return fail(std::string("the token source failed: ") + e.what());
          } catch (...) {
            return fail("the token source failed with an unknown exception");
          }
        }) {}

  explicit operator bool() const noexcept { return static_cast<bool>(fn_); }
  // The current token, or why there is none. Never throws.
  Result<std::string> operator()() const noexcept {
    if (!fn_) return fail("no token source");
    return fn_();
  }

 private:
  std::function<Result<std::string>()> fn_;
};

struct OpenRequest {
  // Small metadata carried in the tunnel's OPEN frame (never a credential).
  std::map<std::string, std::string> metadata;
};

using OpenHandler = UniqueFunction<void(error_code, StreamPtr, std::string /*reason*/)>;

class TunnelClient {
 public:
  virtual ~TunnelClient() = default;
  // Opens a stream to the cluster; connects (or reconnects) the tunnel first if
  // needed. On failure `reason` says why (e.g. "no agent connected for cluster demo").
  virtual void async_open(OpenRequest request, OpenHandler handler) = 0;
  // Resolves when the tunnel is established (or failed), for start-up reporting.
  virtual void async_connect(DoneHandler handler) = 0;
  virtual void close() noexcept = 0;
};

struct ListenOptions {
  RelayEndpoint endpoint;
  TokenSource token;
  unsigned tunnels = 2;
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{15000};
  // End-to-end transports (tls): the agent's certificate and key (PEM), the
  // key the relay's registry pins for the cluster.
  std::string identity_cert_file;
  std::string identity_key_file;
  // Extra headers for each control channel's listen handshake (the agent's
  // report of itself and its cluster); called before every handshake on an
  // io thread: must not block or throw. Hybrid Connections peers ignore
  // headers they do not know.
  std::function<std::vector<std::pair<std::string, std::string>>()> handshake_headers;
};

struct ListenerStatus {
  unsigned tunnels_up = 0;
  unsigned tunnels_wanted = 0;
};

class TunnelListener {
 public:
  virtual ~TunnelListener() = default;
  virtual ListenerStatus status() const noexcept = 0;
  virtual void close() noexcept = 0;
};

using AcceptHandler = std::function<void(StreamPtr stream, const std::map<std::string, std::string>& metadata)>;

class TransportCapability {
 public:
  virtual ~TransportCapability() = default;
  virtual std::shared_ptr<TunnelClient> dial(RelayEndpoint endpoint, TokenSource token) noexcept = 0;
  virtual std::shared_ptr<TunnelListener> listen(ListenOptions options, AcceptHandler on_stream) noexcept = 0;
};

}  // namespace clusterconnect
