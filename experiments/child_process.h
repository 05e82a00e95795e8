// Child processes for running several experiments at once (`mamba-r1 sweep --jobs N`): each run is a
// process of its own, so that runs share no OpenMP, CUDA or logging state, and one that crashes takes
// only itself down. POSIX (posix_spawn, waitpid).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <vector>

namespace mr1 {

// The path of the running program (/proc/self/exe), for starting another copy of it; empty when it
// cannot be read.
std::string own_executable();

// Starts `arguments` (arguments[0]: the program's path) with standard output and standard error appended
// to log_path, in this process's environment with the NAME=VALUE entries of `environment` set over it.
// Throws std::runtime_error naming the program when it cannot be started.
pid_t start_child(const std::vector<std::string>& arguments, const std::string& log_path,
                  const std::vector<std::string>& environment = {});

struct ChildExit {
  pid_t pid = -1;
  int code = 0;  // the exit status, or 128 + the signal that ended it (as a shell reports it)
};

// Waits for any child to end. Returns pid −1 when a signal arrived first (SIGINT, say); throws
// std::runtime_error when there is no child to wait for.
ChildExit wait_for_child();

// From here until the end of the scope, SIGINT (or SIGTERM) sets interrupt_received() instead of ending the process,
// and interrupts wait_for_child (so the caller can pass it on to the children); the previous handler is
// restored after.
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
  static bool interrupt_received();

 private:
  struct sigaction previous_interrupt_;
  struct sigaction previous_terminate_;
};

// The last line of a run's log that spdlog wrote at level error, without its time and level; empty when none.
std::string last_error_line(const std::string& log_path);

}  // namespace mr1
