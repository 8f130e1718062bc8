#pragma once
// Relay replicas in etcd. Each replica holds a lease (TTL 10 s by default,
// kept alive) and under it:
//   PREFIX replicas/members/<id>             {"url": advertise URL, "pin": its TLS key's pin}
//   PREFIX replicas/channels/<identity>/<id>  {"count": control channels of the cluster here,
//                                              "last_seen": unix s when one was last open,
//                                              "agent": the agent's last report}
// One put per change of a cluster's channels here (changes that come
// faster than the lease thread writes are coalesced; a count of 0 keeps the
// record, so the others can still say when the agent was last seen).
// A replica that dies stops renewing: its lease lapses and its records go.
// While etcd is away, rendezvous go on from what each replica knows; once it
// is back, a replica whose lease failed takes a new one and writes every
// record again.
// Every replica watches PREFIX replicas/ and keeps who holds which cluster's
// control channels in memory, so a connect for a cluster whose agents are on
// another replica is forwarded there without reading etcd.
//
// The call between replicas: HTTPS POST to the owner's advertise URL at
// /$replica/accept, authenticated both ways through etcd (the trust root of
// the registry already): the caller names the shared secret kept at
// PREFIX replicas/secret (created by the first replica), and checks that the
// owner's TLS key has the pin the owner registered. Bounded: 1 s to connect,
// 2 s in all, at most 256 calls queued, at most two owners tried.

#include <chrono>
#include <memory>
#include <string>

#include "registry_store.hpp"
#include "replica_peers.hpp"

namespace spdlog {
class logger;
}

namespace clusterconnect::relay {

class RelayMetrics;

struct ReplicaOptions {
  std::string id;             // empty: random
  std::string advertise_url;  // https://HOST:PORT other replicas reach this one at
  std::string key_pin;        // SHA-256 pin (hex) of this replica's TLS server key
  std::chrono::seconds ttl{10};
  RelayMetrics* metrics = nullptr;  // counts the writes to etcd
};

class ReplicaDirectory : public ReplicaPeers {
 public:
  // Registers this replica (an unreachable store is an error naming it,
  // thrown) and starts keeping the lease alive and watching.
  static std::shared_ptr<ReplicaDirectory> start(const EtcdOptions& store, ReplicaOptions options,
                                                 std::shared_ptr<spdlog::logger> logger);
  // Revokes the lease (every record of this replica goes at once: the
  // others stop routing here) and stops the threads. Idempotent.
  virtual void withdraw() noexcept = 0;
};

}  // namespace clusterconnect::relay
