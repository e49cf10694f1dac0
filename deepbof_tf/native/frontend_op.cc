// DeepbofLogMel: the whole one-shot front end of deepbof_tf/frontend.py (framing, Hann
// window, real FFT, magnitude, floor, time-frequency AGC, banded mel product, log
// compression) as one TensorFlow CPU kernel.
//
// Why: as core TensorFlow ops the front end is a dozen element-wise passes over each
// clip's [frames, 513] spectrogram, each a separate kernel that reads and writes the
// whole 2.6-MB array through memory (docs/benchmarks.md). Here frames go through in
// blocks of eight, one frame per SIMD lane, and each block's window, FFT, magnitude,
// maximum and AGC analysis happen while it is in L1; the magnitude is written once and
// read once more for the AGC division, the mel product and the log. The FFT is
// ducc0's, the library behind TensorFlow's own `rfft`, from the headers TensorFlow
// ships. Work is split over TensorFlow's intra-op threads in items of 32 frames.
//
// Inputs (deepbof_tf/native/frontend_op.py builds them from a FrontendConfig):
//   waveforms     float32 [B, N]  clip b is waveforms[b, :num_samples[b]]
//   num_samples   int32   [B]     (clamped to [0, N])
//   window        float32 [n_fft]
//   agc_analysis  float32 [bins, bands]  (frontend.fused_frontend_inputs)
//   agc_synthesis float32 [bands, bins]
//   mel           float32 [bins, n_mels] (frontend.mel_filterbank(n_mels))
// Output: log_mel float32 [B, frame_count(N), n_mels] = log10(1 + log_gain · F_mel ·
// S_agc) with the authors' framing (n_fft/2 zeros before each clip, zeros after it);
// frames from frame_count(num_samples[b]) on are 0, as in frontend.compute_features_batch.
//
// Numerics: the same operations as the core-ops graph in another summation order. The
// AGC recursion state_j = max(alpha · state_{j-1}, A_j) runs sequentially in double
// precision (the graph's log-depth scan rounds up to log2(T) times in float32), and the
// floor enters the AGC analysis as F_aᵀS + c · colsum(F_a) instead of F_aᵀ(S + c).
// As in the graph, the AGC's replacement of non-positive envelope values is left out,
// which needs bands that cover every bin (the Python wrapper checks).
// tests/test_frontend_op.py compares kernel and graph.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ducc0/fft/fft1d_impl.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"
#include "unsupported/Eigen/CXX11/Tensor"

// ducc0's one-dimensional plans reference this entry of its thread pool, which
// TensorFlow's libraries keep private. The kernel runs every transform on one thread
// (its parallelism is over chunks of frames), so a serial version is all it needs.
namespace ducc0 {
namespace detail_threading {

void execStatic(size_t nwork, size_t /*nthreads*/, size_t chunksize,
                std::function<void(Scheduler&)> func) {
  class Serial : public Scheduler {
   public:
    Serial(size_t nwork, size_t chunk) : nwork_(nwork), chunk_(chunk ? chunk : nwork) {}
    size_t num_threads() const override { return 1; }
    size_t thread_num() const override { return 0; }
    Range getNext() override {
      if (next_ >= nwork_) return Range();
      const size_t lo = next_;
      next_ = std::min(nwork_, lo + chunk_);
      return Range(lo, next_);
    }

   private:
    size_t nwork_, chunk_, next_ = 0;
  };
  Serial scheduler(nwork, chunksize);
  func(scheduler);
}

}  // namespace detail_threading
}  // namespace ducc0

