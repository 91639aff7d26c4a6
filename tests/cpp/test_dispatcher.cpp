// libfastmtl_ops links against libtorch and registers its operators: call fastmtl::gram,
// fastmtl::pcgrad_weights, fastmtl::gram_rescue and fastmtl::combine_into through the dispatcher
// on small hand-computed cases. Run by CTest.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>

#include "check.h"

int main() {
  try {
    auto& dispatcher = c10::Dispatcher::singleton();
    const auto gram =
        dispatcher.findSchemaOrThrow("fastmtl::gram", "").typed<at::Tensor(const at::Tensor&)>();
    const auto pcgrad_weights = dispatcher.findSchemaOrThrow("fastmtl::pcgrad_weights", "")
                                    .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&)>();

    // G = [[1, 2, 0], [-1, 1, 3]]: K = [[5, 1], [1, 11]], by hand.
    const at::Tensor G = at::tensor({1.0, 2.0, 0.0, -1.0, 1.0, 3.0}, at::kDouble).view({2, 3});
    const at::Tensor K = gram.call(G);
    EXPECT(K.scalar_type() == at::kDouble && K.dim() == 2 && K.size(0) == 2 && K.size(1) == 2);
    const double expected[4] = {5, 1, 1, 11};
    for (int e = 0; e < 4; ++e) EXPECT(K.view({4})[e].item<double>() == expected[e]);

    // float32 input -> float32 Gram; a transposed (column-strided) input takes the copy path.
    const at::Tensor K32 = gram.call(G.to(at::kFloat).t().contiguous().t());
    EXPECT(K32.scalar_type() == at::kFloat);
    EXPECT(at::allclose(K32.to(at::kDouble), K));

    // g1 = (1, 0), g2 = (-1, 1): K = [[1, -1], [-1, 2]], PCGrad weights w = (2, 1.5).
    const at::Tensor H = at::tensor({1.0, 0.0, -1.0, 1.0}, at::kDouble).view({2, 2});
    const at::Tensor w = pcgrad_weights.call(gram.call(H), std::nullopt);
    EXPECT(w.dim() == 1 && w.size(0) == 2);
    EXPECT(w[0].item<double>() == 2.0 && w[1].item<double>() == 1.5);

    // gram_rescue: a finite K comes back as is, in float64; an overflowed one is recomputed in
    // float64 (4e19^2 * 3 = 4.8e39 > float32's 3.4e38; these small multiples of powers of 2 are exact).
    const auto gram_rescue = dispatcher.findSchemaOrThrow("fastmtl::gram_rescue", "")
                                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
    const at::Tensor K_double = gram_rescue.call(G.to(at::kFloat), K32);
    EXPECT(K_double.scalar_type() == at::kDouble && at::equal(K_double, K));
    const at::Tensor huge = at::full({2, 3}, 4e19, at::kFloat);
    const at::Tensor rescued = gram_rescue.call(huge, gram.call(huge));
    EXPECT(!at::isfinite(gram.call(huge)).all().item<bool>());
    EXPECT(rescued.scalar_type() == at::kDouble && at::isfinite(rescued).all().item<bool>());
    const double h = static_cast<double>(4e19f);
    EXPECT(rescued[0][1].item<double>() == 3 * h * h);

    // combine_into refuses an out that overlaps grads (it would be overwritten while read).
    const auto combine_into = dispatcher.findSchemaOrThrow("fastmtl::combine_into", "")
                                  .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
    const at::Tensor grads = at::ones({2, 3}, at::kFloat);
    bool refused = false;
    try {
      combine_into.call(grads, at::ones({2}, at::kFloat), grads[1]);
    } catch (const c10::Error&) {
      refused = true;
    }
    EXPECT(refused);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s:%d: exception: %s\n", __FILE__, __LINE__, e.what());
    return 1;
  }
  return report("test_dispatcher");
}
