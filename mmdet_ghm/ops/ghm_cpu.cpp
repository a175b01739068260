// GHM-C's and GHM-R's passes on the CPU, fused; mmdet_ghm/ops/native_passes.py calls them
// through ctypes (a plain C ABI: no Python or torch headers, a second to compile).
//
// The one operation whose bits decide the bins and that is not correctly rounded is PyTorch's:
// GHM-C takes s = sigmoid(x), GHM-R the root sqrt(d * d + mu^2) from PyTorch's own kernels (no
// exp or sqrt written here would round like them). Everything else is IEEE float32 operations in
// PyTorch's order, or float64:
//  - the bin: mmdet_ghm.binning.unit_interval_slots, the same float64 steps;
//  - GHM-C's loss: BCE = relu(x) - x t - log(1 - q), q = sigmoid(-|x|) = min(s, 1 - s); for
//    q >= 2^-12, 1 - q is exact in float64 and the logs of a slot are summed as the log of the
//    product of these factors, kept as mantissa and exponent (no log per element, no
//    underflow); smaller q add the series q + q^2 / 2 (in float32: ~1e-7 relative);
//  - elements are counted in blocks of BLOCK whose sums are combined in block order: the results
//    do not depend on the number of threads.
// Compiled with -ffp-contract=off (no FMA may change a rounding), for the machine it runs on.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

// Small enough that GHM-R's N x 4 (some 200k elements: 13 blocks) spreads over a few threads.
constexpr int64_t BLOCK = 1 << 14;
// A block is walked in tiles: a branch-free (vectorizable) loop forms each element's slot and
// loss terms into tile buffers, then a scalar loop adds them to the slot accumulators.
constexpr int64_t TILE = 1024;
// Consecutive elements go to SPREAD copies of the accumulators, so that a run of elements in
// one slot (most are easy negatives) does not wait on one accumulator's latency.
constexpr int SPREAD = 8;
// A product of factors 1 - q >= 1/2 is scaled back up, after each tile, before it can become
// subnormal (a tile multiplies it by 2^-(TILE / SPREAD) at least).
constexpr double RESCALE_BELOW = 0x1p-500, RESCALE = 0x1p500;
constexpr int64_t RESCALE_EXP = 500;
constexpr double LN2 = 0.693147180559945309417232121458176568;
constexpr uint8_t LEFT_OUT = 255;  // a tile slot the scalar loop skips (bins <= 253)

struct Problem {
    int64_t n, cols;
    const float *x, *s, *t;       // logits, sigmoid, soft target (or null: every t = 0)
    const uint8_t *valid;         // 1 where the weight is > 0 (or null: all valid)
    int valid_per_row;            // valid has one entry per row (else per element)
    int bins;
    float last_edge;              // g >= last_edge (or NaN): slot bins + 1 (soft targets only)
};

// mmdet's bin of g in [0, 1] for its edges float32(i / bins), as the slot 1 + bin: floor((g +
// ulp(g) / 2) * bins) + 1 in float64 (mmdet_ghm.binning.unit_interval_slots), at most bins.
inline int unit_slot(double g, int bins) {
    int64_t bits;
    std::memcpy(&bits, &g, sizeof bits);
    bits += int64_t(1) << 28;  // half a float32 ulp: float64 has 29 more mantissa bits
    std::memcpy(&g, &bits, sizeof g);
    return std::min(static_cast<int>(g * bins), bins - 1) + 1;
}

// Hard targets, g = s <= 1: a NaN g gives slot 1, as in PyTorch.
inline uint8_t hard_slot(float g, int bins) {
    return static_cast<uint8_t>(unit_slot(g == g ? g : 0.0f, bins));
}

// Soft targets: g >= last_edge (or NaN) is outside every bin, slot bins + 1.
inline uint8_t soft_slot(float g, int bins, float last_edge) {
    const bool inside = g < last_edge;
    const int slot = unit_slot(inside ? g : 0.0f, bins);
    return static_cast<uint8_t>(inside ? slot : bins + 1);
}

// slot[j] = 0 where the element is invalid: its weight (GHM-R) or validity byte (GHM-C) is
// not > 0 (a NaN weight too, as mmdet's label_weight > 0).
template <typename W>
inline void mask_invalid(uint8_t *__restrict slot, const W *__restrict w, int64_t len) {
    for (int64_t j = 0; j < len; ++j) slot[j] = w[j] > 0 ? slot[j] : 0;
}

