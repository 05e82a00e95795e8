// A small model built from [model] / [router] TOML text, for the tests of the model and of inference.
#pragma once

#include <memory>
#include <string>

#include "blocks/model.h"
#include "blocks/random.h"
#include "test_util.h"

namespace mr1::test {

struct SmallModel {
  ExperimentFile file;
  ModelConfig config;
  RouterSettings router;
  std::unique_ptr<Model> model;

  // Initialised from seed 1.
  explicit SmallModel(const std::string& text) : file(ExperimentFile::parse(text, "test.toml")) {
    config = read_model_config(file.table("model"));
    router = read_router_settings(file.table("router"));
    model = std::make_unique<Model>(config, router, file.table("router"));
    model->initialize(1);
  }

  // A random input of the model's kind: token ids, or embeddings uniform in [−1, 1).
  ModelInput input(int64_t B, int64_t L, uint64_t seed) const {
    ModelInput input;
    input.batch = B;
    input.length = L;
    Random random(seed);
    if (config.vocab_size > 0) {
      for (int64_t i = 0; i < B * L; ++i) input.tokens.push_back(static_cast<int32_t>(random.below(config.vocab_size)));
    } else {
      input.embeddings = random_tensor({B, L, config.dim}, seed);
    }
    return input;
  }
};

}  // namespace mr1::test
