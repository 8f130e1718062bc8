#include "admin_commands.hpp"

#include <cstdio>
#include <ctime>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include "clusterconnect/ascii.hpp"
#include "clusterconnect/certificates.hpp"
#include "registry_store.hpp"

namespace clusterconnect::relay {

namespace {

struct AdminArgs {
  ClusterName cluster;
  std::string output = "text";
  std::string hybrid_connection;
  std::string key_name;
  std::string principal;
  std::string role;
  std::string cert_file;
  std::string from;
  bool show_secrets = false;
  bool add_pin = false;
};

AdminArgs& args() {
  static AdminArgs a;
  return a;
}

std::string hex(const unsigned char* p, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

std::string now_arm_time() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char out[32];
  std::strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return out;
}

std::string new_secret() {
  unsigned char b[32];
  if (RAND_bytes(b, sizeof b) != 1) throw std::runtime_error("no randomness for a new key");
  return hex(b, sizeof b);
}

void add_cluster_options(CLI::App* c) {
  c->add_option("-s,--subscription", args().cluster.subscription, "Subscription ID")->required();
  c->add_option("-g,--resource-group", args().cluster.resource_group, "Resource group")->required();
  c->add_option("-n,--name", args().cluster.name, "Cluster name")->required();
}

void add_output_option(CLI::App* c) {
  c->add_option("-o,--output", args().output, "Output format: text or json")->check(CLI::IsMember({"text", "json"}));
}

// A record as shown: secrets hidden unless asked for.
nlohmann::json shown(nlohmann::json record, bool secrets) {
  if (record.contains("keys") && record["keys"].is_array())
    for (auto& k : record["keys"])
      if (k.is_object() && k.contains("secret") && !secrets) k["secret"] = "(hidden; --show-secrets)";
  return record;
}

std::string text_of(const nlohmann::json& r) {
  auto str = [&](const char* f) { return r.contains(f) && r[f].is_string() ? r[f].get<std::string>() : std::string(); };
  std::string out = ClusterName{str("subscription"), str("resource_group"), str("name")}.resource_id() + "\n";
  out += "  hybrid connection: " + str("hybrid_connection") + "\n";
  if (r.contains("keys"))
    for (const auto& k : r["keys"]) {
      out += "  key " + k.value("name", std::string()) + " (" + (k.contains("rights") ? k["rights"].dump() : "[]") + ")";
      if (k.contains("secret_file")) out += " secret_file " + k["secret_file"].get<std::string>();
      if (k.contains("secret")) out += " secret " + k["secret"].get<std::string>();
      out += "\n";
    }
  if (r.contains("role_assignments"))
    for (const auto& a : r["role_assignments"])
      out += "  role " + a.value("role", std::string()) + " for " + a.value("principal", std::string()) + "\n";
  if (r.contains("agent_key_pins"))
    for (const auto& p : r["agent_key_pins"]) out += "  agent key pin " + p.get<std::string>() + "\n";
  return out;
}

void print(const nlohmann::json& j, const std::string& text) {
  if (args().output == "json") std::printf("%s\n", j.dump(2).c_str());
  else std::printf("%s", text.c_str());
}

nlohmann::json require(const nlohmann::json& current, const ClusterName& c) {
  if (current.is_null()) throw std::runtime_error("no cluster " + c.resource_id() + " in the registry");
  return current;
}

}  // namespace

std::string agent_key_pin_from_spki_der(const std::string& der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size()));
  if (!key || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    EVP_PKEY_free(key);
    throw std::runtime_error("not a DER SubjectPublicKeyInfo");
  }
  EVP_PKEY_free(key);
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(der.data()), der.size(), md);
  return hex(md, sizeof md);
}

std::string agent_key_pin_from_pem(const std::string& pem) {
  if (pem.find("-----BEGIN CERTIFICATE-----") != std::string::npos) {
    auto pin = tls::public_key_pin(pem);
    if (!pin) throw std::runtime_error(pin.error());
    return pin.value();
  }
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = bio ? PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(bio);
  if (!key) throw std::runtime_error("neither a PEM certificate nor a PEM public key (-----BEGIN PUBLIC KEY-----)");
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(key, &der);
  EVP_PKEY_free(key);
  if (n <= 0) throw std::runtime_error("cannot encode the public key");
  std::string spki(reinterpret_cast<const char*>(der), static_cast<std::size_t>(n));
  OPENSSL_free(der);
  return agent_key_pin_from_spki_der(spki);
}