namespace deepbof {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

// One column of a filterbank matrix as a run of consecutive non-zero rows.
struct Band {
  int64_t first = 0;
  std::vector<float> weights;  // rows first .. first + weights.size() - 1
};

// The columns of a row-major [rows, cols] matrix, each cut to its non-zero run. Zeros
// inside a run are kept (a triangle has none; it makes the product exact either way).
std::vector<Band> ColumnBands(const float* matrix, int64_t rows, int64_t cols) {
  std::vector<Band> bands(cols);
  for (int64_t c = 0; c < cols; ++c) {
    int64_t lo = rows, hi = -1;
    for (int64_t r = 0; r < rows; ++r) {
      if (matrix[r * cols + c] != 0.0f) {
        lo = std::min(lo, r);
        hi = r;
      }
    }
    if (hi < 0) continue;  // an empty column: no weights, its output is 0
    bands[c].first = lo;
    for (int64_t r = lo; r <= hi; ++r) bands[c].weights.push_back(matrix[r * cols + c]);
  }
  return bands;
}

// One SIMD vector of float32 lanes, one frame per lane (8 lanes: AVX2).
using Vec = ducc0::detail_simd::vtp<float, 8>;
constexpr int64_t kLanes = static_cast<int64_t>(Vec::size());

// rows[r] = (a[r][0], ..., a[r][7]) becomes rows[c] = (a[0][c], ..., a[7][c]).
inline void Transpose8x8(__m256* rows) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(rows[i], rows[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(rows[i], rows[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    rows[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    rows[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// Σ_i w_i · x_{first + i} over a band's run of weights, for every lane at once.
Vec Dot(const Band& band, const Vec* x) {
  const float* w = band.weights.data();
  const Vec* v = x + band.first;
  const int64_t n = static_cast<int64_t>(band.weights.size());
  Vec sum(0.0f);
  for (int64_t i = 0; i < n; ++i) sum += Vec(w[i]) * v[i];
  return sum;
}

// Frames of a clip of n samples with the authors' framing: deepbof_tf/framing.py's
// frame_count, ceil(n / hop) + 1 (the op's output shapes are tested against it).
int64_t FrameCount(int64_t n, int64_t hop) { return (n + hop - 1) / hop + 1; }

class DeepbofLogMelOp : public OpKernel {
 public:
  explicit DeepbofLogMelOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("n_fft", &n_fft_));
    OP_REQUIRES_OK(context, context->GetAttr("hop_length", &hop_));
    OP_REQUIRES_OK(context, context->GetAttr("floor_ratio", &floor_ratio_));
    OP_REQUIRES_OK(context, context->GetAttr("alpha_log", &alpha_log_));
    OP_REQUIRES_OK(context, context->GetAttr("agc_epsilon", &agc_epsilon_));
    OP_REQUIRES_OK(context, context->GetAttr("log_gain", &log_gain_));
    OP_REQUIRES_OK(context, context->GetAttr("agc", &agc_));
    OP_REQUIRES(context, n_fft_ > 0 && n_fft_ % 2 == 0,
                InvalidArgument("n_fft must be a positive even number, got ", n_fft_));
    OP_REQUIRES(context, hop_ > 0 && hop_ <= n_fft_,
                InvalidArgument("hop_length must be in (0, n_fft], got ", hop_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& waveforms = context->input(0);
    const Tensor& num_samples = context->input(1);
    const Tensor& window = context->input(2);
    const Tensor& analysis = context->input(3);
    const Tensor& synthesis = context->input(4);
    const Tensor& mel = context->input(5);
    const int64_t bins = n_fft_ / 2 + 1;
    OP_REQUIRES(context, waveforms.dims() == 2,
                InvalidArgument("waveforms must be [batch, samples], got ",
                                waveforms.shape().DebugString()));
    const int64_t batch = waveforms.dim_size(0);
    const int64_t length = waveforms.dim_size(1);
    OP_REQUIRES(context, num_samples.dims() == 1 && num_samples.dim_size(0) == batch,
                InvalidArgument("num_samples must be [batch], got ",
                                num_samples.shape().DebugString()));
    OP_REQUIRES(context, window.dims() == 1 && window.dim_size(0) == n_fft_,
                InvalidArgument("window must be [n_fft]"));
    OP_REQUIRES(context, analysis.dims() == 2 && analysis.dim_size(0) == bins,
                InvalidArgument("agc_analysis must be [n_fft / 2 + 1, bands]"));
    const int64_t bands = analysis.dim_size(1);
    OP_REQUIRES(context, synthesis.dims() == 2 && synthesis.dim_size(0) == bands &&
                             synthesis.dim_size(1) == bins,
                InvalidArgument("agc_synthesis must be [bands, n_fft / 2 + 1]"));
    OP_REQUIRES(context, mel.dims() == 2 && mel.dim_size(0) == bins,
                InvalidArgument("mel must be [n_fft / 2 + 1, n_mels]"));
    const int64_t n_mels = mel.dim_size(1);
    const int64_t frames = FrameCount(length, hop_);

    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({batch, frames, n_mels}), &output));
    if (batch == 0 || frames == 0) return;

    // Clip b is waveforms[b, :num_samples[b]] (clamped to [0, samples]).
    const auto lengths = num_samples.flat<int32_t>();
    std::vector<int64_t> clip_length(batch), valid(batch);
    for (int64_t b = 0; b < batch; ++b) {
      clip_length[b] = std::clamp<int64_t>(lengths(b), 0, length);
      valid[b] = FrameCount(clip_length[b], hop_);
    }

    // The filterbanks as runs of non-zero weights (built per call: ~0.1 ms).
    const std::vector<Band> analysis_bands =
        ColumnBands(analysis.flat<float>().data(), bins, bands);
    std::vector<float> analysis_colsum(bands, 0.0f);
    for (int64_t c = 0; c < bands; ++c) {
      for (float w : analysis_bands[c].weights) analysis_colsum[c] += w;
    }
    // Synthesis rows (one per AGC band) as runs over the bins.
    std::vector<Band> synthesis_bands;
    {
      const float* s = synthesis.flat<float>().data();
      std::vector<float> transposed(bins * bands);
      for (int64_t c = 0; c < bands; ++c)
        for (int64_t k = 0; k < bins; ++k) transposed[k * bands + c] = s[c * bins + k];
      synthesis_bands = ColumnBands(transposed.data(), bins, bands);
    }
    const std::vector<Band> mel_bands = ColumnBands(mel.flat<float>().data(), bins, n_mels);

    // Frames go through the kernel in blocks of kLanes consecutive frames of one clip,
    // one frame per SIMD lane: every step below is then a vertical vector operation
    // (no horizontal sums), and ducc0 runs the block's FFTs as one vectorized transform.
    // Scratch, per clip and block: the magnitude [bins][lanes] and the AGC bands
    // [bands][lanes] (after the scan: the envelope).
    const int64_t blocks = (frames + kLanes - 1) / kLanes;
    Tensor magnitude_t, bands_t;
    OP_REQUIRES_OK(context, context->allocate_temp(
                                tensorflow::DT_FLOAT,
                                TensorShape({batch, blocks, bins, kLanes}), &magnitude_t));
    OP_REQUIRES_OK(context, context->allocate_temp(
                                tensorflow::DT_FLOAT,
                                TensorShape({batch, blocks, bands, kLanes}), &bands_t));
    Vec* magnitude = reinterpret_cast<Vec*>(magnitude_t.flat<float>().data());
    Vec* band_values = reinterpret_cast<Vec*>(bands_t.flat<float>().data());
    const float* samples = waveforms.flat<float>().data();
    const float* window_data = window.flat<float>().data();
    float* out = output->flat<float>().data();

    constexpr int64_t kBlocksPerItem = 4;  // work items of 4 blocks (32 frames)
    const int64_t items_per_clip = (blocks + kBlocksPerItem - 1) / kBlocksPerItem;
    std::vector<float> item_max(batch * items_per_clip, 0.0f);
    const int64_t n_fft = n_fft_;
    const int64_t hop = hop_;
    auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
    const ducc0::detail_fft::pocketfft_r<float> plan(n_fft);

    // Pass 1: frames (zero outside the clip) times the window, FFT, magnitude, the
    // maximum, and the AGC bands before the floor.
    const int64_t cost1 = kBlocksPerItem * kLanes * n_fft * 30;
    workers->ParallelFor(batch * items_per_clip, cost1, [&](int64_t begin, int64_t end) {
      std::vector<Vec> frame(n_fft), buffer(plan.bufsize());
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / items_per_clip;
        const int64_t block_begin = (item % items_per_clip) * kBlocksPerItem;
        const int64_t block_end = std::min(block_begin + kBlocksPerItem, blocks);
        const float* x = samples + b * length;
        const int64_t clip_samples = clip_length[b];
        Vec peak(0.0f), not_finite(0.0f);
        for (int64_t block = block_begin; block < block_end; ++block) {
          const int64_t j0 = block * kLanes;
          const int64_t lanes = std::clamp<int64_t>(valid[b] - j0, 0, kLanes);
          Vec* s = magnitude + (b * blocks + block) * bins;
          Vec* a = band_values + (b * blocks + block) * bands;
          if (lanes == 0) continue;  // past the clip: never read
          // Frame j holds samples j·hop − n_fft/2 … j·hop + n_fft/2 − 1 of the clip.
          const int64_t first = j0 * hop - n_fft / 2;
          const bool inside = lanes == kLanes && first >= 0 &&
                              first + (kLanes - 1) * hop + n_fft <= clip_samples;
          if (inside && n_fft % kLanes == 0) {
            // Eight frames × eight samples at a time: load a row of each frame, apply the
            // window, transpose the 8 × 8 tile into lanes.
            for (int64_t i = 0; i < n_fft; i += kLanes) {
              const __m256 w = _mm256_loadu_ps(window_data + i);
              __m256 rows[kLanes];
              for (int64_t l = 0; l < kLanes; ++l) {
                rows[l] = _mm256_mul_ps(_mm256_loadu_ps(x + first + l * hop + i), w);
              }
              Transpose8x8(rows);
              for (int64_t l = 0; l < kLanes; ++l) {
                _mm256_storeu_ps(reinterpret_cast<float*>(frame.data() + i + l), rows[l]);
              }
            }
          } else {
            for (int64_t l = 0; l < kLanes; ++l) {
              const int64_t lane_first = first + l * hop;
              float* f = reinterpret_cast<float*>(frame.data()) + l;
              for (int64_t i = 0; i < n_fft; ++i) {
                const int64_t t = lane_first + i;
                f[i * kLanes] = (l < lanes && t >= 0 && t < clip_samples)
                                    ? x[t] * window_data[i] : 0.0f;
              }
            }
          }
          // Half-complex result: r0, r1, i1, ..., r_{n/2 - 1}, i_{n/2 - 1}, r_{n/2}.
          const Vec* r = plan.exec(frame.data(), buffer.data(), 1.0f, true);
          s[0] = (r[0] * r[0]).sqrt();
          for (int64_t k = 1; k < bins - 1; ++k) {
            s[k] = (r[2 * k - 1] * r[2 * k - 1] + r[2 * k] * r[2 * k]).sqrt();
          }
          s[bins - 1] = (r[n_fft - 1] * r[n_fft - 1]).sqrt();
          // Lanes past the clip's last frame hold FFTs of zeros: magnitude 0. A NaN or
          // Inf magnitude makes s − s NaN, which the sum keeps (a maximum would not).
          for (int64_t k = 0; k < bins; ++k) {
            peak = peak.max(s[k]);
            not_finite += s[k] - s[k];
          }
          for (int64_t c = 0; c < bands; ++c) a[c] = Dot(analysis_bands[c], s);
        }
        float clip_peak = 0.0f;
        bool finite = true;
        for (int64_t l = 0; l < kLanes; ++l) {
          clip_peak = std::max(clip_peak, float(peak[l]));
          finite = finite && float(not_finite[l]) == 0.0f;
        }
        // As in the graph, a clip with a NaN or Inf magnitude gets a NaN maximum, hence a
        // NaN floor and NaN features everywhere (the serving signatures refuse it).
        item_max[item] = finite ? clip_peak : std::numeric_limits<float>::quiet_NaN();
      }
    });

    // Per clip: the floor c = floor_ratio · max(S) and the AGC envelope (serial, small).
    std::vector<float> floor_value(batch, 0.0f);
    const double alpha = std::exp(static_cast<double>(alpha_log_));
    workers->ParallelFor(batch, frames * bands * 10, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        float peak = 0.0f;
        for (int64_t i = 0; i < items_per_clip; ++i) {
          const float item_peak = item_max[b * items_per_clip + i];
          peak = std::isnan(item_peak) || std::isnan(peak) ? item_peak + peak
                                                           : std::max(peak, item_peak);
        }
        const float floor_add = floor_ratio_ * peak;
        floor_value[b] = floor_add;
        if (!agc_) continue;
        std::vector<double> state(bands, 0.0);
        for (int64_t j = 0; j < valid[b]; ++j) {
          Vec* a = band_values + (b * blocks + j / kLanes) * bands;
          const int64_t l = j % kLanes;
          for (int64_t c = 0; c < bands; ++c) {
            // F_agcᵀ (S + c) = F_agcᵀ S + c · colsum(F_agc).
            const double value =
                static_cast<double>(float(a[c][l]) + floor_add * analysis_colsum[c]);
            state[c] = std::max(alpha * state[c], value);
            a[c][l] = static_cast<float>(state[c]);
          }
        }
      }
    });

    // Pass 2: E on the FFT grid, S_agc = (S + c) / (E + eps), the mel product, the log.
    const float inv_ln10 = static_cast<float>(1.0 / std::log(10.0));
    const Vec log_gain(log_gain_);
    const Vec eps(agc_epsilon_);
    const int64_t cost2 = kBlocksPerItem * kLanes * (bins * 8 + n_mels * 40);
    workers->ParallelFor(batch * items_per_clip, cost2, [&](int64_t begin, int64_t end) {
      std::vector<Vec> gain(bins), agc_spectrum(bins), mel_values(n_mels);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / items_per_clip;
        const int64_t block_begin = (item % items_per_clip) * kBlocksPerItem;
        const int64_t block_end = std::min(block_begin + kBlocksPerItem, blocks);
        const Vec floor_add(floor_value[b]);
        for (int64_t block = block_begin; block < block_end; ++block) {
          const int64_t j0 = block * kLanes;
          const int64_t lanes = std::clamp<int64_t>(valid[b] - j0, 0, kLanes);
          const int64_t rows = std::min<int64_t>(kLanes, frames - j0);
          float* o = out + (b * frames + j0) * n_mels;
          if (lanes < rows) {
            std::fill(o + lanes * n_mels, o + rows * n_mels, 0.0f);
          }
          if (lanes == 0) continue;
          const Vec* s = magnitude + (b * blocks + block) * bins;
          if (agc_) {
            const Vec* envelope = band_values + (b * blocks + block) * bands;
            std::fill(gain.begin(), gain.end(), Vec(0.0f));
            for (int64_t c = 0; c < bands; ++c) {
              const Band& band = synthesis_bands[c];
              const Vec e = envelope[c];
              Vec* g = gain.data() + band.first;
              const int64_t n = static_cast<int64_t>(band.weights.size());
              for (int64_t i = 0; i < n; ++i) g[i] += Vec(band.weights[i]) * e;
            }
            for (int64_t k = 0; k < bins; ++k) {
              agc_spectrum[k] = (s[k] + floor_add) / (gain[k] + eps);
            }
          } else {
            for (int64_t k = 0; k < bins; ++k) agc_spectrum[k] = s[k] + floor_add;
          }
          for (int64_t m = 0; m < n_mels; ++m) {
            mel_values[m] = log_gain * Dot(mel_bands[m], agc_spectrum.data());
          }
          // log10(1 + x) as log1p(x) / ln 10, element-wise over the block.
          Eigen::Map<Eigen::ArrayXf> values(reinterpret_cast<float*>(mel_values.data()),
                                            n_mels * kLanes);
          values = values.log1p() * inv_ln10;
          const float* v = reinterpret_cast<const float*>(mel_values.data());
          const int64_t tiled = lanes == kLanes ? n_mels / kLanes * kLanes : 0;
          for (int64_t m = 0; m < tiled; m += kLanes) {  // 8 × 8 tiles back to frames
            __m256 tile[kLanes];
            for (int64_t i = 0; i < kLanes; ++i) tile[i] = _mm256_loadu_ps(v + (m + i) * kLanes);
            Transpose8x8(tile);
            for (int64_t l = 0; l < kLanes; ++l) _mm256_storeu_ps(o + l * n_mels + m, tile[l]);
          }
          for (int64_t l = 0; l < lanes; ++l) {
            for (int64_t m = tiled; m < n_mels; ++m) o[l * n_mels + m] = v[m * kLanes + l];
          }
        }
      }
    });
  }

 private:
  int n_fft_ = 0;
  int hop_ = 0;
  float floor_ratio_ = 0.0f;
  float alpha_log_ = 0.0f;
  float agc_epsilon_ = 0.0f;
  float log_gain_ = 0.0f;
  bool agc_ = true;
};

}  // namespace
}  // namespace deepbof

