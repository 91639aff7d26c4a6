// Gram pass: one read of G [T, P] -> K = G G^T [T, T].
// Column chunks run in parallel; inside a chunk, tiles of kTileColumns columns are dotted
// row i against four rows j at a time (eight independent FMA chains), so the
// pass stays memory-bound up to T = 16. Tile sums are added into per-chunk double partials,
// which are reduced in chunk order: the result does not depend on the thread count.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"

namespace fastmtl::cpu {
namespace {

// out[j] = x_i . x_j[j] over len elements, for NJ rows j at once: two vector chains per row j,
// 2 * NJ independent FMA chains fed by 2 * (NJ + 1) loads.
template <int NJ, int Bytes, typename acc_t>
FASTMTL_ALWAYS_INLINE void dot_rows(const acc_t* xi, const acc_t* const* xj, int64_t len, acc_t* out) {
  using V = vec<acc_t, Bytes>;
  constexpr int W = Bytes / sizeof(acc_t);
  V acc0[NJ] = {}, acc1[NJ] = {};
  int64_t c = 0;
  for (; c + 2 * W <= len; c += 2 * W) {
    const V a0 = load_vec<V>(xi + c), a1 = load_vec<V>(xi + c + W);
    for (int j = 0; j < NJ; ++j) {
      acc0[j] += a0 * load_vec<V>(xj[j] + c);
      acc1[j] += a1 * load_vec<V>(xj[j] + c + W);
    }
  }
  for (int j = 0; j < NJ; ++j) {
    const V both = acc0[j] + acc1[j];
    acc_t s = 0;
    for (int l = 0; l < W; ++l) s += both[l];
    for (int64_t t = c; t < len; ++t) s += xi[t] * xj[j][t];
    out[j] = s;
  }
}

template <int Bytes, typename scalar_t>
FASTMTL_ALWAYS_INLINE void gram_chunk(const scalar_t* G, int64_t T, int64_t row_stride, int64_t begin, int64_t end,
                                      double* partial) {
  using acc_t = acc_type<scalar_t>;
  constexpr bool kConvert = !std::is_same<scalar_t, acc_t>::value;
  std::vector<acc_t> converted(kConvert ? T * kTileColumns : 0);
  std::vector<const acc_t*> rows(T);
  acc_t dots[4];
  for (int64_t c0 = begin; c0 < end; c0 += kTileColumns) {
    const int64_t len = std::min(kTileColumns, end - c0);
    for (int64_t i = 0; i < T; ++i) {
      const scalar_t* src = G + i * row_stride + c0;
      if constexpr (kConvert) {
        acc_t* dst = converted.data() + i * kTileColumns;
        for (int64_t t = 0; t < len; ++t) dst[t] = to_acc<acc_t>(src[t]);
        rows[i] = dst;
      } else {
        rows[i] = src;
      }
    }
    for (int64_t i = 0; i < T; ++i) {
      int64_t j = i;
      for (; j + 4 <= T; j += 4) {
        dot_rows<4, Bytes>(rows[i], &rows[j], len, dots);
        for (int k = 0; k < 4; ++k) partial[i * T + j + k] += dots[k];
      }
      const int64_t rest = T - j;
      if (rest == 3) dot_rows<3, Bytes>(rows[i], &rows[j], len, dots);
      if (rest == 2) dot_rows<2, Bytes>(rows[i], &rows[j], len, dots);
      if (rest == 1) dot_rows<1, Bytes>(rows[i], &rows[j], len, dots);
      for (int64_t k = 0; k < rest; ++k) partial[i * T + j + k] += dots[k];
    }
  }
}

}  // namespace

at::Tensor gram_cpu(const at::Tensor& grads_in) {
  check_task_matrix(grads_in);
  const at::Tensor grads = rows_contiguous(grads_in);
  const int64_t T = grads.size(0), P = grads.size(1);
  // At most kMaxChunks work items (each holds a T x T double partial), sized from P alone so
  // the reduction order, and the bits, never depend on the thread count.
  constexpr int64_t kMaxChunks = 64;
  const int64_t chunk_columns =
      std::max(kChunkColumns, (P + kMaxChunks * kTileColumns - 1) / (kMaxChunks * kTileColumns) * kTileColumns);
  const int64_t chunks = (P + chunk_columns - 1) / chunk_columns;
  std::vector<double> partials(chunks * T * T, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(), "fastmtl_gram_cpu", [&] {
    const scalar_t* G = grads.const_data_ptr<scalar_t>();
    const int64_t row_stride = grads.stride(0);
    at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
      for (int64_t chunk = first; chunk < last; ++chunk) {
        const int64_t begin = chunk * chunk_columns, end = std::min(P, begin + chunk_columns);
        double* partial = partials.data() + chunk * T * T;
        run_best_isa([&](auto isa) FASTMTL_KERNEL_BODY {
          gram_chunk<decltype(isa)::kVectorBytes>(G, T, row_stride, begin, end, partial);
        });
      }
    });
  });
  // Reduce chunks in order, then mirror the upper triangle.
  std::vector<double> total(T * T, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t e = 0; e < T * T; ++e) total[e] += partials[chunk * T * T + e];
  }
  const auto out_dtype = grads.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor K = at::empty({T, T}, grads.options().dtype(out_dtype));
  AT_DISPATCH_FLOATING_TYPES(out_dtype, "fastmtl_gram_cpu_out", [&] {
    scalar_t* k = K.data_ptr<scalar_t>();
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = i; j < T; ++j) k[i * T + j] = k[j * T + i] = static_cast<scalar_t>(total[i * T + j]);
    }
  });
  return K;
}

at::Tensor gram_rescue_cpu(const at::Tensor& grads, const at::Tensor& gram) {
  check_gram_rescue_inputs(grads, gram);
  const int64_t T = grads.size(0);
  at::Tensor out = at::empty({T, T}, gram.options().dtype(at::kDouble));
  out.copy_(gram);
  if (!at::isfinite(gram).all().item<bool>()) {  // a host read of a CPU tensor: no device sync
    const at::Tensor X = grads.to(at::kDouble);
    const at::Tensor K = at::mm(X, X.t());
    out.copy_(at::triu(K) + at::triu(K, 1).t());  // exactly symmetric, like the Gram kernels
  }
  return out;
}

}  // namespace fastmtl::cpu
