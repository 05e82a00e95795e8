// CPU routing ops: plain loops over the small (T, X) router matrices.
#include "kernels/routing.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/top_k_row.h"

namespace mr1 {

namespace {

bool unmasked(const std::vector<uint8_t>* token_mask, int64_t t) {
  return !token_mask || (*token_mask)[static_cast<size_t>(t)] != 0;
}

void check_matrix(const Tensor& matrix, const char* op, const char* name) {
  if (matrix.rank() != 2) {
    throw ShapeError(std::string(op) + ": " + name + ": expected shape (T, X), found " + matrix.shape_string());
  }
  if (!matrix.is_cpu()) throw std::invalid_argument(std::string(op) + ": " + name + " must be a CPU tensor");
}

void check_mask(const std::vector<uint8_t>* token_mask, int64_t tokens, const char* op) {
  if (token_mask && static_cast<int64_t>(token_mask->size()) != tokens) {
    throw ShapeError(std::string(op) + ": token mask: expected " + std::to_string(tokens) + " entries, found " +
                     std::to_string(token_mask->size()));
  }
}

}  // namespace

int64_t unmasked_count(int64_t tokens, const std::vector<uint8_t>* token_mask) {
  if (!token_mask) return tokens;
  int64_t count = 0;
  for (int64_t t = 0; t < tokens; ++t) count += unmasked(token_mask, t);
  return count;
}

void top_k(const Tensor& scores, int64_t k, std::vector<int32_t>& index, std::vector<float>& value) {
  check_matrix(scores, "top_k", "scores");
  const int64_t T = scores.size(0), X = scores.size(1);
  if (k < 1 || k > X) {
    throw ShapeError("top_k: k must be from 1 to the number of experts (" + std::to_string(X) + "), found " +
                     std::to_string(k));
  }
  index.assign(static_cast<size_t>(T * k), -1);
  value.assign(static_cast<size_t>(T * k), 0.0f);
  for (int64_t t = 0; t < T; ++t) top_k_row(scores.data() + t * X, X, k, index.data() + t * k, value.data() + t * k);
}

int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t experts, int64_t min_capacity) {
  if (!(capacity_factor > 0)) return -1;
  // An expert never receives more than the T tokens, so a larger capacity is T: capping in double keeps a
  // huge (or infinite) factor from overflowing the integer and turning into min_capacity.
  const double scaled = std::floor(capacity_factor * static_cast<double>(tokens) / static_cast<double>(experts));
  const int64_t capacity = scaled >= static_cast<double>(tokens) ? tokens : static_cast<int64_t>(scaled);
  return std::max(capacity, min_capacity);
}

int64_t apply_capacity(std::vector<int32_t>& expert, int64_t k, int64_t experts, int64_t capacity,
                       const std::vector<uint8_t>* token_mask) {
  const int64_t T = static_cast<int64_t>(expert.size()) / k;
  check_mask(token_mask, T, "apply_capacity");
  std::vector<int64_t> used(static_cast<size_t>(experts), 0);
  int64_t dropped = 0;
  for (int64_t r = 0; r < k; ++r) {
    for (int64_t t = 0; t < T; ++t) {
      int32_t& choice = expert[static_cast<size_t>(t * k + r)];
      if (!unmasked(token_mask, t)) {
        choice = -1;
        continue;
      }
      if (choice < 0) continue;
      if (capacity >= 0 && used[static_cast<size_t>(choice)] >= capacity) {
        choice = -1;
        ++dropped;
      } else {
        ++used[static_cast<size_t>(choice)];
      }
    }
  }
  return dropped;
}