REGISTER_OP("DeepbofLogMel")
    .Input("waveforms: float")
    .Input("num_samples: int32")
    .Input("window: float")
    .Input("agc_analysis: float")
    .Input("agc_synthesis: float")
    .Input("mel: float")
    .Attr("n_fft: int")
    .Attr("hop_length: int")
    .Attr("floor_ratio: float")
    .Attr("alpha_log: float")
    .Attr("agc_epsilon: float")
    .Attr("log_gain: float")
    .Attr("agc: bool = true")
    .Output("log_mel: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      using ::tensorflow::shape_inference::DimensionHandle;
      using ::tensorflow::shape_inference::ShapeHandle;
      ShapeHandle waveforms, mel;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &waveforms));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 2, &mel));
      int hop = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("hop_length", &hop));
      DimensionHandle length = c->Dim(waveforms, 1);
      DimensionHandle frames = c->UnknownDim();
      if (c->ValueKnown(length) && hop > 0) {
        frames = c->MakeDim(deepbof::FrameCount(c->Value(length), hop));
      }
      c->set_output(0, c->MakeShape({c->Dim(waveforms, 0), frames, c->Dim(mel, 1)}));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("DeepbofLogMel").Device(::tensorflow::DEVICE_CPU),
                        deepbof::DeepbofLogMelOp);
