// Seconds per part of the model, forward and backward (see part_times.h).
#include "blocks/part_times.h"

#include <algorithm>
#include <exception>

#include "kernels/cuda_device.h"

namespace mr1 {

void PartTimes::add(std::string_view name, Pass pass, double seconds) {
  auto part = std::find_if(parts_.begin(), parts_.end(), [&](const Part& p) { return p.name == name; });
  if (part == parts_.end()) {
    parts_.push_back(Part{std::string(name)});
    part = parts_.end() - 1;
  }
  part->seconds[static_cast<int>(pass)] += seconds;
  ++part->count[static_cast<int>(pass)];
}

PartTimer::PartTimer(PartTimes* times, std::string_view name, Pass pass) : times_(times), name_(name), pass_(pass) {
  if (!times_) return;
  cuda::synchronize();  // the work queued before this part is not its own
  start_ = std::chrono::steady_clock::now();
}

PartTimer::~PartTimer() {
  if (!times_ || std::uncaught_exceptions() > 0) return;  // a failed part has no time
  try {
    cuda::synchronize();
  } catch (...) {
    return;  // a destructor must not throw; the device's error stays for the next call to report
  }
  times_->add(name_, pass_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
}

}  // namespace mr1
