#pragma once
// Certificates for the local proxy's listener: a per-user CA kept under the
// user's config directory and short-lived server certificates it issues.
// EC P-256 keys; extensions chosen so OpenSSL and Go's crypto/tls (kubectl)
// both accept the chain.

#include <ctime>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "clusterconnect/result.hpp"

namespace clusterconnect::tls {

struct PemPair {
  std::string cert;  // PEM certificate
  std::string key;   // PEM PKCS#8 private key
};

// A self-signed CA (basicConstraints CA:TRUE, pathlen 0; keyCertSign, cRLSign).
Result<PemPair> create_ca(std::string common_name, int days);

// The same, plus a critical nameConstraints extension that permits only
// loopback names: DNS localhost (and names under it), IP 127.0.0.0/8 and
// IP ::1/128. OpenSSL and Go refuse any certificate it signs for other names.
Result<PemPair> create_loopback_ca(std::string common_name, int days);

// A server certificate signed by `ca` for the given DNS names and IP addresses
// (at least one of either). serverAuth only. Expires at the latest with `ca`.
Result<PemPair> issue_server_cert(const PemPair& ca, std::vector<std::string> dns_names,
                                  std::vector<std::string> ip_addresses, int days);

// Writes `content` to `path` with mode 0600, atomically (temporary file in the
// same directory, fsync, rename, fsync of the directory). Creates a missing
// parent directory with mode 0700. On failure the previous file is intact.
Result<void> write_private_file(const std::filesystem::path& path, const std::string& content);

// Reads the file (at most max_bytes) or fails with a message naming it.
Result<std::string> read_small_file(const std::filesystem::path& path, std::size_t max_bytes = 1024 * 1024);

// The pin of a certificate's key: SHA-256 of its DER SubjectPublicKeyInfo,
// 64 lowercase hex digits. A certificate re-issued for the same key keeps
// its pin. From PEM (the first certificate) or an X509* (as void*, so this
// header needs no OpenSSL).
Result<std::string> public_key_pin(const std::string& cert_pem);
std::string public_key_pin_of(const void* x509);
// 64 hex digits (either case).
bool is_public_key_pin(std::string_view s) noexcept;

// Lifetime of the local CA, in days.
inline constexpr int local_ca_days = 30;

// dir/ca.crt and dir/ca.key (0600), a loopback-only CA (create_loopback_ca)
// valid for local_ca_days: reused when present, matching, carrying the
// loopback constraints and less than half way through its lifetime at `now`;
// otherwise replaced by a new one (each file written atomically). A key file
// readable by others or a file that does not parse is a Failure naming the
// file, never overwritten.
Result<PemPair> load_or_create_ca(const std::filesystem::path& dir, std::string common_name,
                                  std::time_t now = std::time(nullptr));

}  // namespace clusterconnect::tls
