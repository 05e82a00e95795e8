// Where a pass's time goes: seconds per part of the model (the embedding, each kind of block with its
// norm, the final norm and LM head, and whatever else the caller times), forward and backward, summed
// over the passes measured. For `mamba-r1 bench`. A timed part waits for the device before and after
// itself, so each figure is that part's alone, and the pass runs slower: a breakdown, not a throughput.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mr1 {

// forward, backward, or neither (a loss with its gradient, an optimizer step).
enum class Pass { forward, backward, other };

class PartTimes {
 public:
  struct Part {
    std::string name;
    double seconds[3] = {0, 0, 0};  // by Pass
    int64_t count[3] = {0, 0, 0};   // how many times it was timed, by Pass

    double total_seconds() const { return seconds[0] + seconds[1] + seconds[2]; }
  };

  void add(std::string_view name, Pass pass, double seconds);
  // In the order they were first timed.
  const std::vector<Part>& parts() const { return parts_; }

 private:
  std::vector<Part> parts_;
};

// Adds the seconds from its construction to its destruction to `times` under `name` (which must
// outlive it); does nothing, and does not wait for the device, when times is null.
class PartTimer {
 public:
  PartTimer(PartTimes* times, std::string_view name, Pass pass);
  ~PartTimer();
  PartTimer(const PartTimer&) = delete;
  PartTimer& operator=(const PartTimer&) = delete;

 private:
  PartTimes* times_;
  std::string_view name_;
  Pass pass_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace mr1