std::vector<double> assignment_load(const std::vector<int32_t>& choice, int64_t k, int64_t experts,
                                    const std::vector<uint8_t>* token_mask) {
  const int64_t T = static_cast<int64_t>(choice.size()) / k;
  check_mask(token_mask, T, "assignment_load");
  std::vector<double> load(static_cast<size_t>(experts), 0.0);
  int64_t counted = 0;
  for (int64_t a = 0; a < T * k; ++a) {
    const int32_t j = choice[static_cast<size_t>(a)];
    if (j < 0 || !unmasked(token_mask, a / k)) continue;
    if (j >= experts) {
      throw std::out_of_range("assignment_load: expert " + std::to_string(j) + " of " + std::to_string(experts));
    }
    load[static_cast<size_t>(j)] += 1.0;
    ++counted;
  }
  if (counted > 0) {
    for (double& value : load) value /= static_cast<double>(counted);
  }
  return load;
}

double load_balance_loss(const Tensor& probs, const std::vector<int32_t>& first_choice,
                         const std::vector<uint8_t>* token_mask, std::vector<double>* fraction,
                         std::vector<double>* mean_probability) {
  return load_balance_loss(probs, first_choice, 1, token_mask, fraction, mean_probability);
}

double load_balance_loss(const Tensor& probs, const std::vector<int32_t>& choice, int64_t k,
                         const std::vector<uint8_t>* token_mask, std::vector<double>* fraction,
                         std::vector<double>* mean_probability) {
  check_matrix(probs, "load_balance_loss", "probs");
  const int64_t T = probs.size(0), X = probs.size(1);
  check_mask(token_mask, T, "load_balance_loss");
  if (static_cast<int64_t>(choice.size()) != T * k) {
    throw ShapeError("load_balance_loss: choices: expected " + std::to_string(T * k) + " entries (T·k), found " +
                     std::to_string(choice.size()));
  }
  const std::vector<double> f = assignment_load(choice, k, X, token_mask);
  std::vector<double> P(static_cast<size_t>(X), 0.0);
  const int64_t counted = unmasked_count(T, token_mask);
  for (int64_t t = 0; t < T; ++t) {
    if (!unmasked(token_mask, t)) continue;
    for (int64_t j = 0; j < X; ++j) P[static_cast<size_t>(j)] += probs.data()[t * X + j];
  }
  double loss = 0;
  for (int64_t j = 0; j < X; ++j) {
    if (counted > 0) P[static_cast<size_t>(j)] /= static_cast<double>(counted);
    loss += f[static_cast<size_t>(j)] * P[static_cast<size_t>(j)];
  }
  if (fraction) *fraction = f;
  if (mean_probability) *mean_probability = P;
  return static_cast<double>(X) * loss;
}

void load_balance_loss_backward(Tensor& grad_probs, const std::vector<double>& fraction,
                                const std::vector<uint8_t>* token_mask, float scale) {
  check_matrix(grad_probs, "load_balance_loss_backward", "grad_probs");
  const int64_t T = grad_probs.size(0), X = grad_probs.size(1);
  const int64_t counted = unmasked_count(T, token_mask);
  if (counted == 0) return;
  for (int64_t t = 0; t < T; ++t) {
    if (!unmasked(token_mask, t)) continue;
    for (int64_t j = 0; j < X; ++j) {
      grad_probs.data()[t * X + j] +=
          static_cast<float>(scale * static_cast<double>(X) * fraction[static_cast<size_t>(j)] / counted);
    }
  }
}

namespace {
double row_logsumexp(const float* row, int64_t X) {
  double top = row[0];
  for (int64_t j = 1; j < X; ++j) top = std::max(top, static_cast<double>(row[j]));
  double total = 0;
  for (int64_t j = 0; j < X; ++j) total += std::exp(row[j] - top);
  return top + std::log(total);
}
}  // namespace

double router_z_loss(const Tensor& logits, const std::vector<uint8_t>* token_mask) {
  check_matrix(logits, "router_z_loss", "logits");
  const int64_t T = logits.size(0), X = logits.size(1);
  check_mask(token_mask, T, "router_z_loss");
  const int64_t counted = unmasked_count(T, token_mask);
  double total = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (!unmasked(token_mask, t)) continue;
    const double lse = row_logsumexp(logits.data() + t * X, X);
    total += lse * lse;
  }
  return counted > 0 ? total / counted : 0.0;
}

