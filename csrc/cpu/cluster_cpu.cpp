// Agglomerative task clustering on a T x T similarity matrix (T is small: the tasks).
// Repeatedly merges the most similar pair of clusters (first pair in row-major order on
// ties, so the result is deterministic) until n_groups remain or the best linkage similarity
// falls below threshold. Linkage: single = max, complete = min, average = size-weighted mean
// (UPGMA) of the member similarities, maintained with the Lance-Williams update.
#include <limits>
#include <vector>

#include "cpu/cpu_ops.h"

namespace fastmtl::cpu {
namespace {

enum class Linkage { kSingle, kComplete, kAverage };

Linkage parse_linkage(const std::string& name) {
  if (name == "single") return Linkage::kSingle;
  if (name == "complete") return Linkage::kComplete;
  TORCH_CHECK(name == "average", "fastmtl: linkage must be 'single', 'complete' or 'average', got '", name, "'");
  return Linkage::kAverage;
}

double merged_similarity(Linkage linkage, double s_a, double s_b, int64_t size_a, int64_t size_b) {
  switch (linkage) {
    case Linkage::kSingle:
      return std::max(s_a, s_b);
    case Linkage::kComplete:
      return std::min(s_a, s_b);
    case Linkage::kAverage:
      break;
  }
  return (static_cast<double>(size_a) * s_a + static_cast<double>(size_b) * s_b) / static_cast<double>(size_a + size_b);
}

}  // namespace

at::Tensor cluster_tasks_cpu(const at::Tensor& similarity, std::optional<int64_t> n_groups,
                             std::optional<double> threshold, const std::string& linkage_name) {
  TORCH_CHECK(similarity.dim() == 2 && similarity.size(0) == similarity.size(1) && similarity.size(0) > 0,
              "fastmtl: similarity must be a non-empty square [T, T] matrix, got shape ", similarity.sizes());
  TORCH_CHECK(n_groups.has_value() != threshold.has_value(), "fastmtl: give exactly one of n_groups and threshold");
  const int64_t T = similarity.size(0);
  TORCH_CHECK(!n_groups.has_value() || (*n_groups >= 1 && *n_groups <= T), "fastmtl: n_groups must be in [1, ", T,
              "], got ", n_groups.value_or(0));
  const Linkage linkage = parse_linkage(linkage_name);
  const at::Tensor S = similarity.to(at::kDouble).contiguous();
  std::vector<double> sim(S.const_data_ptr<double>(), S.const_data_ptr<double>() + T * T);
  std::vector<int64_t> cluster_of(T), size(T, 1);
  std::vector<bool> active(T, true);
  for (int64_t t = 0; t < T; ++t) cluster_of[t] = t;  // a cluster is named by its first member

  for (int64_t groups = T; groups > 1; --groups) {
    if (n_groups.has_value() && groups <= *n_groups) break;
    int64_t best_a = -1, best_b = -1;
    double best = -std::numeric_limits<double>::infinity();
    for (int64_t a = 0; a < T; ++a) {
      if (!active[a]) continue;
      for (int64_t b = a + 1; b < T; ++b) {
        if (active[b] && (best_a < 0 || sim[a * T + b] > best)) {
          best = sim[a * T + b];
          best_a = a;
          best_b = b;
        }
      }
    }
    if (threshold.has_value() && !(best >= *threshold)) break;
    for (int64_t k = 0; k < T; ++k) {
      if (!active[k] || k == best_a || k == best_b) continue;
      const double merged = merged_similarity(linkage, sim[best_a * T + k], sim[best_b * T + k], size[best_a], size[best_b]);
      sim[best_a * T + k] = sim[k * T + best_a] = merged;
    }
    size[best_a] += size[best_b];
    active[best_b] = false;
    for (int64_t t = 0; t < T; ++t) {
      if (cluster_of[t] == best_b) cluster_of[t] = best_a;
    }
  }
  // Labels 0, 1, ... in order of each group's first task.
  at::Tensor labels = at::empty({T}, similarity.options().dtype(at::kLong).device(at::kCPU));
  int64_t* out = labels.data_ptr<int64_t>();
  std::vector<int64_t> label_of_cluster(T, -1);
  int64_t next = 0;
  for (int64_t t = 0; t < T; ++t) {
    int64_t& label = label_of_cluster[cluster_of[t]];
    if (label < 0) label = next++;
    out[t] = label;
  }
  return labels;
}

}  // namespace fastmtl::cpu
