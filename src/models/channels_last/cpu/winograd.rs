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
    let in_registers = avx512_tiles::Outputs::new(&ep, dst, len, k);
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
            let mut y = vec![0f32; m * m * k];
            for i in 0..nt {
                let (b, oy, ox) = at(i);
                #[cfg(target_arch = "x86_64")]
                if let Some(outputs) = &in_registers {
                    let mut pixels = [None; 16];
                    for (q, p) in pixels[..m * m].iter_mut().enumerate() {
                        let (py, px) = (oy + q / m, ox + q % m);
                        *p = (py < oh && px < ow).then_some(((b * oh + py) * ow + px) * k);
                    }
                    let tile = &prod[i * k..];
                    // SAFETY: `in_registers` exists on AVX-512 only; every
                    // pixel offset lies inside the output and belongs to
                    // this tile alone.
                    unsafe { outputs.tile(m, tile, nt * k, k, &pixels[..m * m]) };
                    continue;
                }
                if m == 4 {
                    output_tile(&prod[i * k..], nt * k, k, &mut y);
                } else {
                    output_tile2(&prod[i * k..], nt * k, k, &mut y);
                }
                for (q, yq) in y.chunks_exact_mut(k).enumerate() {
                    let (py, px) = (oy + q / m, ox + q % m);
                    if py >= oh || px >= ow {
                        continue;
                    }
                    let at = ((b * oh + py) * ow + px) * k;
                    ep.apply(yq, at);
                    // SAFETY: pixel (b, py, px) belongs to this tile alone,
                    // and `at + k <= len`.
                    unsafe { std::ptr::copy_nonoverlapping(yq.as_ptr(), dst.at(at), k) };
                }
            }
        });
    });
    // SAFETY: the tiles (th x tw per image, 4 x 4 pixels each) cover every
    // pixel of every image, and each pixel's k values were written above.
    unsafe { out.set_len(len) };
    out
}

/// `B^T d B` of one tile over the channels: `src` the 6x6 input pixels
/// (row-major), `dst[e * stride + ch]` the 36 transformed values. On
/// AVX-512 in intrinsics (`avx512_tiles`), else `input_tile_any` compiled
/// for AVX2 + FMA or the baseline.
fn input_tile(src: &[&[f32]; T * T], dst: &mut [f32], stride: usize, c: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512_tiles::input_tile(src, dst, stride, c) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { input_tile_avx2(src, dst, stride, c) };
        }
    }
    input_tile_any(src, dst, stride, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_tile_avx2(src: &[&[f32]; T * T], dst: &mut [f32], stride: usize, c: usize) {
    input_tile_any(src, dst, stride, c)
}

/// Channels the transforms take at once: one AVX-512 vector (two AVX2).
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// A vector of `f(lane)`. A plain loop rather than `std::array::from_fn`,
/// whose closures LLVM left uninlined (so compiled without the caller's
/// vector width: 10% of AlexNet's time in `try_from_fn`).
#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> Lanes {
    let mut v = [0f32; LANES];
    for (l, x) in v.iter_mut().enumerate() {
        *x = f(l);
    }
    v
}

/// The first `n` values of `src` (zeros after them), a whole vector at
/// once when `n == LANES` (a compile-time size: no `memcpy` call).
#[inline(always)]
fn load(src: &[f32], n: usize) -> Lanes {
    if n == LANES {
        let mut v = [0f32; LANES];
        v.copy_from_slice(&src[..LANES]);
        v
    } else {
        lanes(|l| if l < n { src[l] } else { 0.0 })
    }
}

/// `v`'s first `n` values into `dst`.
#[inline(always)]
fn store(dst: &mut [f32], v: &Lanes, n: usize) {
    if n == LANES {
        dst[..LANES].copy_from_slice(v);
    } else {
        dst[..n].copy_from_slice(&v[..n]);
    }
}

#[inline(always)]
fn comb(a: &Lanes, wa: f32, b: &Lanes, wb: f32, c: &Lanes) -> Lanes {
    lanes(|l| wa * a[l] + wb * b[l] + c[l])
}

/// `B^T x` over a lane of channels, one column of six.
#[inline(always)]
fn bt4(d: &[Lanes; 6]) -> [Lanes; 6] {
    let d24 = lanes(|l| d[4][l] - d[2][l]);
    let d13 = lanes(|l| d[1][l] - d[3][l]);
    [
        lanes(|l| 4.0 * d[0][l] - 5.0 * d[2][l] + d[4][l]),
        lanes(|l| -4.0 * (d[1][l] + d[2][l]) + d[3][l] + d[4][l]),
        lanes(|l| 4.0 * (d[1][l] - d[2][l]) - d[3][l] + d[4][l]),
        comb(&d13, -2.0, &d24, 1.0, &[0.0; LANES]),
        comb(&d13, 2.0, &d24, 1.0, &[0.0; LANES]),
        lanes(|l| 4.0 * d[1][l] - 5.0 * d[3][l] + d[5][l]),
    ]
}

