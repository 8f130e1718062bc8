#include "local_endpoint.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <cctype>

namespace clusterconnect::proxy {

std::string random_secret() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) throw std::runtime_error("the system random generator failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

std::string cluster_resource_id(const std::string& subscription, const std::string& resource_group,
                                const std::string& name) {
  std::string id = "/subscriptions/" + subscription + "/resourceGroups/" + resource_group +
                   "/providers/Microsoft.Kubernetes/connectedClusters/" + name;
  for (auto& c : id) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return id;
}

bool secret_equals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void LocalPolicy::on_request(http::RequestHead& head, UniqueFunction<void(http::Decision)> done) {
  {
    std::lock_guard lock(mutex_);
    ++in_flight_;  // balanced by on_complete, which the engine calls once per request
  }
  const std::string* auth = head.find("authorization");
  std::string_view presented;
  if (auth && auth->size() > 7 && strncasecmp(auth->c_str(), "bearer ", 7) == 0) presented = std::string_view(*auth).substr(7);
  http::Decision d;
  if (!secret_equals(presented, secret_)) {
    // Any other local process gets 401 and never reaches the relay.
    logger_->info("local request without the session credential refused: {} {}", head.method,
                  head.target.substr(0, head.target.find('?')));
    d.forward = false;
    d.reply = http::status_reply(401, "Unauthorized",
                                 "this endpoint accepts only the credential in the kubeconfig written by connectedk8s proxy");
    return done(std::move(d));
  }
  if (pop_.signer) {
    // One RSA signature per request, with the key object the credential holds.
    auto signed_request = pop_.signer->sign_request(token_->get(), pop_.target);
    if (!signed_request) {
      logger_->error("cannot sign the request for the cluster: {}", signed_request.error());
      d.forward = false;
      d.reply = http::status_reply(500, "InternalError",
                                   "connectedk8s proxy could not sign the request: " + signed_request.error());
      return done(std::move(d));
    }
    head.set("Authorization", "Bearer " + signed_request.value());
  } else {
    head.set("Authorization", token_->bearer());
  }
  d.forward = true;
  done(std::move(d));
}

int LocalPolicy::in_flight() const {
  std::lock_guard lock(mutex_);
  return in_flight_;
}

bool LocalPolicy::wait_idle(std::chrono::steady_clock::duration limit) const {
  std::unique_lock lock(mutex_);
  return idle_.wait_for(lock, limit, [this] { return in_flight_ == 0; });
}

void LocalPolicy::on_complete(const http::ExchangeRecord& r) noexcept {
  {
    std::lock_guard lock(mutex_);
    if (--in_flight_ == 0) idle_.notify_all();
  }
  try {
    // A view of the target: no copy per request when debug logging is off.
    logger_->debug("{} {} -> {} ({} bytes, {} us)", r.method, std::string_view(r.target).substr(0, r.target.find('?')),
                   r.status, r.bytes_out, r.duration.count());
  } catch (...) {
  }
}

}  // namespace clusterconnect::proxy