// Slots of elements [a, a + len) into slot[0 .. len): binned, then 0 where invalid.
void tile_slots(const Problem &p, int64_t a, int64_t len, uint8_t *__restrict slot) {
    const int bins = p.bins;
    const float last_edge = p.last_edge;
    const float *__restrict s = p.s + a;
    if (p.t) {
        const float *__restrict t = p.t + a;
        for (int64_t j = 0; j < len; ++j) {
            slot[j] = soft_slot(std::fabs(s[j] - t[j]), bins, last_edge);
        }
    } else {
        for (int64_t j = 0; j < len; ++j) slot[j] = hard_slot(s[j], bins);
    }
    if (!p.valid) return;
    if (!p.valid_per_row) return mask_invalid(slot, p.valid + a, len);
    for (int64_t row = a / p.cols, j = 0; j < len; ++row) {  // the row segments of the tile
        const int64_t row_end = std::min((row + 1) * p.cols - a, len);
        if (!p.valid[row]) std::memset(slot + j, 0, row_end - j);
        j = row_end;
    }
}

// A slot's accumulators in one block: element count, sum of relu(x) - x t, and the product of
// the factors 1 - q as mantissa * 2^exponent.
struct SlotSums {
    int64_t count = 0, exponent = 0;
    double linear = 0.0, mantissa = 1.0;
};

// One tile's BCE terms: lin = relu(x) - x t (+ the series of small q), factor = 1 - q, and
// each element's accumulator index (-1: left out); one loop per case so that each vectorizes.
template <bool HasTarget>
void bce_terms(const float *__restrict x, const float *__restrict s, const float *__restrict t,
               const uint8_t *__restrict slot, int64_t len, int slots, double *__restrict lin,
               double *__restrict factor, int16_t *__restrict index) {
    for (int64_t j = 0; j < len; ++j) {
        // BCE = relu(x) - x t - log(1 - q), q = sigmoid(-|x|) = min(s, 1 - s), with the
        // infinite-x limits for t in {0, 1} (where 0 * inf would be NaN) and NaN kept
        const float xj = x[j], tj = HasTarget ? t[j] : 0.0f, one_minus_s = 1.0f - s[j];
        const double relu = xj > 0.0f ? xj : 0.0, relu_neg = xj < 0.0f ? -xj : 0.0;
        // other t: finite exactly where PyTorch's float32 (1 - t) x + relu(-x) is
        const float torch_order = (1.0f - tj) * xj + static_cast<float>(relu_neg);
        const double l = tj == 0.0f ? relu
                       : tj == 1.0f ? relu_neg
                       : std::isfinite(torch_order) ? relu - static_cast<double>(xj) * tj
                                                    : torch_order;
        const float q = s[j] < one_minus_s ? s[j] : one_minus_s;  // NaN s: NaN q
        // 1 - q is exact in float64 for q >= 2^-29; below 2^-12, -log(1 - q) is q + q^2 / 2
        // (the next term is below float32's resolution)
        const bool tiny = q < 0x1p-12f;
        const float series = tiny ? q + q * q * 0.5f : 0.0f;
        lin[j] = xj == xj ? l + series : xj;
        factor[j] = tiny ? 1.0 : 1.0 - static_cast<double>(q);
        const int k = static_cast<int>(j % SPREAD) * slots + slot[j];
        index[j] = static_cast<int16_t>(slot[j] == LEFT_OUT ? -1 : k);
    }
}

