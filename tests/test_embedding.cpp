// Token embedding: a hand-worked lookup and scatter-add, a double loop on random ids, backward against central
// finite differences, and the errors for bad shapes and ids.
#include "kernels/embedding.h"

#include <functional>
#include <random>
#include <string>
#include <utility>

#include "tests/test_util.h"

namespace mr1::test {
namespace {

struct EmbeddingConfig {
  int64_t batch, length, vocab_size, features;
};
// One token, odd sizes, a vocabulary smaller than the sequence (ids repeat), and one above the threading
// threshold (16384 values), which is left out of the finite differences.
const EmbeddingConfig kConfigs[] = {{1, 1, 1, 3}, {2, 5, 7, 3}, {3, 4, 2, 5}, {4, 64, 50, 65}};

std::vector<int32_t> random_ids(size_t count, int64_t vocab_size, uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::uniform_int_distribution<int32_t> uniform(0, static_cast<int32_t>(vocab_size - 1));
  std::vector<int32_t> ids(count);
  for (int32_t& id : ids) id = uniform(generator);
  return ids;
}

// out[t] = table[ids[t]], in double.
std::vector<double> embedding_reference(const std::vector<int32_t>& ids, const std::vector<double>& table,
                                        int64_t features) {
  std::vector<double> out;
  for (int32_t id : ids) out.insert(out.end(), table.begin() + id * features, table.begin() + (id + 1) * features);
  return out;
}

TEST_CASE("embedding: a hand-worked lookup and scatter-add") {
  // table (3, 2) = [[0, 1], [10, 11], [20, 21]], ids [2, 0, 2] (B 1, L 3) → [[20, 21], [0, 1], [20, 21]].
  const Tensor table = Tensor::from({3, 2}, {0, 1, 10, 11, 20, 21});
  const std::vector<int32_t> ids = {2, 0, 2};
  const Tensor out = embedding_forward(ids, 1, 3, table);
  CHECK(out.shape() == Shape{1, 3, 2});
  require_close(out, {20, 21, 0, 1, 20, 21}, 0, 0, "out");  // copies are exact
  // grad_out = [[1, 2], [3, 4], [5, 6]]: row 2 gets [1 + 5, 2 + 6], row 0 gets [3, 4], row 1 nothing.
  const Tensor grad = embedding_backward(Tensor::from({1, 3, 2}, {1, 2, 3, 4, 5, 6}), ids, 3);
  require_close(grad, {3, 4, 0, 0, 6, 8}, 0, 0, "dL/dtable");  // sums of small integers are exact
}

TEST_CASE("embedding: forward matches a double loop and backward matches finite differences") {
  uint64_t seed = 600;
  for (const EmbeddingConfig& config : kConfigs) {
    INFO("B " << config.batch << ", L " << config.length << ", V " << config.vocab_size << ", D " << config.features);
    const Tensor table = random_tensor({config.vocab_size, config.features}, ++seed);
    const std::vector<int32_t> ids = random_ids(config.batch * config.length, config.vocab_size, ++seed);
    const Tensor out = embedding_forward(ids, config.batch, config.length, table);
    CHECK(out.shape() == Shape{config.batch, config.length, config.features});
    require_close(out, embedding_reference(ids, to_double(table), config.features), 0, 0, "out");  // exact copies
    if (table.numel() * static_cast<int64_t>(ids.size()) > 100000) continue;  // finite differences too slow

    const Tensor grad_out = random_tensor(out.shape(), ++seed);
    const std::vector<double> weights = to_double(grad_out);
    // Sums of at most B·L = 12 float32 values of size <= 1 against exact (linear) differences: a few ulps of 12.
    const auto loss = [&](const std::vector<double>& v) {
      return weighted_sum(embedding_reference(ids, v, config.features), weights);
    };
    require_close(embedding_backward(grad_out, ids, config.vocab_size), finite_difference(loss, to_double(table)), 1e-6,
                  0, "dL/dtable");
  }
}

TEST_CASE("embedding rejects ids out of range, naming the id, its position and V") {
  const Tensor table({5, 2});
  const std::vector<int32_t> ids = {0, 1, 2, 7};  // B 2, L 2: id 7 sits at position 3 = (b 1, l 1)
  for (const std::string& message :
       {thrown_message<std::out_of_range>([&] { embedding_forward(ids, 2, 2, table); }), thrown_message<std::out_of_range>([&] {
          embedding_backward(Tensor({2, 2, 2}), ids, 5);
        })}) {
    CHECK_THAT(message,
               Catch::Contains("token id 7") && Catch::Contains("position 3 (b 1, l 1)") && Catch::Contains("[0, 5)"));
  }
  CHECK_THAT(thrown_message<std::out_of_range>([&] { embedding_forward({-1}, 1, 1, table); }), Catch::Contains("token id -1"));
}

TEST_CASE("embedding rejects wrong shapes, naming the argument") {
  const Tensor table({5, 2});
  const std::vector<int32_t> ids = {0, 1, 2};
  const std::vector<std::pair<const char*, std::function<void()>>> calls{
      {"embedding_forward: ids", [&] { embedding_forward(ids, 2, 2, table); }},
      {"embedding_forward: table", [&] { embedding_forward(ids, 1, 3, Tensor({10})); }},
      {"embedding_backward: ids",
       [&] {
         embedding_backward(Tensor({2, 2, 2}), ids, 5);
       }},
      {"embedding_backward: grad_out",
       [&] {
         embedding_backward(Tensor({3, 2}), ids, 5);
       }},
  };
  require_shape_errors(calls);
}

}  // namespace
}  // namespace mr1::test
