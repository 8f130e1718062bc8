#include "api_server.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "clusterconnect/tls_alpn.hpp"
#include "clusterconnect/tls_context.hpp"

namespace fs = std::filesystem;

namespace clusterconnect::agent {
namespace {
const char* const sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
constexpr std::size_t max_token_bytes = 64 * 1024;
}  // namespace

Result<std::string> ServiceAccountToken::get() {
  std::lock_guard lock(mutex_);
  auto now = std::chrono::steady_clock::now();
  if (!token_.empty() && now - checked_ < std::chrono::seconds(5)) return token_;
  checked_ = now;
  std::error_code ec;
  auto mtime = fs::last_write_time(file_, ec);
  if (ec) {
    if (!token_.empty()) return token_;
    return fail("cannot read the service-account token " + file_.string() + ": " + ec.message());
  }
  if (!token_.empty() && mtime == mtime_) return token_;
  std::ifstream in(file_, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > max_token_bytes) return fail("service-account token file " + file_.string() + " is too large");
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  if (text.empty()) {
    if (!token_.empty()) return token_;
    return fail("service-account token file " + file_.string() + " is empty");
  }
  token_ = std::move(text);
  mtime_ = mtime;
  return token_;
}

Result<std::shared_ptr<ApiServer>> ApiServer::create(const ApiServerOptions& o) {
  auto server = std::make_shared<ApiServer>();
  std::string url = o.url;
  if (url.empty()) {
    const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
    const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
    if (!host || !*host)
      return fail("no API server: pass --apiserver-url (out of cluster) or run in a pod (KUBERNETES_SERVICE_HOST is unset)");
    std::string h(host);
    if (h.find(':') != std::string::npos) h = "[" + h + "]";
    url = "https://" + h + ":" + (port && *port ? port : "443");
  }
  auto parsed = parse_url(url);
  if (!parsed) return fail("--apiserver-url: " + parsed.error());
  if (parsed->scheme != "https") return fail("--apiserver-url must be https: the API server is only reached over verified TLS");
  server->url_ = parsed.value();

  tls::ClientOptions tls_options;
  tls_options.ca_file = o.ca_file.empty() ? std::string(sa_dir) + "/ca.crt" : o.ca_file;
  auto ctx = tls::make_client_context(tls_options);
  if (!ctx) return fail("API server CA: " + ctx.error());
  server->tls_ = ctx.value();
  server->token_ = std::make_unique<ServiceAccountToken>(o.token_file.empty() ? fs::path(sa_dir) / "token" : fs::path(o.token_file));
  if (auto t = server->token_->get(); !t) return fail(t.error());
  return server;
}

http::UpstreamConnector ApiServer::connector(asio::io_context& io) {
  return [&io, host = url_.host, port = url_.port, ctx = tls_](http::ConnectHandler done) {
    tls::async_connect(io, host, port, ctx, {"http/1.1"}, std::move(done));
  };
}

http::H2Connector ApiServer::h2_connector(asio::io_context& io) {
  return [&io, host = url_.host, port = url_.port, ctx = tls_](http::H2ConnectHandler done) {
    tls::async_connect(io, host, port, ctx, {"h2", "http/1.1"},
                       [done = std::move(done)](error_code ec, StreamPtr s, std::string reason) mutable {
                         std::string alpn = s ? tls::alpn_protocol(*s) : std::string();
                         done(ec, std::move(s), std::move(alpn), std::move(reason));
                       });
  };
}

}  // namespace clusterconnect::agent