// Block b's slot counts and loss sums into counts[b * slots ...], sums[b * slots ...]; the
// elements of skip (ascending) are left out.
void histogram_block(const Problem &p, const int64_t *skip, const int64_t *skip_end, int64_t b,
                     int64_t *counts, double *sums) {
    const int slots = p.bins + 2;
    std::vector<SlotSums> acc(SPREAD * slots);
    uint8_t slot[TILE];
    int16_t index[TILE];  // into acc; -1: left out
    double lin[TILE], factor[TILE];
    const int64_t block_end = std::min((b + 1) * BLOCK, p.n);
    skip = std::lower_bound(skip, skip_end, b * BLOCK);
    for (int64_t a = b * BLOCK; a < block_end; a += TILE) {
        const int64_t len = std::min(TILE, block_end - a);
        tile_slots(p, a, len, slot);
        for (; skip != skip_end && *skip < a + len; ++skip) slot[*skip - a] = LEFT_OUT;
        if (p.t) {
            bce_terms<true>(p.x + a, p.s + a, p.t + a, slot, len, slots, lin, factor, index);
        } else {
            bce_terms<false>(p.x + a, p.s + a, nullptr, slot, len, slots, lin, factor, index);
        }
        for (int64_t j = 0; j < len; ++j) {
            if (index[j] < 0) continue;
            SlotSums &sum = acc[index[j]];
            ++sum.count;
            sum.linear += lin[j];
            sum.mantissa *= factor[j];
        }
        // a tile multiplies a mantissa by at most TILE / SPREAD factors >= 1/2
        for (SlotSums &sum : acc) {
            if (sum.mantissa < RESCALE_BELOW) {
                sum.mantissa *= RESCALE;
                sum.exponent -= RESCALE_EXP;
            }
        }
    }
    for (int slot_index = 0; slot_index < slots; ++slot_index) {
        int64_t c = 0;
        double total = 0.0;
        for (int copy = 0; copy < SPREAD; ++copy) {
            const SlotSums &sum = acc[copy * slots + slot_index];
            if (!sum.count) continue;
            c += sum.count;
            const double log_product = std::log(sum.mantissa) + sum.exponent * LN2;
            total += sum.linear - log_product;
        }
        counts[b * slots + slot_index] = c;
        sums[b * slots + slot_index] = total;
    }
}

// out[j] = table[slot[j]] for j < len (len <= TILE, slots <= 256 entries): with AVX-512 and at
// most 32 slots one permute per 16 elements, else a load per element (compilers do not
// vectorize a table lookup by themselves).
inline void lookup_slots(const uint8_t *__restrict slot, int64_t len, const float *table,
                         int slots, float *__restrict out) {
    int64_t j = 0;
#ifdef __AVX512F__
    if (slots <= 32) {
        alignas(64) float padded[32] = {};
        std::memcpy(padded, table, slots * sizeof(float));
        const __m512 low = _mm512_load_ps(padded), high = _mm512_load_ps(padded + 16);
        for (; j + 16 <= len; j += 16) {
            const __m512i index = _mm512_cvtepu8_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i *>(slot + j)));
            _mm512_storeu_ps(out + j, _mm512_permutex2var_ps(low, index, high));
        }
    }
#endif
    for (; j < len; ++j) out[j] = table[slot[j]];
}

// The backward of one tile: g = (s - t) * factor in place (see ghmc_grad), scale[j] the
// element's slot scale (lookup_slots); one loop per case so that each vectorizes.
template <bool HasTarget, bool HasGradOut>
void scale_tile_as(float *__restrict g, const float *__restrict t, const float *__restrict go,
                   const uint8_t *__restrict slot, int64_t len, const float *__restrict scale,
                   float go_scale, bool zero_invalid) {
    for (int64_t j = 0; j < len; ++j) {
        float factor = scale[j];
        if (HasGradOut) factor = (go[j] * go_scale) * factor;
        const float diff = HasTarget ? g[j] - t[j] : g[j];
        g[j] = zero_invalid && slot[j] == 0 ? 0.0f : diff * factor;
    }
}

inline void scale_tile(float *g, const float *t, const float *go, const uint8_t *slot,
                       int64_t len, const float *scale, float go_scale, bool zero_invalid) {
    if (t && go) scale_tile_as<true, true>(g, t, go, slot, len, scale, go_scale, zero_invalid);
    else if (t) scale_tile_as<true, false>(g, t, go, slot, len, scale, go_scale, zero_invalid);
    else if (go) scale_tile_as<false, true>(g, t, go, slot, len, scale, go_scale, zero_invalid);
    else scale_tile_as<false, false>(g, t, go, slot, len, scale, go_scale, zero_invalid);
}

// Blocks split over OpenMP threads: linked to libgomp.so.1, which is the runtime PyTorch has
// already loaded, so the passes run on PyTorch's own intra-op threads (a second pool would fight
// them for the cores while they spin after each PyTorch op).
template <typename Fn>
void parallel_blocks(int64_t num_blocks, int threads, Fn fn) {
    threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, num_blocks)));
