#pragma once
// How the agent reaches the API server: in-cluster (service host/port from the
// environment, token and CA from the pod's service-account mount) or an
// explicit URL, CA file and token file. The token file is re-read when it
// changes, because kubelet rotates projected tokens.

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "clusterconnect/asio_fwd.hpp"
#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/http/h2_upstream.hpp"
#include "clusterconnect/result.hpp"
#include "clusterconnect/url.hpp"

namespace boost::asio::ssl {
class context;
}

namespace clusterconnect::agent {

struct ApiServerOptions {
  std::string url;        // empty: in-cluster
  std::string ca_file;    // empty: in-cluster CA
  std::string token_file; // empty: in-cluster token
};

class ServiceAccountToken {
 public:
  explicit ServiceAccountToken(std::filesystem::path file) : file_(std::move(file)) {}
  // The current token; re-reads the file at most every few seconds, and only
  // when its modification time changed.
  Result<std::string> get();

 private:
  std::filesystem::path file_;
  std::mutex mutex_;
  std::string token_;
  std::filesystem::file_time_type mtime_{};
  std::chrono::steady_clock::time_point checked_{};
};

class ApiServer {
 public:
  static Result<std::shared_ptr<ApiServer>> create(const ApiServerOptions& options);

  const Url& url() const { return url_; }
  ServiceAccountToken& token() { return *token_; }
  // Opens a verified TLS connection to the API server (ALPN http/1.1).
  http::UpstreamConnector connector(asio::io_context& io);
  // The same, offering h2 first: for HTTP/2 (h2_upstream.hpp).
  http::H2Connector h2_connector(asio::io_context& io);

 private:
  Url url_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::unique_ptr<ServiceAccountToken> token_;
};

}  // namespace clusterconnect::agent