std::string agent_public_key_certificate_from_pem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = nullptr;
  if (bio && pem.find("-----BEGIN CERTIFICATE-----") != std::string::npos) {
    if (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
      key = X509_get_pubkey(cert);
      X509_free(cert);
    }
  } else if (bio) {
    key = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  }
  BIO_free(bio);
  if (!key) throw std::runtime_error("neither a PEM certificate nor a PEM public key (-----BEGIN PUBLIC KEY-----)");
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(key, &der);
  EVP_PKEY_free(key);
  if (n <= 0) throw std::runtime_error("cannot encode the public key");
  std::string out(4 * ((static_cast<std::size_t>(n) + 2) / 3), '\0');
  int m = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), der, n);
  OPENSSL_free(der);
  out.resize(static_cast<std::size_t>(m));
  return out;
}

void add_store_options(CLI::App& app, StoreFlags& flags) {
  app.add_option("--store", flags.url,
                 "Registry in etcd: etcd://HOST:PORT[,HOST:PORT…] (etcds:// for TLS); default: the --config file");
  app.add_option("--store-prefix", flags.prefix, "Key prefix of the registry in etcd (default /clusterconnect/)");
  app.add_option("--store-ca-file", flags.ca_file, "etcds://: CA bundle that signs etcd's server certificate");
  app.add_option("--store-cert-file", flags.cert_file, "etcds://: client certificate (PEM) for etcd");
  app.add_option("--store-key-file", flags.key_file, "etcds://: client key (PEM) for etcd");
}

EtcdOptions etcd_options(const StoreFlags& flags) {
  EtcdOptions o = parse_etcd_url(flags.url);
  o.prefix = flags.prefix;
  if (o.prefix.empty() || o.prefix.front() != '/') o.prefix = "/" + o.prefix;
  if (o.prefix.back() != '/') o.prefix += '/';
  o.ca_file = flags.ca_file;
  o.cert_file = flags.cert_file;
  o.key_file = flags.key_file;
  return o;
}

std::shared_ptr<RegistryStore> open_store(const StoreFlags& flags, const std::string& config_file,
                                          std::shared_ptr<spdlog::logger> logger, RelayMetrics* metrics) {
  if (!flags.url.empty()) return make_etcd_store(etcd_options(flags), std::move(logger), metrics);
  if (!config_file.empty()) return make_file_store(config_file, std::move(logger));
  return make_fixed_store(Registry{});
}

void add_admin_commands(CLI::App& app, const StoreFlags&, const std::string&) {
  auto& a = args();
  // Store and config flags may follow the command's name.
  app.fallthrough();
  auto* cluster = app.add_subcommand("cluster", "Clusters in the registry")->require_subcommand(1);
  auto* add = cluster->add_subcommand("add", "Register a cluster with a new listen key and connect key");
  add_cluster_options(add);
  add->add_option("--hybrid-connection", a.hybrid_connection, "Its path after /$hc/ (default clusters/SUB/GROUP/NAME)");
  add->add_flag("--show-secrets", a.show_secrets, "Print the new keys' secrets");
  add_output_option(add);
  auto* remove = cluster->add_subcommand("remove", "Remove a cluster: its agents' control channels close");
  add_cluster_options(remove);
  auto* show = cluster->add_subcommand("show", "One cluster's record");
  add_cluster_options(show);
  show->add_flag("--show-secrets", a.show_secrets, "Print key secrets held in the record");
  add_output_option(show);
  auto* list = cluster->add_subcommand("list", "Every cluster");
  add_output_option(list);

  auto* key = app.add_subcommand("key", "A cluster's SAS keys")->require_subcommand(1);
  auto* rotate = key->add_subcommand("rotate", "New secret for a key: tokens signed with the old one are refused");
  add_cluster_options(rotate);
  rotate->add_option("--key", a.key_name, "Key name (e.g. listen, connect)")->required();
  rotate->add_flag("--show-secrets", a.show_secrets, "Print the new secret");
  add_output_option(rotate);

  auto* role = app.add_subcommand("role", "Role assignments on a cluster")->require_subcommand(1);
  auto* assign = role->add_subcommand("assign", "Assign a role to a principal (user, group or application object ID)");
  add_cluster_options(assign);
  assign->add_option("--principal", a.principal, "Object ID")->required();
  assign->add_option("--role", a.role, "Role name (e.g. \"Azure Arc Enabled Kubernetes Cluster User Role\")")->required();
  auto* unassign = role->add_subcommand("unassign", "Remove a principal's role assignments (one role with --role)");
  add_cluster_options(unassign);
  unassign->add_option("--principal", a.principal, "Object ID")->required();
  unassign->add_option("--role", a.role, "Only this role");

  auto* cert = app.add_subcommand("agent-cert", "The agent key pins proxies check")->require_subcommand(1);
  auto* set = cert->add_subcommand("set", "Pin the agent's key from its PEM certificate or public key");
  add_cluster_options(set);
  set->add_option("--cert", a.cert_file, "PEM certificate or public key of the agent")->required()->check(CLI::ExistingFile);
  set->add_flag("--add", a.add_pin, "Add to the pins instead of replacing them (key roll-over)");

  auto* import = app.add_subcommand("import", "One-shot: copy the --config file's registry into the --store etcd");
  import->add_option("--from", a.from, "Registry file (default: --config)");
}