#pragma omp parallel num_threads(threads)
    {
        const int64_t w = omp_get_thread_num(), count = omp_get_num_threads();
        for (int64_t b = num_blocks * w / count; b < num_blocks * (w + 1) / count; ++b) fn(b);
    }
}

// GHM-R's gradient of elements [0, len): autograd's order through sqrt(d * d + mu_sq), half =
// (factor / (2 root)) * d, grad = half + half; scale and factor as in scale_tile_as.
template <bool HasGradOut>
void asl1_grad_tile(const float *__restrict p, const float *__restrict t,
                    const float *__restrict root, const uint8_t *__restrict slot, int64_t len,
                    const float *__restrict scale, const float *__restrict go,
                    float go_scale, bool zero_invalid, float *__restrict g) {
    for (int64_t j = 0; j < len; ++j) {
        float factor = scale[j];
        if (HasGradOut) factor = (go[j] * go_scale) * factor;
        const float half = (factor / (2.0f * root[j])) * (p[j] - t[j]);
        g[j] = zero_invalid && slot[j] == 0 ? 0.0f : half + half;
    }
}

// GHM-R's slots of one tile, g = |d / root|, then 0 where the weight is not > 0.
void asl1_tile_slots(const float *__restrict p, const float *__restrict t,
                     const float *__restrict root, const float *weight, int bins, int64_t len,
                     uint8_t *__restrict slot) {
    for (int64_t j = 0; j < len; ++j) slot[j] = hard_slot(std::fabs((p[j] - t[j]) / root[j]), bins);
    if (weight) mask_invalid(slot, weight, len);
}

// The blocks' counts and sums, added in block order (the same bits for any thread count).
void sum_blocks(int64_t num_blocks, int slots, const int64_t *block_counts,
                const double *block_sums, int64_t *counts, double *sums) {
    for (int slot = 0; slot < slots; ++slot) {
        counts[slot] = 0;
        sums[slot] = 0.0;
    }
    for (int64_t b = 0; b < num_blocks; ++b) {
        for (int slot = 0; slot < slots; ++slot) {
            counts[slot] += block_counts[b * slots + slot];
            sums[slot] += block_sums[b * slots + slot];
        }
    }
}

}  // namespace