#[inline(always)]
fn input_tile_any(src: &[&[f32]; T * T], dst: &mut [f32], stride: usize, c: usize) {
    assert!(dst.len() >= 35 * stride + c && src.iter().all(|s| s.len() >= c));
    let mut ch = 0;
    while ch < c {
        let n = LANES.min(c - ch);
        // B^T d column by column, then each of its rows times B.
        let mut cols = [[[0f32; LANES]; 6]; 6];
        for (j, col) in cols.iter_mut().enumerate() {
            let mut d = [[0f32; LANES]; 6];
            for (i, d) in d.iter_mut().enumerate() {
                *d = load(&src[i * 6 + j][ch..], n);
            }
            *col = bt4(&d);
        }
        for i in 0..6 {
            let mut row = [[0f32; LANES]; 6];
            for (j, v) in row.iter_mut().enumerate() {
                *v = cols[j][i];
            }
            for (j, v) in bt4(&row).into_iter().enumerate() {
                store(&mut dst[(i * 6 + j) * stride + ch..], &v, n);
            }
        }
        ch += LANES;
    }
}

widest_vectors! {
    /// `A^T m A` of one tile over the output channels: `m[e * stride + ko]`
    /// the 36 products, `y` the 4x4 outputs (row-major, `k` each).
    fn output_tile / output_tile_avx512 / output_tile_avx2
        => output_tile_any(m: &[f32], stride: usize, k: usize, y: &mut [f32])
}

/// `A^T x` over a lane of channels: six values to four.
#[inline(always)]
fn at4(m: &[Lanes; 6]) -> [Lanes; 4] {
    let a = lanes(|l| m[1][l] + m[2][l]);
    let b = lanes(|l| m[1][l] - m[2][l]);
    let p = lanes(|l| m[3][l] + m[4][l]);
    let q = lanes(|l| m[3][l] - m[4][l]);
    [
        lanes(|l| m[0][l] + a[l] + p[l]),
        comb(&q, 2.0, &b, 1.0, &[0.0; LANES]),
        comb(&p, 4.0, &a, 1.0, &[0.0; LANES]),
        comb(&q, 8.0, &b, 1.0, &m[5]),
    ]
}

#[inline(always)]
fn output_tile_any(m: &[f32], stride: usize, k: usize, y: &mut [f32]) {
    assert!(m.len() >= 35 * stride + k && y.len() >= 16 * k);
    let mut ko = 0;
    while ko < k {
        let n = LANES.min(k - ko);
        let mut rows = [[[0f32; LANES]; 4]; 6];
        for (i, row) in rows.iter_mut().enumerate() {
            let mut v = [[0f32; LANES]; 6];
            for (j, v) in v.iter_mut().enumerate() {
                *v = load(&m[(i * 6 + j) * stride + ko..], n);
            }
            *row = at4(&v);
        }
        for j in 0..4 {
            let mut col = [[0f32; LANES]; 6];
            for (i, v) in col.iter_mut().enumerate() {
                *v = rows[i][j];
            }
            for (i, v) in at4(&col).into_iter().enumerate() {
                store(&mut y[(i * 4 + j) * k + ko..], &v, n);
            }
        }
        ko += LANES;
    }
}

// Two functions rather than one generic over the tile's side: merged,
// `perf` found their closures out of line (compiled without AVX-512).
widest_vectors! {
    /// `output_tile` for F(2x2, 5x5): `y` the 2x2 outputs.
    fn output_tile2 / output_tile2_avx512 / output_tile2_avx2
        => output_tile2_any(m: &[f32], stride: usize, k: usize, y: &mut [f32])
}

/// `A^T x` of F(2x2, 5x5) over a lane of channels: six values to two.
#[inline(always)]
fn at2(m: &[Lanes; 6]) -> [Lanes; 2] {
    let b = lanes(|l| m[1][l] - m[2][l]);
    let q = lanes(|l| m[3][l] - m[4][l]);
    [
        lanes(|l| m[0][l] + (m[1][l] + m[2][l]) + (m[3][l] + m[4][l])),
        comb(&q, 2.0, &b, 1.0, &m[5]),
    ]
}

