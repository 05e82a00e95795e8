// CPU routing ops: plain loops over the small (T, X) router matrices.
#include "kernels/routing.h"

#include <cmath>
#include <stdexcept>
#include <string>

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
  for (int64_t t = 0; t < T; ++t) {
    const float* row = scores.data() + t * X;
    int32_t* chosen = index.data() + t * k;
    // Selection by repeated arg-max: k is small, and a strict '>' keeps the lowest index on ties.
    for (int64_t r = 0; r < k; ++r) {
      int32_t best = -1;
      for (int32_t j = 0; j < X; ++j) {
        bool taken = false;
        for (int64_t q = 0; q < r; ++q) taken = taken || chosen[q] == j;
        if (taken) continue;
        if (best < 0 || row[j] > row[best]) best = j;
      }
      chosen[r] = best;
      value[static_cast<size_t>(t * k + r)] = row[best];
    }
  }
}

int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t experts, int64_t min_capacity) {
  if (capacity_factor <= 0) return -1;
  const int64_t scaled = static_cast<int64_t>(std::floor(capacity_factor * static_cast<double>(tokens) /
                                                         static_cast<double>(experts)));
  return std::max(scaled, min_capacity);
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

double load_balance_loss(const Tensor& probs, const std::vector<int32_t>& first_choice,
                         const std::vector<uint8_t>* token_mask, std::vector<double>* fraction,
                         std::vector<double>* mean_probability) {
  check_matrix(probs, "load_balance_loss", "probs");
  const int64_t T = probs.size(0), X = probs.size(1);
  check_mask(token_mask, T, "load_balance_loss");
  std::vector<double> f(static_cast<size_t>(X), 0.0), P(static_cast<size_t>(X), 0.0);
  const int64_t counted = unmasked_count(T, token_mask);
  for (int64_t t = 0; t < T; ++t) {
    if (!unmasked(token_mask, t)) continue;
    f[static_cast<size_t>(first_choice[static_cast<size_t>(t)])] += 1.0;
    for (int64_t j = 0; j < X; ++j) P[static_cast<size_t>(j)] += probs.data()[t * X + j];
  }
  double loss = 0;
  for (int64_t j = 0; j < X; ++j) {
    if (counted > 0) {
      f[static_cast<size_t>(j)] /= static_cast<double>(counted);
      P[static_cast<size_t>(j)] /= static_cast<double>(counted);
    }
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
