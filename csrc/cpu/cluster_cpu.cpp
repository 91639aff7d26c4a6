// Agglomerative task clustering on a T x T similarity matrix.
// Repeatedly merges the most similar pair of clusters (first pair in row-major order of the
// upper triangle on ties, so the result is deterministic) until n_groups remain or the best
// linkage similarity falls below threshold. Linkage: single = max, complete = min, average =
// size-weighted mean (UPGMA) of the member similarities, maintained with the Lance-Williams update.
//
// A cluster is named by its first task. Each active cluster a keeps its best partner: the
// active b > a of largest similarity (the smallest such b on ties). The first row holding the
// largest best value then gives exactly the row-major first best pair, in O(T) per merge
// instead of an O(T^2) scan. After merging b into a, only row a and the rows whose best partner
// was a or b can lose their best; every other row k < a just compares its new similarity to a.
// Expected O(T^2) overall (O(T^3) only if most rows keep pointing at the merged clusters).
#include <utility>
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

// The reference (python/fastmtl/reference.py) evaluates the same expressions: bitwise-equal merges.
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

class Clustering {
 public:
  Clustering(const double* similarity, int64_t T)
      : T_(T), sim_(similarity, similarity + T * T), active_(T, true), size_(T, 1), partner_(T, -1), best_(T) {
    for (int64_t a = 0; a < T_; ++a) refresh(a);
  }

  // The row-major first pair of largest similarity, as (a, b); a < 0 when fewer than two remain.
  std::pair<int64_t, int64_t> best_pair(double& value) const {
    int64_t a = -1;
    for (int64_t k = 0; k < T_; ++k) {
      if (active_[k] && partner_[k] >= 0 && (a < 0 || best_[k] > best_[a])) a = k;
    }
    value = a < 0 ? 0.0 : best_[a];
    return {a, a < 0 ? -1 : partner_[a]};
  }

  void merge(int64_t a, int64_t b, Linkage linkage) {
    for (int64_t k = 0; k < T_; ++k) {
      if (!active_[k] || k == a || k == b) continue;
      const double merged = merged_similarity(linkage, sim_[a * T_ + k], sim_[b * T_ + k], size_[a], size_[b]);
      sim_[a * T_ + k] = sim_[k * T_ + a] = merged;
    }
    size_[a] += size_[b];
    active_[b] = false;
    partner_[b] = -1;
    for (int64_t k = 0; k < b; ++k) {
      if (!active_[k]) continue;
      if (k == a || partner_[k] == a || partner_[k] == b) {
        refresh(k);  // its best may have dropped or left
      } else if (k < a) {
        const double s = sim_[k * T_ + a];
        if (s > best_[k] || (s == best_[k] && a < partner_[k])) {
          best_[k] = s;
          partner_[k] = a;
        }
      }
    }
  }

 private:
  // Row a's best partner: the first active b > a of largest similarity (-1 if none).
  void refresh(int64_t a) {
    partner_[a] = -1;
    for (int64_t b = a + 1; b < T_; ++b) {
      if (active_[b] && (partner_[a] < 0 || sim_[a * T_ + b] > best_[a])) {
        best_[a] = sim_[a * T_ + b];
        partner_[a] = b;
      }
    }
  }

  int64_t T_;
  std::vector<double> sim_;
  std::vector<bool> active_;
  std::vector<int64_t> size_, partner_;
  std::vector<double> best_;
};

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
  // NaN compares false both ways and would make the merge order depend on the scan order.
  TORCH_CHECK(at::isfinite(S).all().item<bool>(), "fastmtl: similarity contains NaN or Inf");
  Clustering clustering(S.const_data_ptr<double>(), T);
  std::vector<int64_t> cluster_of(T);
  for (int64_t t = 0; t < T; ++t) cluster_of[t] = t;  // a cluster is named by its first task

  for (int64_t groups = T; groups > 1; --groups) {
    if (n_groups.has_value() && groups <= *n_groups) break;
    double best = 0.0;
    const auto [a, b] = clustering.best_pair(best);
    if (threshold.has_value() && !(best >= *threshold)) break;
    clustering.merge(a, b, linkage);
    for (int64_t t = 0; t < T; ++t) {
      if (cluster_of[t] == b) cluster_of[t] = a;
    }
  }
  // Labels 0, 1, ... in order of each group's first task.
  at::Tensor labels = at::empty({T}, similarity.options().dtype(at::kLong));
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