extern "C" {

// The forward: counts (int64, bins + 2) and loss sums (float64, bins + 2) of the elements not in
// skip (ascending flat indices, or null). Slot 0 holds the invalid elements, bins + 1 those
// outside every bin.
void ghmc_histogram(int64_t n, int64_t cols, const float *x, const float *s, const float *t,
                    const uint8_t *valid, int valid_per_row, const int64_t *skip,
                    int64_t num_skip, int bins, float last_edge, int threads, int64_t *counts,
                    double *sums) {
    const Problem p{n, cols, x, s, t, valid, valid_per_row, bins, last_edge};
    const int slots = bins + 2;
    const int64_t num_blocks = (n + BLOCK - 1) / BLOCK;
    std::vector<int64_t> block_counts(num_blocks * slots);
    std::vector<double> block_sums(num_blocks * slots);
    const int64_t *skip_end = skip ? skip + num_skip : nullptr;
    parallel_blocks(num_blocks, threads, [&](int64_t b) {
        histogram_block(p, skip, skip_end, b, block_counts.data(), block_sums.data());
    });
    sum_blocks(num_blocks, slots, block_counts.data(), block_sums.data(), counts, sums);
}

// The backward, in place: grad holds s = sigmoid(x) on entry and (s - t) * factor on return,
// factor = slot_scale[slot], times grad_out[i] * grad_out_scale where grad_out is given
// (reduction='none'), in that order (autograd's in mmdet). zero_invalid: slot 0 gives +0 (its
// elements may hold inf or NaN, whose product with the weight 0 is NaN).
void ghmc_grad(int64_t n, int64_t cols, float *grad, const float *t, const uint8_t *valid,
               int valid_per_row, int bins, float last_edge, const float *slot_scale,
               const float *grad_out, float grad_out_scale, int zero_invalid, int threads) {
    const Problem p{n, cols, nullptr, grad, t, valid, valid_per_row, bins, last_edge};
    parallel_blocks((n + BLOCK - 1) / BLOCK, threads, [&](int64_t b) {
        uint8_t slot[TILE];
        float scale[TILE];
        const int64_t block_end = std::min((b + 1) * BLOCK, n);
        for (int64_t a = b * BLOCK; a < block_end; a += TILE) {
            const int64_t len = std::min(TILE, block_end - a);
            tile_slots(p, a, len, slot);
            lookup_slots(slot, len, slot_scale, bins + 2, scale);
            scale_tile(grad + a, t ? t + a : nullptr, grad_out ? grad_out + a : nullptr, slot,
                       len, scale, grad_out_scale, zero_invalid != 0);
        }
    });
}

// GHM-R (ASL1), step one of the forward: u = d * d + mu_sq, d = pred - target (float32, each
// operation rounded as PyTorch's). PyTorch's sqrt of u (not correctly rounded: its bits decide
// the bins) is the root that the other two passes read.
void ghmr_square(int64_t n, const float *pred, const float *target, float mu_sq, int threads,
                 float *u) {
    parallel_blocks((n + BLOCK - 1) / BLOCK, threads, [&](int64_t b) {
        const int64_t a = b * BLOCK, e = std::min(a + BLOCK, n);
        const float *__restrict p = pred, *__restrict t = target;
        float *__restrict out = u;
        for (int64_t i = a; i < e; ++i) {
            const float d = p[i] - t[i];
            out[i] = d * d + mu_sq;
        }
    });
}

// GHM-R, the forward's pass: g = |d / root|; each element's slot into slot_out (n bytes: the
// backward reads them instead of binning again) and the counts and sums of root - mu per slot.
void ghmr_histogram(int64_t n, const float *pred, const float *target, const float *root,
                    const float *weight, float mu, int bins, int threads, uint8_t *slot_out,
                    int64_t *counts, double *sums) {
    const int slots = bins + 2;
    const int64_t num_blocks = (n + BLOCK - 1) / BLOCK;
    std::vector<int64_t> block_counts(num_blocks * slots);
    std::vector<double> block_sums(num_blocks * slots);
    parallel_blocks(num_blocks, threads, [&](int64_t b) {
        std::vector<int64_t> cnt(SPREAD * slots, 0);
        std::vector<double> sum(SPREAD * slots, 0.0);
        int16_t index[TILE];
        float loss[TILE];
        const int64_t block_end = std::min((b + 1) * BLOCK, n);
        for (int64_t a = b * BLOCK; a < block_end; a += TILE) {
            const int64_t len = std::min(TILE, block_end - a);
            const float *__restrict r = root + a;
            uint8_t *__restrict slot = slot_out + a;
            asl1_tile_slots(pred + a, target + a, r, weight ? weight + a : nullptr, bins, len,
                            slot);
            for (int64_t j = 0; j < len; ++j) {
                loss[j] = r[j] - mu;
                index[j] = static_cast<int16_t>(static_cast<int>(j % SPREAD) * slots + slot[j]);
            }
            for (int64_t j = 0; j < len; ++j) {
                ++cnt[index[j]];
                sum[index[j]] += loss[j];
            }
        }
        for (int slot_index = 0; slot_index < slots; ++slot_index) {
            int64_t c = 0;
            double total = 0.0;
            for (int copy = 0; copy < SPREAD; ++copy) {
                c += cnt[copy * slots + slot_index];
                total += sum[copy * slots + slot_index];
            }
            block_counts[b * slots + slot_index] = c;
            block_sums[b * slots + slot_index] = total;
        }
    });
    sum_blocks(num_blocks, slots, block_counts.data(), block_sums.data(), counts, sums);
}

// GHM-R, the backward (asl1_grad_tile) from the forward's slots; grad_out, zero_invalid as in
// ghmc_grad.
void ghmr_grad(int64_t n, const float *pred, const float *target, const float *root,
               const uint8_t *slot, int slots, const float *slot_scale, const float *grad_out,
               float grad_out_scale, int zero_invalid, int threads, float *grad) {
    parallel_blocks((n + BLOCK - 1) / BLOCK, threads, [&](int64_t b) {
        float scale[TILE];
        const int64_t block_end = std::min((b + 1) * BLOCK, n);
        for (int64_t a = b * BLOCK; a < block_end; a += TILE) {
            const int64_t len = std::min(TILE, block_end - a);
            lookup_slots(slot + a, len, slot_scale, slots, scale);
            if (grad_out) {
                asl1_grad_tile<true>(pred + a, target + a, root + a, slot + a, len, scale,
                                     grad_out + a, grad_out_scale, zero_invalid != 0, grad + a);
            } else {
                asl1_grad_tile<false>(pred + a, target + a, root + a, slot + a, len, scale,
                                      nullptr, grad_out_scale, zero_invalid != 0, grad + a);
            }
        }
    });
}

// Everything between the histogram and the backward, for one rank without bias correction:
// GradientDensity.update's rounding (the twin of triton_kernels.ghm_weigh_kernel). The EMA state
// acc / updates (float32, bins) is updated in place unless the call is skipped; slot_weight
// (float32, bins + 2) receives the weights. tot: the normalizer (null: the valid elements,
// numel - counts[0]); poison: a flag byte (or null). For a reduced loss (reduction 1 'mean',
// 2 'sum'), loss and divisor (float32; the divisor 1 for 'sum'). flags[0]: skipped (a valid
// element's loss sum not finite, tot NaN or +inf, or poison); flags[1]: a loss sum was not finite.
void ghm_weigh(int bins, const int64_t *counts, const double *sums, int64_t numel,
               const float *tot_in, const uint8_t *poison, double momentum, double keep,
               float *acc, float *updates, int reduction, float loss_weight, float *slot_weight,
               float *loss, float *divisor, uint8_t *flags) {
    bool non_finite = false;
    for (int slot = 1; slot <= bins + 1; ++slot) non_finite |= !std::isfinite(sums[slot]);
    float tot = tot_in ? *tot_in : static_cast<float>(numel - counts[0]);
    // tot NaN or +inf (GHM-R weights): mmdet's loss is NaN; -inf is clamped to 1, as its max
    const bool skip = non_finite || (poison && *poison) || std::isnan(tot) || tot == INFINITY;
    tot = tot < 1.0f ? 1.0f : tot;  // clamp(min=1); NaN stays NaN
    int nonempty = 0;
    for (int b = 1; b <= bins; ++b) nonempty += counts[b] > 0;
    const float num_nonempty = static_cast<float>(std::max(nonempty, 1));
    double total = 0.0;
    slot_weight[0] = slot_weight[bins + 1] = 0.0f;
    for (int b = 0; b < bins; ++b) {
        const int64_t count = counts[b + 1];
        float weight;
        if (momentum > 0.0) {
            // mmdet: acc = m * acc + (1 - m) * count, the second term formed in float64;
            // its `tot / acc` is reciprocal(acc) * tot
            const float ema = acc[b] * static_cast<float>(momentum) +
                              static_cast<float>(keep * count);
            if (count > 0 && !skip) {
                acc[b] = ema;
                updates[b] += 1.0f;
            }
            weight = (1.0f / acc[b]) * tot;
        } else {
            weight = static_cast<float>(static_cast<double>(tot) / count);
        }
        weight = (count > 0 ? weight : 0.0f) / num_nonempty;
        slot_weight[b + 1] = weight;
        total += sums[b + 1] * weight;
    }
    flags[0] = skip;
    flags[1] = non_finite;
    if (reduction == 0) return;
    // PyTorch's float32 order: (sum / divisor) * loss_weight, divisor = float32(tot + eps)
    *divisor = reduction == 1 ? static_cast<float>(tot + 0x1p-23) : 1.0f;
    const float reduced = (static_cast<float>(total) / *divisor) * loss_weight;
    *loss = skip ? std::nanf("") : reduced;
}

// A reduced loss's gradient factor per slot, in autograd's order in mmdet:
// ((grad_out * loss_weight) / divisor) * slot_weight[slot]; divisor null: none ('sum').
void ghm_slot_scale(int slots, const float *slot_weight, const float *grad_out,
                    float loss_weight, const float *divisor, float *scale) {
    float factor = *grad_out * loss_weight;
    if (divisor) factor = factor / *divisor;
    for (int slot = 0; slot < slots; ++slot) scale[slot] = factor * slot_weight[slot];
}

}  // extern "C"
