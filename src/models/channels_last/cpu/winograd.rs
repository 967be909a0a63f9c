//! Winograd's minimal filtering F(4x4, 3x3) for 3x3 stride-1 convolutions
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016): each 4x4 block of outputs is computed from a 6x6 input tile as
//! `A^T [(G g G^T) . (B^T d B)] A`, so that the channel sums become 36
//! products of `[tiles, c_in] x [c_in, c_out]`, with 36 multiplications per
//! tile and channel pair where im2col needs 144: 4x fewer. 5x5 stride-1
//! convolutions (AlexNet's second layer) go by F(2x2, 5x5) on the same 6x6
//! tiles and the same interpolation points (0, 1, -1, 2, -2 and infinity),
//! so the same input transform: 36 multiplications per 2x2 block where
//! im2col needs 100, 2.8x fewer. (F(2x2, 3x3),
//! 2.25x fewer, ran here before: ResNet-18 52-57 crops/s against 63-65 for
//! this one on 2 cores; the larger transform constants cost about one
//! decimal digit of rounding, still within 1e-6 of PyTorch's largest logit.)
//! The tiles are taken in blocks small enough to stay in cache, one block
//! per task; the transforms run over the channels, 16 at a time.

use rayon::prelude::*;
use std::cell::RefCell;

use super::{product, Epilogue, Input, SharedOut};
use crate::models::channels_last::geometry::ConvGeometry;