int run_admin_command(CLI::App& app, const StoreFlags& flags, const std::string& config_file, spdlog::logger& logger) {
  auto& a = args();
  auto sub = app.get_subcommands().front();
  auto leaf = sub->get_subcommands().empty() ? sub : sub->get_subcommands().front();
  const std::string command = sub->get_name() + (leaf == sub ? "" : " " + leaf->get_name());
  // Admin commands log only warnings and errors: their output is the answer.
  auto quiet = std::make_shared<spdlog::logger>(logger.name(), logger.sinks().begin(), logger.sinks().end());
  quiet->set_level(spdlog::level::warn);

  if (command == "import") {
    if (flags.url.empty()) throw std::runtime_error("import: give --store etcd://HOST:PORT (where to copy the registry to)");
    const std::string from = a.from.empty() ? config_file : a.from;
    if (from.empty()) throw std::runtime_error("import: give --from FILE or --config FILE");
    auto store = open_store(flags, "", quiet, nullptr);  // checks the store is reachable
    EtcdOptions o = parse_etcd_url(flags.url);
    o.prefix = flags.prefix;
    if (o.prefix.back() != '/') o.prefix += '/';
    o.ca_file = flags.ca_file;
    o.cert_file = flags.cert_file;
    o.key_file = flags.key_file;
    const auto n = import_file_registry(from, o);
    std::printf("imported %zu cluster(s) from %s into %s\n", n, from.c_str(), store->describe().c_str());
    return 0;
  }
  if (flags.url.empty() && config_file.empty())
    throw std::runtime_error(command + ": give --config FILE (the file registry) or --store etcd://HOST:PORT");
  auto store = open_store(flags, config_file, quiet, nullptr);
  const ClusterName& c = a.cluster;

  if (command == "cluster list") {
    auto records = store->cluster_records();
    nlohmann::json out = nlohmann::json::array();
    std::string text;
    for (auto& r : records) {
      out.push_back(shown(r, false));
      auto str = [&](const char* f) { return r.contains(f) && r[f].is_string() ? r[f].get<std::string>() : std::string(); };
      text += ClusterName{str("subscription"), str("resource_group"), str("name")}.resource_id() + "  " +
              str("hybrid_connection") + "\n";
    }
    print(out, text);
    return 0;
  }
  if (command == "cluster show") {
    for (auto& r : store->cluster_records())
      if (c.matches(r)) {
        auto s = shown(r, a.show_secrets);
        print(s, text_of(s));
        return 0;
      }
    throw std::runtime_error("no cluster " + c.resource_id() + " in " + store->describe());
  }
  if (command == "cluster add") {
    nlohmann::json written;
    const std::string hc = a.hybrid_connection.empty()
                               ? "clusters/" + c.subscription + "/" + c.resource_group + "/" + c.name
                               : a.hybrid_connection;
    store->edit_cluster(c, [&](const nlohmann::json& current) {
      if (!current.is_null()) throw std::runtime_error("cluster " + c.resource_id() + " is already registered");
      nlohmann::json keys = nlohmann::json::array();
      for (const char* right : {"listen", "connect"}) {
        nlohmann::json k{{"name", right}, {"rights", {right}}};
        k.update(store->store_secret(c, right, new_secret()));
        keys.push_back(std::move(k));
      }
      written = {{"subscription", c.subscription},
                 {"resource_group", c.resource_group},
                 {"name", c.name},
                 {"hybrid_connection", hc},
                 {"keys", keys},
                 {"role_assignments", nlohmann::json::array()},
                 {"agent_key_pins", nlohmann::json::array()},
                 // ARM's systemData: when the resource was made (by whom is
                 // not known to a local administrator's command).
                 {"system_data", {{"createdAt", now_arm_time()}}}};
      return written;
    });
    auto s = shown(written, a.show_secrets);
    print(s, "added " + text_of(s));
    return 0;
  }
  if (command == "cluster remove") {
    store->edit_cluster(c, [&](const nlohmann::json& current) {
      require(current, c);
      return nlohmann::json();
    });
    std::printf("removed %s\n", c.resource_id().c_str());
    return 0;
  }
  if (command == "key rotate") {
    std::string secret = new_secret();
    store->edit_cluster(c, [&](const nlohmann::json& current) {
      auto r = require(current, c);
      bool found = false;
      if (r.contains("keys") && r["keys"].is_array())
        for (auto& k : r["keys"])
          if (k.is_object() && k.value("name", std::string()) == a.key_name) {
            found = true;
            k.erase("secret");
            k.erase("secret_file");
            k.update(store->store_secret(c, a.key_name, secret));
          }
      if (!found) throw std::runtime_error("cluster " + c.resource_id() + " has no key named '" + a.key_name + "'");
      return r;
    });
    nlohmann::json out{{"cluster", c.resource_id()}, {"key", a.key_name}};
    if (a.show_secrets) out["secret"] = secret;
    print(out, "rotated key " + a.key_name + " of " + c.resource_id() + (a.show_secrets ? ": " + secret : "") + "\n");
    return 0;
  }
  if (command == "role assign" || command == "role unassign") {
    const bool assign = command == "role assign";
    store->edit_cluster(c, [&](const nlohmann::json& current) {
      auto r = require(current, c);
      if (!r.contains("role_assignments") || !r["role_assignments"].is_array()) r["role_assignments"] = nlohmann::json::array();
      auto& list = r["role_assignments"];
      auto same = [&](const nlohmann::json& x) {
        return ascii_iequals(x.value("principal", std::string()), a.principal) &&
               (a.role.empty() || ascii_iequals(x.value("role", std::string()), a.role));
      };
      const auto before = list.size();
      for (auto it = list.begin(); it != list.end();) it = same(*it) ? list.erase(it) : it + 1;
      if (assign) list.push_back({{"principal", a.principal}, {"role", a.role}});
      else if (list.size() == before)
        throw std::runtime_error("no role assignment for " + a.principal + " on " + c.resource_id());
      return r;
    });
    std::printf("%s %s%s on %s\n", assign ? "assigned" : "unassigned", a.principal.c_str(),
                a.role.empty() ? "" : (" (" + a.role + ")").c_str(), c.resource_id().c_str());
    return 0;
  }
  if (command == "agent-cert set") {
    auto pem = tls::read_small_file(a.cert_file, 64 * 1024);
    if (!pem) throw std::runtime_error(pem.error());
    const std::string pin = agent_key_pin_from_pem(pem.value());
    // ARM's agentPublicKeyCertificate: the agent key given at PUT (base64
    // DER SubjectPublicKeyInfo); the latest key set is the one shown.
    const std::string certificate = agent_public_key_certificate_from_pem(pem.value());
    store->edit_cluster(c, [&](const nlohmann::json& current) {
      auto r = require(current, c);
      r["agent_public_key_certificate"] = certificate;
      if (!a.add_pin || !r.contains("agent_key_pins") || !r["agent_key_pins"].is_array())
        r["agent_key_pins"] = nlohmann::json::array();
      bool present = false;
      for (const auto& p : r["agent_key_pins"]) present = present || (p.is_string() && ascii_iequals(p.get<std::string>(), pin));
      if (!present) r["agent_key_pins"].push_back(pin);
      return r;
    });
    std::printf("agent key pin of %s: %s\n", c.resource_id().c_str(), pin.c_str());
    return 0;
  }
  throw std::runtime_error("unknown command: " + command);
}

}  // namespace clusterconnect::relay
