#include "cluster_report.hpp"

#include <array>
#include <optional>

#include <boost/asio/buffer.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include "api_server.hpp"
#include "clusterconnect/ascii.hpp"

namespace clusterconnect::agent {
namespace {

using tunnel::rendezvous::AgentReport;

constexpr std::size_t max_version_body = 64 * 1024;
// A node object is a few KiB: this covers thousands of nodes; a larger list
// is not counted rather than held.
constexpr std::size_t max_nodes_body = 16 * 1024 * 1024;

// Kubernetes CPU quantities: "4", "3500m", "0.5".
double cpu_cores(const std::string& q) {
  try {
    if (!q.empty() && q.back() == 'm') return std::stod(q.substr(0, q.size() - 1)) / 1000.0;
    return std::stod(q);
  } catch (...) {
    return 0;
  }
}

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

// Arc's distribution names, from what the version and the nodes show.
std::string guess_distribution(const std::string& git_version, const nlohmann::json& nodes) {
  if (contains(git_version, "+k3s")) return "k3s";
  if (contains(git_version, "+rke2")) return "rke2";
  if (contains(git_version, "-eks-")) return "eks";
  if (contains(git_version, "-gke.")) return "gke";
  for (const auto& n : nodes) {
    const auto labels = n.value("/metadata/labels"_json_pointer, nlohmann::json::object());
    const auto provider = n.value("/spec/providerID"_json_pointer, std::string());
    if (labels.contains("kubernetes.azure.com/cluster")) return "aks";
    if (labels.contains("node.openshift.io/os_id")) return "openshift";
    if (labels.contains("microk8s.io/cluster")) return "microk8s";
    if (provider.rfind("kind://", 0) == 0) return "kind";
    if (labels.contains("minikube.k8s.io/name")) return "minikube";
  }
  return "generic";
}

std::string guess_infrastructure(const nlohmann::json& nodes) {
  for (const auto& n : nodes) {
    const auto provider = n.value("/spec/providerID"_json_pointer, std::string());
    if (provider.rfind("azure://", 0) == 0) return "azure";
    if (provider.rfind("aws://", 0) == 0) return "aws";
    if (provider.rfind("gce://", 0) == 0) return "gcp";
    if (provider.rfind("vsphere://", 0) == 0) return "vsphere";
  }
  return "generic";
}

// One GET over a fresh connection to the API server, as HTTP/1.0 so the
// body ends with the connection (no chunking to undo).
class Get : public std::enable_shared_from_this<Get> {
 public:
  using Done = UniqueFunction<void(std::string body)>;  // empty on any failure
  Get(std::string request, std::size_t limit, Done done)
      : request_(std::move(request)), limit_(limit), done_(std::move(done)) {}

  void start(StreamPtr stream) {
    stream_ = std::move(stream);
    // A silent API server ends the request, not the refreshes after it.
    timer_.emplace(stream_->get_executor());
    timer_->expires_after(std::chrono::seconds(10));
    timer_->async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) self->finish({});
    });
    write();
  }
  void finish(std::string body) {
    if (timer_) timer_->cancel();
    if (stream_) stream_->reset("request done");
    if (done_) std::exchange(done_, nullptr)(std::move(body));
  }

 private:
  void write() {
    buffers_[0] = asio::buffer(request_.data() + written_, request_.size() - written_);
    stream_->async_write_some(std::span<const asio::const_buffer>(buffers_, 1),
                              [self = shared_from_this()](error_code ec, std::size_t n) {
                                if (ec) return self->finish({});
                                self->written_ += n;
                                if (self->written_ < self->request_.size()) return self->write();
                                self->read();
                              });
  }
  void read() {
    stream_->async_read_some(asio::buffer(chunk_), [self = shared_from_this()](error_code ec, std::size_t n) {
      self->response_.append(self->chunk_.data(), n);
      if (self->response_.size() > self->limit_) return self->finish({});
      if (!ec) return self->read();
      self->done_reading();
    });
  }
  void done_reading() {
    auto end = response_.find("\r\n\r\n");
    // "HTTP/1.x 200 ..." and nothing but a plain body.
    if (end == std::string::npos || response_.compare(0, 5, "HTTP/") != 0 || response_.size() < 12 ||
        response_.compare(9, 3, "200") != 0 ||
        contains(ascii_lowered(response_.substr(0, end)), "transfer-encoding: chunked"))
      return finish({});
    finish(response_.substr(end + 4));
  }

  std::string request_;
  std::size_t limit_;
  Done done_;
  StreamPtr stream_;
  std::optional<asio::steady_timer> timer_;
  std::size_t written_ = 0;
  asio::const_buffer buffers_[1];
  std::array<char, 16 * 1024> chunk_{};
  std::string response_;
};