thread_local! {
    static TILES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether `g` is a convolution this path computes: 3x3 or 5x5, stride 1,
/// no dilation, dense, and wide enough that the transforms pay (not an
/// RGB stem).
pub fn applies(g: &ConvGeometry) -> bool {
    (g.kernel == [3, 3] || g.kernel == [5, 5])
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.groups == 1
        && g.c_in >= 16
}

/// Input pixels a side per tile.
const T: usize = 6;

/// Outputs a side per tile for a `r x r` filter: `T - r + 1`.
fn outputs(r: usize) -> usize {
    T + 1 - r
}

/// `G g` for one 3-tap filter column (or row) `g`: six values.
fn filter3([g0, g1, g2]: [f32; 3]) -> [f32; 6] {
    [
        g0 / 4.0,
        -(g0 + g1 + g2) / 6.0,
        -(g0 - g1 + g2) / 6.0,
        g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
        g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
        g2,
    ]
}

/// `G g` for one 5-tap filter column (or row): `g(p) / N(p)` at each
/// finite point p (N(p) the product of p minus the other finite points),
/// and the last tap for infinity.
fn filter5([g0, g1, g2, g3, g4]: [f32; 5]) -> [f32; 6] {
    [
        g0 / 4.0,
        -(g0 + g1 + g2 + g3 + g4) / 6.0,
        -(g0 - g1 + g2 - g3 + g4) / 6.0,
        (g0 + 2.0 * g1 + 4.0 * g2 + 8.0 * g3 + 16.0 * g4) / 24.0,
        (g0 - 2.0 * g1 + 4.0 * g2 - 8.0 * g3 + 16.0 * g4) / 24.0,
        g4,
    ]
}

/// `G g` for the `r`-tap filter column (or row) `g(0..r)`.
fn g_times(r: usize, g: impl Fn(usize) -> f32) -> [f32; 6] {
    if r == 3 {
        filter3([g(0), g(1), g(2)])
    } else {
        filter5([g(0), g(1), g(2), g(3), g(4)])
    }
}

/// The KRSC `r x r` filters (`r` 3 or 5) transformed, `G g G^T` per
/// (input, output) channel pair: `T x T` matrices `[c_in, c_out]`, each
/// packed for the product.
pub fn filters(krsc: &[f32], c: usize, k: usize, r: usize) -> Vec<f32> {
    assert!(
        (r == 3 || r == 5) && krsc.len() >= r * r * c * k,
        "winograd: {k} x {r} x {r} x {c} filters expected"
    );
    let tap = |ko: usize, i: usize, j: usize, ch: usize| krsc[((ko * r + i) * r + j) * c + ch];
    let t = T;
    let per = product::packed_len(c, k);
    let mut u = vec![0f32; t * t * per];
    for ch in 0..c {
        for ko in 0..k {
            // G g, column by column, then (G g) G^T row by row.
            let mut cols = [[0f32; 6]; 5];
            for (j, col) in cols.iter_mut().enumerate().take(r) {
                *col = g_times(r, |i| tap(ko, i, j, ch));
            }
            let at = product::packed_index(c, k, ch, ko);
            for i in 0..t {
                for (j, v) in g_times(r, |q| cols[q][i]).into_iter().enumerate() {
                    u[(i * t + j) * per + at] = v;
                }
            }
        }
    }
    u
}

/// Output tiles per block: the block's transformed inputs and products
/// (`36 x tiles x (c_in + c_out)` values) within about 2 MiB.
fn block_tiles(t: usize, c: usize, k: usize) -> usize {
    ((1 << 19) / (t * t * (c + k)).max(1)).clamp(4, 256)
}

/// `act(conv(x) + bias [+ residual])` for a geometry `applies` accepts,
/// with the filters already transformed (`filters`).
pub fn conv(g: &ConvGeometry, input: &Input, n: usize, u: &[f32], ep: Epilogue) -> Vec<f32> {
    let (c, k, t, m) = (g.c_in, g.c_out, T, outputs(g.kernel[0]));
    let (oh, ow) = (input.oh, input.ow);
    let (th, tw) = (oh.div_ceil(m), ow.div_ceil(m));
    let tiles = n * th * tw;
    // Not zero-filled: the tiles cover every output pixel, each written
    // once below before anything reads it.
    let len = n * oh * ow * k;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    assert_eq!(
        u.len(),
        t * t * product::packed_len(c, k),
        "winograd {g}: transformed filters"
    );
    if let Some(r) = ep.residual {
        assert_eq!(r.len(), len, "winograd {g}: residual");
    }
    let block = super::balanced(tiles, block_tiles(t, c, k), 1);
    let dst = SharedOut(out.as_mut_ptr());
    // On AVX-512 the output transform applies the epilogue in registers
    // and stores each pixel once.
    #[cfg(target_arch = "x86_64")]
    let in_registers = vector_tiles::Outputs::new(&ep, dst, len, k);
    let zeros = vec![0f32; c];
    (0..tiles.div_ceil(block)).into_par_iter().for_each(|bi| {
        let (t0, nt) = (bi * block, block.min(tiles - bi * block));
        TILES.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = t * t * nt * (c + k);
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            let (v, prod) = buf[..need].split_at_mut(t * t * nt * c);
            let at = |i: usize| {
                let i = t0 + i;
                (i / (th * tw), m * ((i / tw) % th), m * (i % tw))
            };
            let mut src: [&[f32]; T * T] = [&zeros; T * T];
            for i in 0..nt {
                let (b, oy, ox) = at(i);
                for (e, s) in src.iter_mut().enumerate() {
                    let iy = (oy + e / t) as isize - g.pad[0] as isize;
                    let ix = (ox + e % t) as isize - g.pad[1] as isize;
                    *s = input.at(b, iy, ix).unwrap_or(&zeros);
                }
                input_tile(&src, &mut v[i * c..], nt * c, c);
            }
            let per = product::packed_len(c, k);
            for e in 0..t * t {
                let ops = product::Operands {
                    x: &v[e * nt * c..][..nt * c],
                    stride: c,
                    rows: nt,
                    w: &u[e * per..][..per],
                    k: c,
                    m: k,
                };
                product::product_into(&ops, &mut prod[e * nt * k..][..nt * k], None);
            }
            // The fallback's outputs (sized on first use).
            let mut y = Vec::new();
            for i in 0..nt {
                let (b, oy, ox) = at(i);
                // Each output pixel's offset, `None` past the image's edge.
                let mut pixels = [None; 16];
                for (q, p) in pixels[..m * m].iter_mut().enumerate() {
                    let (py, px) = (oy + q / m, ox + q % m);
                    *p = (py < oh && px < ow).then_some(((b * oh + py) * ow + px) * k);
                }
                let (pixels, tile) = (&pixels[..m * m], &prod[i * k..]);
                #[cfg(target_arch = "x86_64")]
                if let Some(outputs) = &in_registers {
                    // SAFETY: `in_registers` exists on AVX-512 only; every
                    // pixel offset lies inside the output and belongs to
                    // this tile alone.
                    unsafe { outputs.tile(m, tile, nt * k, k, pixels) };
                    continue;
                }
                y.resize(m * m * k, 0.0);
                output_tile(m, tile, nt * k, k, &mut y);
                for (yq, &pixel) in y.chunks_exact_mut(k).zip(pixels) {
                    let Some(at) = pixel else { continue };
                    ep.apply(yq, at);
                    // SAFETY: the pixel belongs to this tile alone, and
                    // `at + k <= len`.
                    unsafe { std::ptr::copy_nonoverlapping(yq.as_ptr(), dst.at(at), k) };
                }
            }
        });
    });
    // SAFETY: the tiles (th x tw per image, m x m pixels each) cover every
    // pixel of every image, and each pixel's k values were written above.
    unsafe { out.set_len(len) };
    out
}