void router_z_loss_backward(Tensor& grad_logits, const Tensor& logits, const std::vector<uint8_t>* token_mask,
                            float scale) {
  check_matrix(logits, "router_z_loss_backward", "logits");
  const int64_t T = logits.size(0), X = logits.size(1);
  const int64_t counted = unmasked_count(T, token_mask);
  for (int64_t t = 0; t < T; ++t) {
    if (!unmasked(token_mask, t)) continue;
    const float* row = logits.data() + t * X;
    const double lse = row_logsumexp(row, X);
    for (int64_t j = 0; j < X; ++j) {
      grad_logits.data()[t * X + j] += static_cast<float>(scale * 2.0 * lse * std::exp(row[j] - lse) / counted);
    }
  }
}

std::vector<float> gather_gates(const Tensor& scores, const std::vector<int32_t>& chosen,
                                const std::vector<int32_t>& kept, int64_t k, bool normalize) {
  check_matrix(scores, "gather_gates", "scores");
  const int64_t T = scores.size(0), X = scores.size(1);
  if (static_cast<int64_t>(chosen.size()) != T * k || kept.size() != chosen.size()) {
    throw ShapeError("gather_gates: expected " + std::to_string(T * k) + " chosen and kept entries (T·k), found " +
                     std::to_string(chosen.size()) + " and " + std::to_string(kept.size()));
  }
  std::vector<float> gate(chosen.size(), 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = scores.data() + t * X;
    double total = 0;
    for (int64_t r = 0; r < k; ++r) {
      const int32_t j = chosen[static_cast<size_t>(t * k + r)];
      if (j >= 0) total += row[j];
    }
    const double divisor = normalize ? total : 1.0;
    for (int64_t r = 0; r < k; ++r) {
      const size_t a = static_cast<size_t>(t * k + r);
      if (kept[a] >= 0) gate[a] = static_cast<float>(row[chosen[a]] / divisor);
    }
  }
  return gate;
}

Tensor gather_gates_backward(const std::vector<float>& grad_gate, const Tensor& scores,
                             const std::vector<int32_t>& chosen, const std::vector<int32_t>& kept, int64_t k,
                             bool normalize) {
  check_matrix(scores, "gather_gates_backward", "scores");
  const int64_t T = scores.size(0), X = scores.size(1);
  if (static_cast<int64_t>(grad_gate.size()) != T * k) {
    throw ShapeError("gather_gates_backward: grad_gate: expected " + std::to_string(T * k) +
                     " entries (T·k), found " + std::to_string(grad_gate.size()));
  }
  Tensor grad({T, X});
  for (int64_t t = 0; t < T; ++t) {
    const float* row = scores.data() + t * X;
    float* grad_row = grad.data() + t * X;
    // G_a: the gradient of the kept assignments; S_t and Σ_b G_b · gate_b over the chosen ones.
    double total = 0, weighted = 0;
    for (int64_t r = 0; r < k; ++r) {
      const size_t a = static_cast<size_t>(t * k + r);
      if (chosen[a] < 0) continue;
      total += row[chosen[a]];
      if (kept[a] >= 0) weighted += static_cast<double>(grad_gate[a]) * row[chosen[a]];
    }
    for (int64_t r = 0; r < k; ++r) {
      const size_t a = static_cast<size_t>(t * k + r);
      if (chosen[a] < 0) continue;
      const double G = kept[a] >= 0 ? grad_gate[a] : 0.0;
      grad_row[chosen[a]] += static_cast<float>(normalize ? (G - weighted / total) / total : G);
    }
  }
  return grad;
}

