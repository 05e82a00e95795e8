// The registered norms: rmsnorm (default), layernorm and none.
#include "blocks/norm_layer.h"

#include "blocks/random.h"
#include "kernels/elementwise.h"
#include "kernels/norm.h"

namespace mr1 {

Registry<NormFactory>& norm_registry() {
  static Registry<NormFactory> registry("norm");
  return registry;
}

Tensor Norm::forward_after_add(Tensor& r, const Tensor& delta, std::unique_ptr<SavedActivations>* saved) {
  r = add(r, delta);
  return forward(r, saved);
}

Tensor Norm::backward(const Tensor& grad_y, const SavedActivations* saved) {
  Tensor grad_x(grad_y.shape(), grad_y.device());
  backward_add(grad_y, saved, grad_x);
  return grad_x;
}

void Norm::backward_add(const Tensor& grad_y, const SavedActivations* saved, Tensor& grad_x) {
  add_inplace(grad_x, backward(grad_y, saved));
}

namespace {

struct RmsNormSaved : SavedActivations {
  Tensor x, inv_rms;
};

class RmsNorm : public Norm {
 public:
  RmsNorm(ParameterStore& parameters, const std::string& prefix, int64_t dim)
      : weight_(parameters.add(prefix + ".weight", {dim}, false)) {}

  Tensor forward(const Tensor& x, std::unique_ptr<SavedActivations>* saved) override {
    Tensor inv_rms;
    Tensor y = rmsnorm_forward(x, weight_.value, &inv_rms);
    keep(x, inv_rms, saved);
    return y;
  }

  Tensor forward_after_add(Tensor& r, const Tensor& delta, std::unique_ptr<SavedActivations>* saved) override {
    Tensor inv_rms, sum;
    Tensor y = rmsnorm_forward_after_add(r, delta, weight_.value, sum, &inv_rms);
    r = sum;
    keep(r, inv_rms, saved);
    return y;
  }

  void backward_add(const Tensor& grad_y, const SavedActivations* saved, Tensor& grad_x) override {
    const auto& keep = static_cast<const RmsNormSaved&>(*saved);
    rmsnorm_backward_accumulate(grad_y, keep.x, weight_.value, keep.inv_rms, weight_.grad, grad_x);
  }

  void initialize(Random&) override { weight_.value.fill(1.0f); }

 private:
  // What the backward needs, when it is wanted.
  static void keep(const Tensor& x, const Tensor& inv_rms, std::unique_ptr<SavedActivations>* saved) {
    if (!saved) return;
    auto kept = std::make_unique<RmsNormSaved>();
    kept->x = x;
    kept->inv_rms = inv_rms;
    *saved = std::move(kept);
  }

  Parameter& weight_;
};

struct LayerNormSaved : SavedActivations {
  Tensor x, mean, inv_std;
};

class LayerNorm : public Norm {
 public:
  LayerNorm(ParameterStore& parameters, const std::string& prefix, int64_t dim)
      : weight_(parameters.add(prefix + ".weight", {dim}, false)),
        bias_(parameters.add(prefix + ".bias", {dim}, false)) {}

  Tensor forward(const Tensor& x, std::unique_ptr<SavedActivations>* saved) override {
    Tensor mean, inv_std;
    Tensor y = layernorm_forward(x, weight_.value, bias_.value, &mean, &inv_std);
    keep(x, mean, inv_std, saved);
    return y;
  }

  Tensor forward_after_add(Tensor& r, const Tensor& delta, std::unique_ptr<SavedActivations>* saved) override {
    Tensor mean, inv_std, sum;
    Tensor y = layernorm_forward_after_add(r, delta, weight_.value, bias_.value, sum, &mean, &inv_std);
    r = sum;
    keep(r, mean, inv_std, saved);
    return y;
  }

  void backward_add(const Tensor& grad_y, const SavedActivations* saved, Tensor& grad_x) override {
    const auto& keep = static_cast<const LayerNormSaved&>(*saved);
    layernorm_backward_accumulate(grad_y, keep.x, weight_.value, keep.mean, keep.inv_std, weight_.grad, bias_.grad,
                                  grad_x);
  }

  void initialize(Random&) override {
    weight_.value.fill(1.0f);
    bias_.value.fill(0.0f);
  }

 private:
  // What the backward needs, when it is wanted.
  static void keep(const Tensor& x, const Tensor& mean, const Tensor& inv_std,
                   std::unique_ptr<SavedActivations>* saved) {
    if (!saved) return;
    auto kept = std::make_unique<LayerNormSaved>();
    kept->x = x;
    kept->mean = mean;
    kept->inv_std = inv_std;
    *saved = std::move(kept);
  }

  Parameter& weight_;
  Parameter& bias_;
};

// The seed's model: no normalisation at all (diverges at depth 6 with random weights).
class Identity : public Norm {
 public:
  Tensor forward(const Tensor& x, std::unique_ptr<SavedActivations>*) override { return x; }
  Tensor backward(const Tensor& grad_y, const SavedActivations*) override { return grad_y; }
};

}  // namespace

void register_norms() {
  auto& registry = norm_registry();
  registry.add("rmsnorm", "x / sqrt(mean(x^2) + 1e-5) * weight (default)",
               [](ParameterStore& p, const std::string& prefix, int64_t dim) -> std::unique_ptr<Norm> {
                 return std::make_unique<RmsNorm>(p, prefix, dim);
               });
  registry.add("layernorm", "(x - mean) / sqrt(var + 1e-5) * weight + bias",
               [](ParameterStore& p, const std::string& prefix, int64_t dim) -> std::unique_ptr<Norm> {
                 return std::make_unique<LayerNorm>(p, prefix, dim);
               });
  registry.add("none", "no normalisation (the seed's model; diverges when deep)",
               [](ParameterStore&, const std::string&, int64_t) -> std::unique_ptr<Norm> {
                 return std::make_unique<Identity>();
               });
}

}  // namespace mr1