/// `B^T d B` of one tile over the channels: `src` the 6x6 input pixels
/// (row-major), `dst[e * stride + ch]` the 36 transformed values, in
/// AVX-512 or AVX2 vectors where the CPU has them (`vector_tiles`).
fn input_tile(src: &[&[f32]; T * T], dst: &mut [f32], stride: usize, c: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { input_tile_avx512(src, dst, stride, c) };
        }
        if avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { input_tile_avx2(src, dst, stride, c) };
        }
    }
    // SAFETY: plain arrays, no CPU features needed.
    unsafe { vector_tiles::input_tile::<vector_tiles::Plain>(src, dst, stride, c) }
}

/// `A^T m A` of one tile over the output channels: `m[e * stride + ko]`
/// the 36 products, `y` the `side x side` outputs (row-major, `k` each;
/// `side` 4 for F(4x4, 3x3), 2 for F(2x2, 5x5)), in AVX-512 or AVX2
/// vectors where the CPU has them (`vector_tiles`).
fn output_tile(side: usize, m: &[f32], stride: usize, k: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { output_tile_avx512(side, m, stride, k, y) };
        }
        if avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { output_tile_avx2(side, m, stride, k, y) };
        }
    }
    // SAFETY: plain arrays, no CPU features needed.
    unsafe { vector_tiles::output_block::<vector_tiles::Plain>(side, m, stride, k, y) }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_tile_avx512(src: &[&[f32]; T * T], dst: &mut [f32], stride: usize, c: usize) {
    // SAFETY: compiled for, and called on, AVX-512F.
    unsafe { vector_tiles::input_tile::<vector_tiles::Avx512>(src, dst, stride, c) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_tile_avx2(src: &[&[f32]; T * T], dst: &mut [f32], stride: usize, c: usize) {
    // SAFETY: compiled for, and called on, AVX2 + FMA.
    unsafe { vector_tiles::input_tile::<vector_tiles::Avx2>(src, dst, stride, c) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_tile_avx512(side: usize, m: &[f32], stride: usize, k: usize, y: &mut [f32]) {
    // SAFETY: compiled for, and called on, AVX-512F.
    unsafe { vector_tiles::output_block::<vector_tiles::Avx512>(side, m, stride, k, y) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_tile_avx2(side: usize, m: &[f32], stride: usize, k: usize, y: &mut [f32]) {
    // SAFETY: compiled for, and called on, AVX2 + FMA.
    unsafe { vector_tiles::output_block::<vector_tiles::Avx2>(side, m, stride, k, y) }
}

/// The tile transforms, generic over the vector: AVX-512 (16 channels a
/// vector) and AVX2 (8) in intrinsics with fused multiply-adds, and
/// `Plain` arrays for other CPUs; a partial vector for the last few
/// channels. On AVX-512 the output transform can also store each pixel
/// once, its epilogue applied in registers (`Outputs`).
mod vector_tiles {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    #[cfg(target_arch = "x86_64")]
    use super::super::lanes::InRegisters;
    #[cfg(target_arch = "x86_64")]
    use super::super::{Epilogue, SharedOut};
    use super::T;

    /// The operations the transforms need, on one vector of channels.
    /// Every method is inlined into a caller compiled for its width.
    pub(super) trait Vector: Copy {
        const LANES: usize;
        unsafe fn splat(x: f32) -> Self;
        unsafe fn add(self, b: Self) -> Self;
        unsafe fn sub(self, b: Self) -> Self;
        /// `a * self + c` (one rounding where the CPU fuses them).
        unsafe fn times_plus(self, a: f32, c: Self) -> Self;
        /// The first `n` values at `p` (`n < LANES`: zeros after them).
        unsafe fn load(p: *const f32, n: usize) -> Self;
        /// The first `n` lanes to `p`.
        unsafe fn store(self, p: *mut f32, n: usize);
    }

    /// Eight lanes in an array, in loops the compiler vectorises for
    /// whatever the build targets.
    #[derive(Clone, Copy)]
    pub(super) struct Plain([f32; 8]);

    impl Plain {
        #[inline(always)]
        fn zip(mut self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
            for (x, y) in self.0.iter_mut().zip(b.0) {
                *x = f(*x, y);
            }
            self
        }
    }

    // SAFETY (`load`, `store`): the caller names lanes that are there.
    impl Vector for Plain {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Plain([x; 8])
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            self.zip(b, |x, y| x + y)
        }
        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            self.zip(b, |x, y| x - y)
        }
        #[inline(always)]
        unsafe fn times_plus(self, a: f32, c: Self) -> Self {
            // `mul_add` only where it is an instruction (else a call).
            if super::super::BASELINE_FMA {
                self.zip(c, |x, y| x.mul_add(a, y))
            } else {
                self.zip(c, |x, y| a * x + y)
            }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, n: usize) -> Self {
            unsafe {
                if n >= 8 {
                    Plain(p.cast::<[f32; 8]>().read_unaligned())
                } else {
                    let mut v = [0f32; 8];
                    std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n);
                    Plain(v)
                }
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, n: usize) {
            unsafe {
                if n >= 8 {
                    p.cast::<[f32; 8]>().write_unaligned(self.0)
                } else {
                    std::ptr::copy_nonoverlapping(self.0.as_ptr(), p, n)
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(pub __m512);

    #[cfg(target_arch = "x86_64")]
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    /// The first `n` of 16 lanes (all for `n >= 16`).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        if n >= 16 {
            !0
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    // SAFETY (both impls): register operations, and loads and stores of
    // the lanes the caller names; on CPUs with the width's features (the
    // callers' `target_feature`).
    #[cfg(target_arch = "x86_64")]
    impl Vector for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { Avx512(_mm512_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            unsafe { Avx512(_mm512_add_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            unsafe { Avx512(_mm512_sub_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn times_plus(self, a: f32, c: Self) -> Self {
            unsafe { Avx512(_mm512_fmadd_ps(_mm512_set1_ps(a), self.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, n: usize) -> Self {
            unsafe { Avx512(_mm512_maskz_loadu_ps(mask16(n), p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, mask16(n), self.0) }
        }
    }

    #[cfg(target_arch = "x86_64")]
    impl Vector for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { Avx2(_mm256_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            unsafe { Avx2(_mm256_add_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            unsafe { Avx2(_mm256_sub_ps(self.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn times_plus(self, a: f32, c: Self) -> Self {
            unsafe { Avx2(_mm256_fmadd_ps(_mm256_set1_ps(a), self.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, n: usize) -> Self {
            unsafe {
                if n >= 8 {
                    Avx2(_mm256_loadu_ps(p))
                } else {
                    // A partial vector through the stack (AVX2's masked
                    // moves are slow on some CPUs; this is the rare tail).
                    let mut v = [0f32; 8];
                    std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n);
                    Avx2(_mm256_loadu_ps(v.as_ptr()))
                }
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, n: usize) {
            unsafe {
                if n >= 8 {
                    _mm256_storeu_ps(p, self.0)
                } else {
                    let mut v = [0f32; 8];
                    _mm256_storeu_ps(v.as_mut_ptr(), self.0);
                    std::ptr::copy_nonoverlapping(v.as_ptr(), p, n);
                }
            }
        }
    }

    /// `B^T x` over six vectors.
    #[inline(always)]
    unsafe fn bt4<V: Vector>(d: [V; 6]) -> [V; 6] {
        // SAFETY: register operations only.
        unsafe {
            let d24 = d[4].sub(d[2]);
            let d13 = d[1].sub(d[3]);
            [
                d[0].times_plus(4.0, d[2].times_plus(-5.0, d[4])),
                d[1].add(d[2]).times_plus(-4.0, d[3].add(d[4])),
                d[1].sub(d[2]).times_plus(4.0, d[4].sub(d[3])),
                d13.times_plus(-2.0, d24),
                d13.times_plus(2.0, d24),
                d[1].times_plus(4.0, d[3].times_plus(-5.0, d[5])),
            ]
        }
    }

    /// `A^T x` over six vectors to `M` (4 for F(4x4, 3x3), 2 for F(2x2, 5x5)).
    #[inline(always)]
    unsafe fn at<V: Vector, const M: usize>(x: [V; 6]) -> [V; M] {
        // SAFETY: register operations only.
        unsafe {
            let a = x[1].add(x[2]);
            let b = x[1].sub(x[2]);
            let p = x[3].add(x[4]);
            let q = x[3].sub(x[4]);
            let mut y = [V::splat(0.0); M];
            y[0] = x[0].add(a).add(p);
            if M == 4 {
                y[1] = q.times_plus(2.0, b);
                y[2] = p.times_plus(4.0, a);
                y[3] = q.times_plus(8.0, b.add(x[5]));
            } else {
                y[1] = q.times_plus(2.0, b.add(x[5]));
            }
            y
        }
    }

    /// `super::input_tile` in vectors of `V`.
    ///
    /// # Safety
    /// A CPU with `V`'s features, in a caller compiled for them.
    #[inline(always)]
    pub(super) unsafe fn input_tile<V: Vector>(
        src: &[&[f32]; T * T],
        dst: &mut [f32],
        stride: usize,
        c: usize,
    ) {
        assert!(dst.len() >= 35 * stride + c && src.iter().all(|s| s.len() >= c));
        let out = dst.as_mut_ptr();
        for ch in (0..c).step_by(V::LANES) {
            let n = c - ch;
            // SAFETY: channels ch.. (at most n) lie inside every source
            // pixel (`c` long) and inside each of the 36 output rows
            // (`e * stride + c <= dst.len()`), as asserted.
            unsafe {
                // B^T d column by column (kept as rows: `bd[i][j]`),
                // then each of its rows times B.
                let mut bd = [[V::splat(0.0); 6]; 6];
                for j in 0..6 {
                    let mut d = [V::splat(0.0); 6];
                    for (i, d) in d.iter_mut().enumerate() {
                        *d = V::load(src[i * 6 + j].as_ptr().add(ch), n);
                    }
                    for (i, v) in bt4(d).into_iter().enumerate() {
                        bd[i][j] = v;
                    }
                }
                for (i, row) in bd.into_iter().enumerate() {
                    for (j, v) in bt4(row).into_iter().enumerate() {
                        v.store(out.add((i * 6 + j) * stride + ch), n);
                    }
                }
            }
        }
    }

    /// Where `output_tile` puts each pixel's output vectors. (A trait
    /// rather than a closure: its methods, `inline(always)`, compile into
    /// the caller with its vector width.)
    trait Sink<V> {
        /// Pixel `q`'s outputs `ko..ko + lanes`.
        unsafe fn put(&mut self, q: usize, ko: usize, v: V, lanes: usize);
    }

    /// The column `j` of six rows.
    #[inline(always)]
    fn column<V: Copy, const M: usize>(rows: &[[V; M]; 6], j: usize) -> [V; 6] {
        [
            rows[0][j], rows[1][j], rows[2][j], rows[3][j], rows[4][j], rows[5][j],
        ]
    }

    /// `A^T m A` of one tile (`M` outputs a side; the 36 products at
    /// `prod[e * stride + ko]`), each pixel's `k` outputs to `sink`.
    ///
    /// # Safety
    /// A CPU with `V`'s features, in a caller compiled for them; `sink`'s
    /// own conditions.
    #[inline(always)]
    unsafe fn output_tile<V: Vector, const M: usize>(
        prod: &[f32],
        stride: usize,
        k: usize,
        sink: &mut impl Sink<V>,
    ) {
        assert!(prod.len() >= 35 * stride + k);
        let src = prod.as_ptr();
        for ko in (0..k).step_by(V::LANES) {
            let n = k - ko;
            // SAFETY: the products' rows as asserted.
            unsafe {
                // A^T m row by row, then each column of that times A.
                let mut rows = [[V::splat(0.0); M]; 6];
                for (i, row) in rows.iter_mut().enumerate() {
                    let mut v = [V::splat(0.0); 6];
                    for (j, v) in v.iter_mut().enumerate() {
                        *v = V::load(src.add((i * 6 + j) * stride + ko), n);
                    }
                    *row = at::<V, M>(v);
                }
                for j in 0..M {
                    for (i, y) in at::<V, M>(column(&rows, j)).into_iter().enumerate() {
                        sink.put(i * M + j, ko, y, n);
                    }
                }
            }
        }
    }

    /// A block of `M x M` pixels, `k` values each.
    struct Block {
        out: *mut f32,
        k: usize,
    }

    impl<V: Vector> Sink<V> for Block {
        #[inline(always)]
        unsafe fn put(&mut self, q: usize, ko: usize, v: V, lanes: usize) {
            // SAFETY: `output_block` made the block `side x side x k` long.
            unsafe { v.store(self.out.add(q * self.k + ko), lanes) }
        }
    }

    /// `super::output_tile` in vectors of `V`: the `side x side` outputs
    /// (4 or 2) to `y`, pixel by pixel, `k` values each.
    ///
    /// # Safety
    /// A CPU with `V`'s features, in a caller compiled for them.
    #[inline(always)]
    pub(super) unsafe fn output_block<V: Vector>(
        side: usize,
        prod: &[f32],
        stride: usize,
        k: usize,
        y: &mut [f32],
    ) {
        assert!(y.len() >= side * side * k);
        let mut block = Block {
            out: y.as_mut_ptr(),
            k,
        };
        // SAFETY: the CPU as the caller promised; the block as asserted.
        unsafe {
            if side == 4 {
                output_tile::<V, 4>(prod, stride, k, &mut block)
            } else {
                output_tile::<V, 2>(prod, stride, k, &mut block)
            }
        }
    }

    /// Where one layer's output transforms store on AVX-512: its epilogue
    /// (with the activation in registers) and output.
    #[cfg(target_arch = "x86_64")]
    pub(super) struct Outputs<'a> {
        bias: &'a [f32],
        residual: Option<&'a [f32]>,
        act: InRegisters,
        out: SharedOut,
    }

    #[cfg(target_arch = "x86_64")]
    impl<'a> Outputs<'a> {
        /// For an output of `len` values, `k` a pixel: `None` without
        /// AVX-512 or for an activation the registers do not apply.
        pub(super) fn new(ep: &Epilogue<'a>, out: SharedOut, len: usize, k: usize) -> Option<Self> {
            assert!(ep.bias.len() >= k && ep.residual.is_none_or(|r| r.len() >= len));
            let act = InRegisters::of(ep.act)?;
            super::super::avx512().then_some(Outputs {
                bias: ep.bias,
                residual: ep.residual,
                act,
                out,
            })
        }

        /// `A^T m A` of one tile (`m` outputs a side; the 36 products at
        /// `prod[e * stride + ko]`), plus bias and residual, activated
        /// and stored at each pixel's offset in `pixels` (`None`: outside
        /// the image).
        ///
        /// # Safety
        /// Every offset + `k` lies inside the output (and the residual),
        /// and no other task writes those values.
        pub(super) unsafe fn tile(
            &self,
            m: usize,
            prod: &[f32],
            stride: usize,
            k: usize,
            pixels: &[Option<usize>],
        ) {
            assert!((m == 4 || m == 2) && pixels.len() == m * m);
            // SAFETY: `new` found AVX-512F; the rest is the caller's.
            unsafe {
                if m == 4 {
                    self.transform::<4>(prod, stride, k, pixels)
                } else {
                    self.transform::<2>(prod, stride, k, pixels)
                }
            }
        }

        #[target_feature(enable = "avx512f")]
        unsafe fn transform<const M: usize>(
            &self,
            prod: &[f32],
            stride: usize,
            k: usize,
            pixels: &[Option<usize>],
        ) {
            // SAFETY: AVX-512F (`new`); the pixels as the caller promised.
            unsafe {
                output_tile::<Avx512, M>(
                    prod,
                    stride,
                    k,
                    &mut Fused {
                        outputs: self,
                        pixels,
                    },
                )
            }
        }
    }

    /// One tile's pixels stored through `Outputs`' epilogue.
    #[cfg(target_arch = "x86_64")]
    struct Fused<'o, 'a> {
        outputs: &'o Outputs<'a>,
        pixels: &'o [Option<usize>],
    }

    #[cfg(target_arch = "x86_64")]
    impl Sink<Avx512> for Fused<'_, '_> {
        #[inline(always)]
        unsafe fn put(&mut self, q: usize, ko: usize, y: Avx512, lanes: usize) {
            let Some(offset) = self.pixels[q] else { return };
            let o = self.outputs;
            let lanes = mask16(lanes);
            // SAFETY: the bias `k` long and the residual as long as the
            // output (`Outputs::new`); the pixel's offset + k inside the
            // output and this tile's alone (`Outputs::tile`'s caller).
            unsafe {
                // As `epilogue_any`: the sum plus (bias + residual).
                let bias = _mm512_maskz_loadu_ps(lanes, o.bias.as_ptr().add(ko));
                let add = match o.residual {
                    None => bias,
                    Some(r) => _mm512_add_ps(
                        bias,
                        _mm512_maskz_loadu_ps(lanes, r.as_ptr().add(offset + ko)),
                    ),
                };
                let v = o.act.apply(_mm512_add_ps(y.0, add));
                _mm512_mask_storeu_ps(o.out.at(offset + ko), lanes, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::channels_last::program::Act;

    /// The direct sum, in f64.
    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &[f32],
        (n, h, w, c): (usize, usize, usize, usize),
        wt: &[f32],
        (k, r): (usize, usize),
        pad: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
        act: Act,
    ) -> Vec<f32> {
        let (oh, ow) = (h + 2 * pad + 1 - r, w + 2 * pad + 1 - r);
        let mut out = vec![0f32; n * oh * ow * k];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ko in 0..k {
                        let mut s = bias[ko] as f64;
                        for i in 0..r {
                            for q in 0..r {
                                let (iy, ix) = (oy + i, ox + q);
                                if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                    continue;
                                }
                                let at = ((b * h + iy - pad) * w + ix - pad) * c;
                                for ch in 0..c {
                                    s += x[at + ch] as f64
                                        * wt[((ko * r + i) * r + q) * c + ch] as f64;
                                }
                            }
                        }
                        let at = ((b * oh + oy) * ow + ox) * k + ko;
                        out[at] = act.apply(s as f32 + residual.map_or(0.0, |r| r[at]));
                    }
                }
            }
        }
        out
    }

    /// `B^T` and `A^T` (4 and 2 outputs) as matrices, from the
    /// interpolation points 0, 1, -1, 2, -2 and infinity: what the
    /// transforms' hand-expanded sums must compute.
    const BT: [[f64; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const AT4: [[f64; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];
    const AT2: [[f64; 6]; 2] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 1.0],
    ];

    /// `L X L^T` over each of `c` channels, in f64: `x[(i * 6 + j) * c +
    /// ch]` a 6x6 tile, the result `r x r` the same way.
    fn sandwich(l: &[[f64; 6]], x: &[f32], c: usize) -> Vec<f32> {
        let r = l.len();
        let mut out = vec![0f32; r * r * c];
        for ch in 0..c {
            for (i, li) in l.iter().enumerate() {
                for (j, lj) in l.iter().enumerate() {
                    let mut s = 0f64;
                    for (p, lip) in li.iter().enumerate() {
                        for (q, ljq) in lj.iter().enumerate() {
                            s += lip * x[(p * 6 + q) * c + ch] as f64 * ljq;
                        }
                    }
                    out[(i * r + j) * c + ch] = s as f32;
                }
            }
        }
        out
    }

    /// Each vector width's transforms (plain arrays everywhere; AVX2 and
    /// AVX-512 where the CPU has them, and the AVX-512 stores with their
    /// epilogue) against the matrices in f64, 20 channels (whole vectors
    /// and a partial one at every width).
    #[test]
    fn the_transforms_match_their_matrices() {
        use vector_tiles::{output_block, Plain};
        let mut rng = crate::util::SplitMix64(11);
        let c = 20;
        let tile: Vec<f32> = (0..T * T * c).map(|_| rng.next_unit() - 0.5).collect();
        let pixels: Vec<&[f32]> = tile.chunks_exact(c).collect();
        let src: [&[f32]; T * T] = std::array::from_fn(|e| pixels[e]);
        let want_in = sandwich(&BT, &tile, c);
        let want_out = [sandwich(&AT4, &tile, c), sandwich(&AT2, &tile, c)];
        type Input = unsafe fn(&[&[f32]; T * T], &mut [f32], usize, usize);
        type Output = unsafe fn(usize, &[f32], usize, usize, &mut [f32]);
        // SAFETY (the plain width's): no CPU features needed.
        unsafe fn plain_input(src: &[&[f32]; T * T], dst: &mut [f32], stride: usize, c: usize) {
            unsafe { vector_tiles::input_tile::<Plain>(src, dst, stride, c) }
        }
        unsafe fn plain_output(side: usize, m: &[f32], stride: usize, k: usize, y: &mut [f32]) {
            unsafe { output_block::<Plain>(side, m, stride, k, y) }
        }
        let mut widths: Vec<(&str, bool, Input, Output)> =
            vec![("plain", true, plain_input, plain_output)];
        #[cfg(target_arch = "x86_64")]
        widths.extend([
            (
                "AVX-512",
                super::super::avx512(),
                input_tile_avx512 as Input,
                output_tile_avx512 as Output,
            ),
            ("AVX2", avx2(), input_tile_avx2, output_tile_avx2),
        ]);
        for (name, here, input, output) in widths {
            if !here {
                continue;
            }
            let mut got = vec![f32::NAN; T * T * c];
            // SAFETY: the CPU has the width's features.
            unsafe { input(&src, &mut got, c, c) };
            let worst = crate::models::channels_last::max_abs_diff(&got, &want_in);
            assert!(worst < 1e-5, "{name} input transform: {worst}");
            for (side, want) in [4, 2].into_iter().zip(&want_out) {
                let mut got = vec![f32::NAN; side * side * c];
                // SAFETY: as above.
                unsafe { output(side, &tile, c, c, &mut got) };
                let worst = crate::models::channels_last::max_abs_diff(&got, want);
                assert!(
                    worst < 1e-5,
                    "{name} output transform {side}x{side}: {worst}"
                );
            }
        }
        // The AVX-512 stores with the epilogue (none here) as well.
        #[cfg(target_arch = "x86_64")]
        {
            let ep = Epilogue {
                bias: &[0.0; 20],
                residual: None,
                act: Act::Identity,
            };
            for (side, want) in [4, 2].into_iter().zip(&want_out) {
                let mut got = vec![f32::NAN; side * side * c];
                let dst = SharedOut(got.as_mut_ptr());
                let Some(outputs) = vector_tiles::Outputs::new(&ep, dst, got.len(), c) else {
                    return; // no AVX-512 here
                };
                let pixels: Vec<Option<usize>> = (0..side * side).map(|q| Some(q * c)).collect();
                // SAFETY: each pixel's c values lie inside `got`.
                unsafe { outputs.tile(side, &tile, c, c, &pixels) };
                let worst = crate::models::channels_last::max_abs_diff(&got, want);
                assert!(worst < 1e-5, "AVX-512 stores {side}x{side}: {worst}");
            }
        }
    }

    #[test]
    fn winograd_matches_the_direct_sum() {
        let mut rng = crate::util::SplitMix64(7);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_unit() - 0.5).collect() };
        // Odd and even sizes (a half tile at the edge), pad 0 and 1, more
        // tiles than one block.
        for (n, h, w, c, k, r, pad) in [
            (2, 7, 6, 16, 24, 3, 1),
            (1, 9, 9, 32, 8, 3, 0),
            (3, 40, 33, 16, 16, 3, 1),
            // Channels not in whole vectors (masked lanes in and out).
            (1, 10, 7, 20, 12, 3, 1),
            // F(2x2, 5x5): AlexNet's padding, an odd map (a half tile at
            // the edge), no padding.
            (2, 13, 13, 32, 40, 5, 2),
            (1, 11, 8, 16, 16, 5, 0),
        ] {
            let g = ConvGeometry::square(c, k, r, 1, pad);
            assert!(applies(&g));
            let (x, wt, bias) = (rand(n * h * w * c), rand(k * r * r * c), rand(k));
            let (oh, ow) = g.out_hw(h, w).unwrap();
            let residual = rand(n * oh * ow * k);
            // With a residual and an activation the AVX-512 stores apply,
            // without a residual, and with one they do not (GELU: the
            // transform into a block, then a pass over its outputs).
            for (residual, act) in [
                (Some(&residual[..]), Act::Relu),
                (None, Act::Silu),
                (Some(&residual[..]), Act::Gelu),
            ] {
                let want = direct(&x, (n, h, w, c), &wt, (k, r), pad, &bias, residual, act);
                let input = Input {
                    x: &x,
                    h,
                    w,
                    c,
                    oh,
                    ow,
                };
                let u = filters(&wt, c, k, r);
                let ep = Epilogue {
                    bias: &bias,
                    residual,
                    act,
                };
                let y = conv(&g, &input, n, &u, ep);
                let worst = crate::models::channels_last::max_abs_diff(&y, &want);
                // Within 1e-5 of the largest output (the transforms'
                // rounding measured 2.5e-6 to 3.2e-6 of it, 3x3 and 5x5).
                let largest = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert!(
                    worst < 1e-5 * largest,
                    "{n}x{h}x{w}x{c} -> {k}, {r}x{r} pad {pad}, {act:?}: {worst} of {largest}"
                );
            }
        }
        assert!(!applies(&ConvGeometry::square(16, 16, 3, 2, 1)), "stride 2");
        assert!(
            !applies(&ConvGeometry::square(3, 16, 3, 1, 1)),
            "an RGB stem"
        );
        assert!(!applies(&ConvGeometry::square(16, 16, 7, 1, 3)), "7x7");
        assert!(
            !applies(&ConvGeometry::square(16, 16, 5, 2, 2)),
            "5x5 stride 2"
        );
    }
}