#[inline(always)]
fn output_tile2_any(m: &[f32], stride: usize, k: usize, y: &mut [f32]) {
    assert!(m.len() >= 35 * stride + k && y.len() >= 4 * k);
    let mut ko = 0;
    while ko < k {
        let n = LANES.min(k - ko);
        let mut rows = [[[0f32; LANES]; 2]; 6];
        for (i, row) in rows.iter_mut().enumerate() {
            let mut v = [[0f32; LANES]; 6];
            for (j, v) in v.iter_mut().enumerate() {
                *v = load(&m[(i * 6 + j) * stride + ko..], n);
            }
            *row = at2(&v);
        }
        for j in 0..2 {
            let mut col = [[0f32; LANES]; 6];
            for (i, v) in col.iter_mut().enumerate() {
                *v = rows[i][j];
            }
            for (i, v) in at2(&col).into_iter().enumerate() {
                store(&mut y[(i * 2 + j) * k + ko..], &v, n);
            }
        }
        ko += LANES;
    }
}

/// The tile transforms in AVX-512 intrinsics, 16 channels a vector (a
/// masked one for the last few): the portable versions' arithmetic with
/// fused multiply-adds, and the output transform storing each pixel
/// once, its epilogue applied in registers.
#[cfg(target_arch = "x86_64")]
mod avx512_tiles {
    use std::arch::x86_64::*;

    use super::super::lanes::InRegisters;
    use super::super::{Epilogue, SharedOut};
    use super::T;

    const LANES: usize = 16;

    /// The first `n` lanes (all for `n >= 16`).
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        if n >= LANES {
            !0
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// `B^T x` over six vectors (`bt4` in the portable code).
    #[inline(always)]
    unsafe fn bt4(d: [__m512; 6]) -> [__m512; 6] {
        // SAFETY: register operations only (AVX-512F, the caller's).
        unsafe {
            let set = _mm512_set1_ps;
            let d24 = _mm512_sub_ps(d[4], d[2]);
            let d13 = _mm512_sub_ps(d[1], d[3]);
            [
                _mm512_fmadd_ps(set(4.0), d[0], _mm512_fmadd_ps(set(-5.0), d[2], d[4])),
                _mm512_fmadd_ps(
                    set(-4.0),
                    _mm512_add_ps(d[1], d[2]),
                    _mm512_add_ps(d[3], d[4]),
                ),
                _mm512_fmadd_ps(
                    set(4.0),
                    _mm512_sub_ps(d[1], d[2]),
                    _mm512_sub_ps(d[4], d[3]),
                ),
                _mm512_fmadd_ps(set(-2.0), d13, d24),
                _mm512_fmadd_ps(set(2.0), d13, d24),
                _mm512_fmadd_ps(set(4.0), d[1], _mm512_fmadd_ps(set(-5.0), d[3], d[5])),
            ]
        }
    }

    /// `A^T x` over six vectors to `M` (4: `at4`, 2: `at2`).
    #[inline(always)]
    unsafe fn at<const M: usize>(x: [__m512; 6]) -> [__m512; M] {
        // SAFETY: register operations only (AVX-512F, the caller's).
        unsafe {
            let set = _mm512_set1_ps;
            let a = _mm512_add_ps(x[1], x[2]);
            let b = _mm512_sub_ps(x[1], x[2]);
            let p = _mm512_add_ps(x[3], x[4]);
            let q = _mm512_sub_ps(x[3], x[4]);
            let mut y = [_mm512_setzero_ps(); M];
            y[0] = _mm512_add_ps(_mm512_add_ps(x[0], a), p);
            if M == 4 {
                y[1] = _mm512_fmadd_ps(set(2.0), q, b);
                y[2] = _mm512_fmadd_ps(set(4.0), p, a);
                y[3] = _mm512_fmadd_ps(set(8.0), q, _mm512_add_ps(b, x[5]));
            } else {
                y[1] = _mm512_fmadd_ps(set(2.0), q, _mm512_add_ps(b, x[5]));
            }
            y
        }
    }

    /// `super::input_tile` on AVX-512.
    ///
    /// # Safety
    /// A CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input_tile(
        src: &[&[f32]; T * T],
        dst: &mut [f32],
        stride: usize,
        c: usize,
    ) {
        assert!(dst.len() >= 35 * stride + c && src.iter().all(|s| s.len() >= c));
        let out = dst.as_mut_ptr();
        for ch in (0..c).step_by(LANES) {
            let lanes = mask(c - ch);
            // SAFETY: channels ch.. under the mask lie inside every
            // source pixel (`c` long) and inside each of the 36 output
            // rows (`e * stride + c <= dst.len()`), as asserted.
            unsafe {
                // B^T d column by column (kept as rows: `bd[i][j]`),
                // then each of its rows times B.
                let mut bd = [[_mm512_setzero_ps(); 6]; 6];
                for j in 0..6 {
                    let mut d = [_mm512_setzero_ps(); 6];
                    for (i, d) in d.iter_mut().enumerate() {
                        *d = _mm512_maskz_loadu_ps(lanes, src[i * 6 + j].as_ptr().add(ch));
                    }
                    for (i, v) in bt4(d).into_iter().enumerate() {
                        bd[i][j] = v;
                    }
                }
                for (i, row) in bd.into_iter().enumerate() {
                    for (j, v) in bt4(row).into_iter().enumerate() {
                        _mm512_mask_storeu_ps(out.add((i * 6 + j) * stride + ch), lanes, v);
                    }
                }
            }
        }
    }

