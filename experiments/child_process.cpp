// Child processes: posix_spawn with the output redirected, waitpid, and a SIGINT and SIGTERM handler
// that only records the signal.
#include "experiments/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

extern char** environ;

namespace mr1 {

std::string own_executable() {
  std::vector<char> buffer(4096);
  const ssize_t length = readlink("/proc/self/exe", buffer.data(), buffer.size() - 1);
  if (length <= 0) return "";
  return std::string(buffer.data(), static_cast<size_t>(length));
}

pid_t start_child(const std::vector<std::string>& arguments, const std::string& log_path,
                  const std::vector<std::string>& environment) {
  if (arguments.empty()) throw std::runtime_error("start_child: no program given");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<char*> argv;
  for (const std::string& argument : arguments) argv.push_back(const_cast<char*>(argument.c_str()));
  argv.push_back(nullptr);
  // The parent's variables, less those `environment` sets, then those.
  std::vector<std::string> variables;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string variable(*entry);
    const std::string name = variable.substr(0, variable.find('=') + 1);
    const bool replaced = std::any_of(environment.begin(), environment.end(),
                                      [&](const std::string& set) { return set.rfind(name, 0) == 0; });
    if (!replaced) variables.push_back(variable);
  }
  variables.insert(variables.end(), environment.begin(), environment.end());
  std::vector<char*> envp;
  for (std::string& variable : variables) envp.push_back(variable.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  const int error = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) throw std::runtime_error("could not start " + arguments[0] + ": " + std::strerror(error));
  return pid;
}

ChildExit wait_for_child() {
  int status = 0;
  ChildExit exit;
  exit.pid = waitpid(-1, &status, 0);
  if (exit.pid < 0) {
    if (errno == EINTR) return exit;
    throw std::runtime_error(std::string("waiting for the runs: ") + std::strerror(errno));
  }
  if (WIFEXITED(status)) {
    exit.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    exit.code = 128 + WTERMSIG(status);
  }
  return exit;
}

namespace {

std::atomic<bool> interrupted{false};
extern "C" void record_interrupt(int) { interrupted = true; }

}  // namespace

InterruptGuard::InterruptGuard() {
  interrupted = false;
  struct sigaction action {};
  action.sa_handler = record_interrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: waitpid returns with EINTR
  sigaction(SIGINT, &action, &previous_interrupt_);
  sigaction(SIGTERM, &action, &previous_terminate_);
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGINT, &previous_interrupt_, nullptr);
  sigaction(SIGTERM, &previous_terminate_, nullptr);
}

bool InterruptGuard::interrupt_received() { return interrupted.load(); }

std::string last_error_line(const std::string& log_path) {
  std::ifstream in(log_path);
  std::string line, found;
  const std::string marker = "] error ";
  while (std::getline(in, line)) {
    const size_t at = line.find(marker);
    if (at != std::string::npos) found = line.substr(at + marker.size());
  }
  return found;
}

}  // namespace mr1
