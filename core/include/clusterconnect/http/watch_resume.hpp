#pragma once
// Resuming a Kubernetes watch whose upstream broke mid-response (the tunnel
// session was lost with a relay replica). The response is newline-delimited
// JSON events; only whole event lines are forwarded, and the resourceVersion
// of the last one delivered is where the watch is asked to resume, so the
// client sees the same response continue with no gap and no duplicate.
// Sans-I/O: the forwarding engine feeds it decoded body bytes.

#include <cstdint>
#include <string>
#include <string_view>

namespace clusterconnect::http {

// A Kubernetes watch: GET with `watch=true` or `watch=1` in the query, or a
// GET of a legacy `/watch/` path.
bool is_watch_request(std::string_view method, std::string_view target);

// A response body the tracker can follow: JSON, not encoded (a protobuf
// watch is length-framed, not line-framed).
bool is_json_watch_body(std::string_view content_type, std::string_view content_encoding);

class WatchEventLines {
 public:
  // `target` is the watch request's; it says from where the resourceVersions
  // of the events delivered are valid resume points. A line longer than
  // `line_limit` ends tracking: the rest of the body passes through as is.
  explicit WatchEventLines(std::string_view target, std::size_t line_limit = 16 * 1024 * 1024);

  // Decoded body bytes as they arrive. Returns the complete lines among all
  // bytes fed so far (each with its '\n'): what may be forwarded now. Valid
  // until the next call. A line that is not a JSON event is forwarded but
  // names no resourceVersion. `end`: the response ended normally, so a last
  // line without '\n' is complete too.
  std::string_view feed(std::string_view body, bool end = false);
  // The upstream broke: a partial line is dropped (it comes again, whole,
  // from the resumed watch).
  void discard_partial() { pending_.clear(); }

  // True when the watch can be re-issued after a break: tracking is on and
  // either nothing was delivered yet or a valid resume point is known.
  bool resumable() const;
  // The request target that resumes the watch after the last delivered event.
  std::string resume_target() const;

  const std::string& resource_version() const { return resource_version_; }
  std::uint64_t lines_delivered() const { return lines_; }
  bool tracking() const { return tracking_; }

 private:
  void on_line(std::string_view line);

  std::string target_;
  std::size_t line_limit_;
  std::string pending_, out_;
  std::string resource_version_;  // the last valid resume point
  std::uint64_t lines_ = 0;
  std::uint64_t events_ = 0;  // lines that were JSON watch events
  // The events' resourceVersions are resume points (false while a watch
  // without a starting resourceVersion sends its synthetic initial state).
  bool points_valid_ = true;
  bool awaits_initial_end_ = false;  // sendInitialEvents: valid after the initial-events-end bookmark
  bool tracking_ = true;
};

// `target` with resourceVersion=`resource_version` (replacing any) and
// without sendInitialEvents and resourceVersionMatch, which describe the
// start of a watch, not its continuation. Other parameters are kept.
std::string resume_target(std::string_view target, std::string_view resource_version);

// The line a resumed watch answered by something other than 200 becomes:
// {"type":"ERROR","object":<Status>}\n, as kube-apiserver reports an expired
// watch (410 Gone), which client-go turns into a re-list.
std::string watch_error_event(unsigned status, std::string_view body);

}  // namespace clusterconnect::http