Tensor sinkhorn_balance(const Tensor& logits, int64_t iterations, const std::vector<uint8_t>* token_mask) {
  check_matrix(logits, "sinkhorn_balance", "logits");
  const int64_t T = logits.size(0), X = logits.size(1);
  check_mask(token_mask, T, "sinkhorn_balance");
  const int64_t counted = unmasked_count(T, token_mask);
  Tensor balanced({T, X});
  if (counted == 0) return balanced;
  // M'[t, j] = exp(logits[t, j] + row[t] + column[j]); each step sets one set of log-scales exactly.
  std::vector<double> row(static_cast<size_t>(T), 0.0), column(static_cast<size_t>(X), 0.0);
  const double column_target = std::log(static_cast<double>(counted) / static_cast<double>(X));
  std::vector<double> terms(static_cast<size_t>(std::max(T, X)));
  auto log_sum_exp = [](const std::vector<double>& values, size_t count) {
    double top = -INFINITY;
    for (size_t i = 0; i < count; ++i) top = std::max(top, values[i]);
    double total = 0;
    for (size_t i = 0; i < count; ++i) total += std::exp(values[i] - top);
    return top + std::log(total);
  };
  for (int64_t iteration = 0; iteration < iterations; ++iteration) {
    // rows: Σ_j M'[t, j] = 1
    for (int64_t t = 0; t < T; ++t) {
      if (!unmasked(token_mask, t)) continue;
      for (int64_t j = 0; j < X; ++j) terms[static_cast<size_t>(j)] = logits.data()[t * X + j] + column[j];
      row[static_cast<size_t>(t)] = -log_sum_exp(terms, static_cast<size_t>(X));
    }
    // columns: Σ_t M'[t, j] = T / X over the unmasked rows
    for (int64_t j = 0; j < X; ++j) {
      size_t count = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (unmasked(token_mask, t)) terms[count++] = logits.data()[t * X + j] + row[static_cast<size_t>(t)];
      }
      column[static_cast<size_t>(j)] = column_target - log_sum_exp(terms, count);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    if (!unmasked(token_mask, t)) continue;
    for (int64_t j = 0; j < X; ++j) {
      balanced.data()[t * X + j] = static_cast<float>(
          std::exp(logits.data()[t * X + j] + row[static_cast<size_t>(t)] + column[static_cast<size_t>(j)]));
    }
  }
  return balanced;
}

std::vector<std::vector<int64_t>> top_tokens(const Tensor& scores, int64_t capacity,
                                             const std::vector<uint8_t>* token_mask) {
  check_matrix(scores, "top_tokens", "scores");
  const int64_t T = scores.size(0), X = scores.size(1);
  check_mask(token_mask, T, "top_tokens");
  std::vector<std::vector<int64_t>> chosen(static_cast<size_t>(X));
  std::vector<int64_t> candidates;
  for (int64_t t = 0; t < T; ++t) {
    if (unmasked(token_mask, t)) candidates.push_back(t);
  }
  const size_t take = static_cast<size_t>(std::min<int64_t>(std::max<int64_t>(capacity, 0),
                                                            static_cast<int64_t>(candidates.size())));
  for (int64_t j = 0; j < X; ++j) {
    std::vector<int64_t> order = candidates;
    // best first: the larger score, then the lower token index
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(take), order.end(),
                      [&](int64_t a, int64_t b) {
                        const float sa = scores.data()[a * X + j], sb = scores.data()[b * X + j];
                        return sa > sb || (sa == sb && a < b);
                      });
    order.resize(take);
    chosen[static_cast<size_t>(j)] = std::move(order);
  }
  return chosen;
}

double normalized_router_entropy(const Tensor& probs, const std::vector<uint8_t>* token_mask) {
  check_matrix(probs, "normalized_router_entropy", "probs");
  const int64_t T = probs.size(0), X = probs.size(1);
  const int64_t counted = unmasked_count(T, token_mask);
  if (X < 2 || counted == 0) return 0.0;
  double total = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (!unmasked(token_mask, t)) continue;
    for (int64_t j = 0; j < X; ++j) {
      const double p = probs.data()[t * X + j];
      if (p > 0) total -= p * std::log(p);
    }
  }
  return total / counted / std::log(static_cast<double>(X));
}

}  // namespace mr1