    /// Where one layer's output transforms store: its epilogue (with the
    /// activation in registers) and output.
    pub(super) struct Outputs<'a> {
        bias: &'a [f32],
        residual: Option<&'a [f32]>,
        act: InRegisters,
        out: SharedOut,
    }

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
            assert!((m == 4 || m == 2) && prod.len() >= 35 * stride + k && pixels.len() == m * m);
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
            let src = prod.as_ptr();
            for ko in (0..k).step_by(LANES) {
                let lanes = mask(k - ko);
                // SAFETY: the products' rows as `tile` asserted, the bias
                // `k` long (`new`), the pixels as the caller promised.
                unsafe {
                    // A^T m row by row, then each column of that times A.
                    let mut rows = [[_mm512_setzero_ps(); M]; 6];
                    for (i, row) in rows.iter_mut().enumerate() {
                        let mut v = [_mm512_setzero_ps(); 6];
                        for (j, v) in v.iter_mut().enumerate() {
                            *v = _mm512_maskz_loadu_ps(lanes, src.add((i * 6 + j) * stride + ko));
                        }
                        *row = at::<M>(v);
                    }
                    let bias = _mm512_maskz_loadu_ps(lanes, self.bias.as_ptr().add(ko));
                    for j in 0..M {
                        let y = at::<M>(rows.map(|row| row[j]));
                        for (i, y) in y.into_iter().enumerate() {
                            let Some(offset) = pixels[i * M + j] else {
                                continue;
                            };
                            // As `epilogue_any`: the sum plus (bias + residual).
                            let add = match self.residual {
                                None => bias,
                                Some(r) => _mm512_add_ps(
                                    bias,
                                    _mm512_maskz_loadu_ps(lanes, r.as_ptr().add(offset + ko)),
                                ),
                            };
                            let v = self.act.apply(_mm512_add_ps(y, add));
                            _mm512_mask_storeu_ps(self.out.at(offset + ko), lanes, v);
                        }
                    }
                }
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

    /// The AVX-512 transforms against the portable ones (which AVX2 and
    /// baseline CPUs run, and which `conv` takes on this machine only for
    /// GELU's outputs): the same values within rounding, 24 channels (a
    /// whole vector and a masked one).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx512_transforms_match_the_portable_ones() {
        if !super::super::avx512() {
            return;
        }
        let mut rng = crate::util::SplitMix64(11);
        let c = 24;
        let pixels: Vec<Vec<f32>> = (0..T * T)
            .map(|_| (0..c).map(|_| rng.next_unit() - 0.5).collect())
            .collect();
        let src: [&[f32]; T * T] = std::array::from_fn(|e| &pixels[e][..]);
        let (mut want, mut got) = (vec![0f32; T * T * c], vec![0f32; T * T * c]);
        input_tile_any(&src, &mut want, c, c);
        // SAFETY: the CPU has AVX-512F.
        unsafe { avx512_tiles::input_tile(&src, &mut got, c, c) };
        let worst = crate::models::channels_last::max_abs_diff(&got, &want);
        assert!(worst < 1e-5, "input transform: {worst}");

        // The output transforms of both sizes, no bias or activation.
        let prod: Vec<f32> = (0..T * T * c).map(|_| rng.next_unit() - 0.5).collect();
        let bias = vec![0f32; c];
        for m in [4, 2] {
            let mut want = vec![0f32; m * m * c];
            if m == 4 {
                output_tile_any(&prod, c, c, &mut want);
            } else {
                output_tile2_any(&prod, c, c, &mut want);
            }
            let mut got = vec![f32::NAN; m * m * c];
            let ep = Epilogue {
                bias: &bias,
                residual: None,
                act: Act::Identity,
            };
            let outputs =
                avx512_tiles::Outputs::new(&ep, SharedOut(got.as_mut_ptr()), got.len(), c)
                    .expect("AVX-512 and an activation in registers");
            let pixels: Vec<Option<usize>> = (0..m * m).map(|q| Some(q * c)).collect();
            // SAFETY: each pixel's c values lie inside `got`.
            unsafe { outputs.tile(m, &prod, c, c, &pixels) };
            let worst = crate::models::channels_last::max_abs_diff(&got, &want);
            assert!(worst < 1e-5, "output transform, {m}x{m}: {worst}");
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
            // portable transform, then a pass over the outputs).
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