void async_get(const http::UpstreamConnector& connector, ApiServer& api, const std::string& target, std::size_t limit,
               Get::Done done) {
  auto token = api.token().get();
  if (!token) return done({});
  auto get = std::make_shared<Get>(
      "GET " + target + " HTTP/1.0\r\nHost: " + api.url().authority() +
          "\r\nAccept: application/json\r\nUser-Agent: clusterconnect-agent\r\nAuthorization: Bearer " + token.value() +
          "\r\n\r\n",
      limit, std::move(done));
  connector([get](error_code ec, StreamPtr stream, std::string) {
    if (ec || !stream) return get->finish({});
    get->start(std::move(stream));
  });
}

}  // namespace

AgentReport report_from_api(const std::string& version_json, const std::string& nodes_json) {
  AgentReport r;
  std::string git_version;
  try {
    if (!version_json.empty()) git_version = nlohmann::json::parse(version_json).value("gitVersion", std::string());
  } catch (const std::exception&) {
  }
  r.kubernetes_version = git_version;
  nlohmann::json items = nlohmann::json::array();
  try {
    if (!nodes_json.empty()) {
      auto nodes = nlohmann::json::parse(nodes_json);
      if (nodes.contains("items") && nodes["items"].is_array()) {
        items = nodes["items"];
        double cores = 0;
        for (const auto& n : items) cores += cpu_cores(n.value("/status/capacity/cpu"_json_pointer, std::string()));
        r.node_count = static_cast<std::uint32_t>(items.size());
        r.core_count = static_cast<std::uint32_t>(cores + 0.5);
      }
    }
    if (!git_version.empty() || r.node_count) {
      r.distribution = guess_distribution(git_version, items);
      r.infrastructure = guess_infrastructure(items);
    }
  } catch (const std::exception&) {  // an unexpected shape: what was learned before it stays
  }
  return r;
}

AgentReport ClusterReport::merged(AgentReport r) const {
  r.agent_version = agent_version_;
  if (!distribution_.empty()) r.distribution = distribution_;
  if (!infrastructure_.empty()) r.infrastructure = infrastructure_;
  return r;
}

void ClusterReport::keep(AgentReport from_api) {
  std::lock_guard lock(mutex_);
  auto next = merged(std::move(from_api));
  // A failed request keeps the facts it would have given.
  if (next.kubernetes_version.empty()) next.kubernetes_version = latest_.kubernetes_version;
  if (!next.node_count) {
    next.node_count = latest_.node_count;
    next.core_count = latest_.core_count;
  }
  if (next.distribution.empty()) next.distribution = latest_.distribution;
  if (next.infrastructure.empty()) next.infrastructure = latest_.infrastructure;
  latest_ = std::move(next);
}

void ClusterReport::async_refresh(http::UpstreamConnector connector, std::shared_ptr<ApiServer> api,
                                  UniqueFunction<void()> done) {
  // Two requests in turn; the report is kept once both answered.
  auto shared_done = std::make_shared<UniqueFunction<void()>>(std::move(done));
  async_get(connector, *api, "/version", max_version_body,
            [this, connector, api, shared_done](std::string version) mutable {
              async_get(connector, *api, "/api/v1/nodes", max_nodes_body,
                        [this, version = std::move(version), shared_done](std::string nodes) {
                          keep(report_from_api(version, nodes));
                          if (*shared_done) (*shared_done)();
                        });
            });
}

}  // namespace clusterconnect::agent
