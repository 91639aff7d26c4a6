// libfastmtl_ops links against libtorch and registers its operators: call fastmtl::gram and
// fastmtl::pcgrad_weights through the dispatcher on a small hand-computed case. Run by CTest.
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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s:%d: exception: %s\n", __FILE__, __LINE__, e.what());
    return 1;
  }
  return report("test_dispatcher");
}
