#pragma once
// The local API-server endpoint kubectl talks to: TLS with a per-user CA, a
// per-session bearer secret that only the written kubeconfig holds, and the
// user's real token put in its place before the request enters the tunnel.

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <string_view>

#include "clusterconnect/credential.hpp"
#include "clusterconnect/http/forward.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::proxy {

// The credential forwarded to the cluster; replaced by the refresher.
class ForwardedToken {
 public:
  void set(std::string token) {
    std::lock_guard lock(mutex_);
    token_ = std::move(token);
  }
  std::string get() const {
    std::lock_guard lock(mutex_);
    return token_;
  }
  // "Bearer <token>", built in one allocation (once per forwarded request).
  std::string bearer() const {
    static constexpr std::string_view scheme = "Bearer ";
    std::string out;
    std::lock_guard lock(mutex_);
    out.reserve(scheme.size() + token_.size());
    out.append(scheme).append(token_);
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::string token_;
};

// Proof-of-possession: every forwarded request carries a Signed HTTP Request
// made with `signer` for `target` (the cluster's resource ID) around the
// user's PoP token, instead of the token itself.
struct PopSigning {
  std::shared_ptr<PopSigner> signer;
  std::string target;
};

class LocalPolicy final : public http::ForwardPolicy {
 public:
  LocalPolicy(std::string session_secret, std::shared_ptr<ForwardedToken> token, std::shared_ptr<spdlog::logger> logger,
              PopSigning pop = {})
      : secret_(std::move(session_secret)),
        token_(std::move(token)),
        logger_(std::move(logger)),
        pop_(std::move(pop)) {}

  void on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) override;
  void on_complete(const http::ExchangeRecord& record) noexcept override;
  int in_flight() const;
  // Waits until no request is in flight or `limit` has passed; true when idle.
  bool wait_idle(std::chrono::steady_clock::duration limit) const;

 private:
  std::string secret_;
  std::shared_ptr<ForwardedToken> token_;
  std::shared_ptr<spdlog::logger> logger_;
  PopSigning pop_;
  mutable std::mutex mutex_;
  mutable std::condition_variable idle_;
  int in_flight_ = 0;
};

// 32 random bytes, hex: the per-session local credential.
std::string random_secret();

// A connected cluster's ARM resource ID in lower case, as proof-of-possession
// requests name it (`u`).
std::string cluster_resource_id(const std::string& subscription, const std::string& resource_group,
                                const std::string& name);

// Constant-time comparison, so the secret cannot be found byte by byte.
bool secret_equals(std::string_view a, std::string_view b);

}  // namespace clusterconnect::proxy
