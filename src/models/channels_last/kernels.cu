// Our CUDA kernels for the channels-last (NHWC) path: the epilogue after a
// cuDNN convolution or a cuBLASLt product (bias, residual, activation), the
// pools and the squeeze-excite gate. Compiled to PTX by build.rs (only with
// the `cuda` feature) and loaded by cuda_kernels.rs.
//
// Every kernel is a template over the storage type (float, __half,
// __nv_bfloat16) with one extern "C" entry point per type, suffixed _f32,
// _f16 and _bf16. Values are widened to f32 on load, all arithmetic is f32
// (the average pool accumulates in f64, as its reference does) and results
// are rounded to nearest-even on store, as the `half` crate's from_f32.
//
// The semantics are those of the f32 references in ops.rs (`epilogue`,
// `PoolOp::cpu_fwd`, `GateOp::cpu_fwd`) and program.rs (`Act::apply`):
// keep them in step. Sizes are size_t; one thread per output element,
// channel fastest, in grid-stride loops (any grid size is correct).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// ---------------------------------------------------------------------------
// Loads, stores, activations.

template <typename T> __device__ __forceinline__ float load_f32(T v);
template <> __device__ __forceinline__ float load_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float load_f32<__half>(__half v) {
    return __half2float(v);
}
template <> __device__ __forceinline__ float load_f32<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T store_f32(float v);
template <> __device__ __forceinline__ float store_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half store_f32<__half>(float v) {
    return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 store_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// The activation with the number `Act::code()` gives it (program.rs), as
// `Act::apply` computes it. An unknown code is the identity (the host side
// only passes codes from `Act::code`).
__device__ __forceinline__ float apply_act(float x, uint32_t act) {
    switch (act) {
    case 1: // relu: Rust's f32::max, NaN -> 0 like fmaxf
        return fmaxf(x, 0.0f);
    case 2: // relu6: Rust's clamp keeps NaN
        return isnan(x) ? x : fminf(fmaxf(x, 0.0f), 6.0f);
    case 3: // silu
        return x * sigmoidf(x);
    case 4: // exact (erf) gelu
        return 0.5f * x * (1.0f + erff(x / 1.41421356237309504880f));
    case 5: // quickgelu
        return x * sigmoidf(1.702f * x);
    case 6: // sigmoid
        return sigmoidf(x);
    default: // 0: identity
        return x;
    }
}

// 16 bytes of T: the unit of the vectorised paths (4 floats, 8 halves).
template <typename T> struct alignas(16) Vec16 {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

__device__ __forceinline__ bool aligned16(const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

__device__ __forceinline__ size_t thread_index() {
    return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ size_t thread_stride() { return (size_t)blockDim.x * gridDim.x; }

// ---------------------------------------------------------------------------
// y = act(y + bias[c] + residual) in place over [rows, channels], the sum in
// the reference's order ((y + bias) + residual). `bias` and `residual` may
// be null (zero).

template <typename T>
__device__ __forceinline__ float bias_act_one(const T *y, const T *bias, const T *residual,
                                              size_t i, size_t c, uint32_t act) {
    float v = load_f32(y[i]);
    if (bias != nullptr)
        v += load_f32(bias[c]);
    if (residual != nullptr)
        v += load_f32(residual[i]);
    return apply_act(v, act);
}

template <typename T>
__device__ void bias_act(T *y, const T *bias, const T *residual, size_t rows, size_t channels,
                         uint32_t act) {
    constexpr int N = Vec16<T>::N;
    const size_t total = rows * channels;
    const bool vec = channels % N == 0 && aligned16(y) && (bias == nullptr || aligned16(bias)) &&
                     (residual == nullptr || aligned16(residual));
    if (vec) {
        // N consecutive elements share a row (channels % N == 0).
        const size_t groups = total / N;
        const bool small = total <= 0xffffffffull; // 32-bit modulo suffices
        for (size_t g = thread_index(); g < groups; g += thread_stride()) {
            const size_t i0 = g * N;
            const size_t c0 = small ? (size_t)((uint32_t)i0 % (uint32_t)channels) : i0 % channels;
            Vec16<T> yv = reinterpret_cast<const Vec16<T> *>(y)[g];
            Vec16<T> bv, rv;
            if (bias != nullptr)
                bv = reinterpret_cast<const Vec16<T> *>(bias + c0)[0];
            if (residual != nullptr)
                rv = reinterpret_cast<const Vec16<T> *>(residual)[g];
#pragma unroll
            for (int j = 0; j < N; ++j) {
                float v = load_f32(yv.v[j]);
                if (bias != nullptr)
                    v += load_f32(bv.v[j]);
                if (residual != nullptr)
                    v += load_f32(rv.v[j]);
                yv.v[j] = store_f32<T>(apply_act(v, act));
            }
            reinterpret_cast<Vec16<T> *>(y)[g] = yv;
        }
    } else if (total <= 0xffffffffull) {
        // Every index fits 32 bits: the modulo in 32-bit arithmetic (far
        // cheaper than a 64-bit one).
        const uint32_t ch = (uint32_t)channels;
        for (size_t i = thread_index(); i < total; i += thread_stride())
            y[i] = store_f32<T>(bias_act_one(y, bias, residual, i, (uint32_t)i % ch, act));
    } else {
        for (size_t i = thread_index(); i < total; i += thread_stride())
            y[i] = store_f32<T>(bias_act_one(y, bias, residual, i, i % channels, act));
    }
}

// ---------------------------------------------------------------------------
// k x k max-pool over [n, h, w, c] -> [n, oh, ow, c], stride and zero
// padding; out-of-range pixels are skipped (padding is never the maximum),
// the maximum starts at -inf. fmaxf ignores NaN as Rust's f32::max does.

// I: the index type of the per-element division (uint32_t when every index
// fits, as it does for any batch this path runs; else size_t).
template <typename T, typename I>
__device__ void max_pool_nhwc_impl(const T *x, T *y, I n, I h, I w, I c, I oh, I ow, I k,
                                   I stride, I pad) {
    const size_t total = (size_t)n * oh * ow * c;
    for (size_t i = thread_index(); i < total; i += thread_stride()) {
        const I ch = (I)i % c;
        I rest = (I)i / c;
        const I ox = rest % ow;
        rest /= ow;
        const I oy = rest % oh;
        const I b = rest / oh;
        const T *img = x + (size_t)b * h * w * c + ch;
        float m = -INFINITY;
        for (I r = 0; r < k; ++r) {
            const I iy = oy * stride + r; // padded coordinate
            if (iy < pad || iy - pad >= h)
                continue;
            for (I q = 0; q < k; ++q) {
                const I ix = ox * stride + q;
                if (ix < pad || ix - pad >= w)
                    continue;
                m = fmaxf(m, load_f32(img[((size_t)(iy - pad) * w + (ix - pad)) * c]));
            }
        }
        y[i] = store_f32<T>(m);
    }
}

template <typename T>
__device__ void max_pool_nhwc(const T *x, T *y, size_t n, size_t h, size_t w, size_t c,
                              size_t oh, size_t ow, size_t k, size_t stride, size_t pad) {
    // Padded coordinates reach (oh - 1) * stride + k - 1 < h + 2 pad.
    const size_t largest = max(max(n * oh * ow * c, n * h * w * c), max(h, w) + 2 * pad + k);
    if (largest <= 0xffffffffull)
        max_pool_nhwc_impl<T, uint32_t>(x, y, n, h, w, c, oh, ow, k, stride, pad);
    else
        max_pool_nhwc_impl<T, size_t>(x, y, n, h, w, c, oh, ow, k, stride, pad);
}

// ---------------------------------------------------------------------------
// PyTorch's adaptive average pool over [n, h, w, c] -> [n, oh, ow, c]: output
// cell i of o averages input rows floor(i h / o) .. ceil((i + 1) h / o).
// Summed in f64 in the reference's order and divided in f64, so the result
// is the reference's to the last bit before the final rounding.

template <typename T, typename I>
__device__ void adaptive_avg_pool_nhwc_impl(const T *x, T *y, I n, I h, I w, I c, I oh, I ow) {
    const size_t total = (size_t)n * oh * ow * c;
    for (size_t i = thread_index(); i < total; i += thread_stride()) {
        const I ch = (I)i % c;
        I rest = (I)i / c;
        const I ox = rest % ow;
        rest /= ow;
        const I oy = rest % oh;
        const I b = rest / oh;
        const I y0 = oy * h / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
        const I x0 = ox * w / ow, x1 = ((ox + 1) * w + ow - 1) / ow;
        const T *img = x + (size_t)b * h * w * c + ch;
        double sum = 0.0;
        for (I iy = y0; iy < y1; ++iy)
            for (I ix = x0; ix < x1; ++ix)
                sum += (double)load_f32(img[((size_t)iy * w + ix) * c]);
        y[i] = store_f32<T>((float)(sum / (double)((size_t)(y1 - y0) * (x1 - x0))));
    }
}

template <typename T>
__device__ void adaptive_avg_pool_nhwc(const T *x, T *y, size_t n, size_t h, size_t w, size_t c,
                                       size_t oh, size_t ow) {
    // The bin bounds multiply (i + 1) by the input side.
    const size_t largest =
        max(max(n * oh * ow * c, n * h * w * c), max((oh + 1) * h + oh, (ow + 1) * w + ow));
    if (largest <= 0xffffffffull)
        adaptive_avg_pool_nhwc_impl<T, uint32_t>(x, y, n, h, w, c, oh, ow);
    else
        adaptive_avg_pool_nhwc_impl<T, size_t>(x, y, n, h, w, c, oh, ow);
}

// ---------------------------------------------------------------------------
// Squeeze-excite gate: y[b, p, c] = x[b, p, c] * g[b, c] over x [n, hw, c]
// (hw = h * w) and g [n, c].

template <typename T, typename I>
__device__ void gate_nhwc_impl(const T *x, const T *g, T *y, I n, I hw, I c) {
    constexpr int N = Vec16<T>::N;
    const I per_image = hw * c;
    const size_t total = (size_t)n * per_image;
    const bool vec = c % N == 0 && aligned16(x) && aligned16(g) && aligned16(y);
    if (vec) {
        const size_t groups = total / N;
        for (size_t v = thread_index(); v < groups; v += thread_stride()) {
            const I i0 = (I)(v * N);
            const I b = i0 / per_image, c0 = i0 % c;
            Vec16<T> xv = reinterpret_cast<const Vec16<T> *>(x)[v];
            const Vec16<T> gv = reinterpret_cast<const Vec16<T> *>(g + (size_t)b * c + c0)[0];
#pragma unroll
            for (int j = 0; j < N; ++j)
                xv.v[j] = store_f32<T>(load_f32(xv.v[j]) * load_f32(gv.v[j]));
            reinterpret_cast<Vec16<T> *>(y)[v] = xv;
        }
    } else {
        for (size_t i = thread_index(); i < total; i += thread_stride()) {
            const I b = (I)i / per_image, ch = (I)i % c;
            y[i] = store_f32<T>(load_f32(x[i]) * load_f32(g[(size_t)b * c + ch]));
        }
    }
}

template <typename T>
__device__ void gate_nhwc(const T *x, const T *g, T *y, size_t n, size_t hw, size_t c) {
    if (n * hw * c <= 0xffffffffull)
        gate_nhwc_impl<T, uint32_t>(x, g, y, n, hw, c);
    else
        gate_nhwc_impl<T, size_t>(x, g, y, n, hw, c);
}

// ---------------------------------------------------------------------------
// Entry points. Parameter lists are what cuda_kernels.rs pushes: pointers
// (8 bytes), size_t (usize), uint32_t (u32); keep them in step.

#define ENTRY_POINTS(T, SUFFIX)                                                                   \
    extern "C" __global__ void bias_act_##SUFFIX(T *y, const T *bias, const T *residual,          \
                                                 size_t rows, size_t channels, uint32_t act) {    \
        bias_act<T>(y, bias, residual, rows, channels, act);                                      \
    }                                                                                             \
    extern "C" __global__ void max_pool_nhwc_##SUFFIX(const T *x, T *y, size_t n, size_t h,       \
                                                      size_t w, size_t c, size_t oh, size_t ow,   \
                                                      size_t k, size_t stride, size_t pad) {      \
        max_pool_nhwc<T>(x, y, n, h, w, c, oh, ow, k, stride, pad);                               \
    }                                                                                             \
    extern "C" __global__ void adaptive_avg_pool_nhwc_##SUFFIX(                                   \
        const T *x, T *y, size_t n, size_t h, size_t w, size_t c, size_t oh, size_t ow) {         \
        adaptive_avg_pool_nhwc<T>(x, y, n, h, w, c, oh, ow);                                      \
    }                                                                                             \
    extern "C" __global__ void gate_nhwc_##SUFFIX(const T *x, const T *g, T *y, size_t n,         \
                                                  size_t hw, size_t c) {                          \
        gate_nhwc<T>(x, g, y, n, hw, c);                                                          \
    }

ENTRY_POINTS(float, f32)
ENTRY_POINTS(__half, f16)
ENTRY_POINTS(__nv_bfloat16, bf16)
