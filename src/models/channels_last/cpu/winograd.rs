//! Winograd's minimal filtering F(2x2, 3x3) for 3x3 stride-1 convolutions
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016): each 2x2 block of outputs is computed from a 4x4 input tile as
//! `A^T [(G g G^T) . (B^T d B)] A`, so that the channel sums become 16
//! products of `[tiles, c_in] x [c_in, c_out]`, with 16 multiplications per
//! tile and channel pair where im2col needs 36: 2.25x fewer. The tiles are
//! taken in blocks small enough to stay in cache, one block per task; the
//! transforms run over the channels, contiguous in NHWC.

use rayon::prelude::*;
use std::cell::RefCell;

use super::{Epilogue, Input, WeightOrder, Weights};
use crate::models::channels_last::geometry::ConvGeometry;
use crate::models::kernels::conv::matmul;

thread_local! {
    static TILES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether `g` is a convolution this path computes: 3x3, stride 1, no
/// dilation, dense, and wide enough that the transforms pay (not an RGB
/// stem).
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.groups == 1
        && g.c_in >= 16
}

/// The filters transformed, `G g G^T` per (input, output) channel pair:
/// 16 matrices `[c_in, c_out]`, the output channel fastest, which the
/// products read in place.
pub fn filters(wt: Weights, c: usize, k: usize) -> Vec<f32> {
    let tap = |ko: usize, r: usize, s: usize, ch: usize| match wt.order {
        WeightOrder::Rows => wt.values[(ko * 9 + r * 3 + s) * c + ch],
        WeightOrder::Columns => wt.values[((r * 3 + s) * c + ch) * k + ko],
    };
    let mut u = vec![0f32; 16 * c * k];
    for ch in 0..c {
        for ko in 0..k {
            // G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2.
            let row = |r: usize| -> [f32; 3] { std::array::from_fn(|s| tap(ko, r, s, ch)) };
            let (g0, g1, g2) = (row(0), row(1), row(2));
            let gg: [[f32; 3]; 4] = [
                g0,
                std::array::from_fn(|s| 0.5 * (g0[s] + g1[s] + g2[s])),
                std::array::from_fn(|s| 0.5 * (g0[s] - g1[s] + g2[s])),
                g2,
            ];
            for (i, row) in gg.iter().enumerate() {
                let [t0, t1, t2] = *row;
                let e = [t0, 0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2), t2];
                for (j, v) in e.into_iter().enumerate() {
                    u[((i * 4 + j) * c + ch) * k + ko] = v;
                }
            }
        }
    }
    u
}

/// Output tiles per block: the block's transformed inputs and products
/// (`16 x tiles x (c_in + c_out)` values) within about 2 MiB.
fn block_tiles(c: usize, k: usize) -> usize {
    ((1 << 19) / (16 * (c + k)).max(1)).clamp(4, 256)
}

/// A pointer the blocks share to write disjoint output pixels.
#[derive(Clone, Copy)]
struct Out(*mut f32);

impl Out {
    /// The output at element `i` (a method, so closures take the whole
    /// `Send` wrapper rather than its raw field).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
// SAFETY: each block writes only the pixels of its own tiles.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `act(conv(x) + bias [+ residual])` for a geometry `applies` accepts,
/// with the filters already transformed (`filters`).
pub fn conv(g: &ConvGeometry, input: &Input, n: usize, u: &[f32], ep: Epilogue) -> Vec<f32> {
    let (c, k) = (g.c_in, g.c_out);
    let (oh, ow) = (input.oh, input.ow);
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let tiles = n * th * tw;
    let mut out = vec![0f32; n * oh * ow * k];
    assert_eq!(u.len(), 16 * c * k, "winograd {g}: transformed filters");
    if let Some(r) = ep.residual {
        assert_eq!(r.len(), out.len(), "winograd {g}: residual");
    }
    let block = block_tiles(c, k);
    let dst = Out(out.as_mut_ptr());
    let zeros = vec![0f32; c];
    (0..tiles.div_ceil(block)).into_par_iter().for_each(|bi| {
        let (t0, nt) = (bi * block, block.min(tiles - bi * block));
        TILES.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = 16 * nt * (c + k);
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            let (v, m) = buf[..need].split_at_mut(16 * nt * c);
            let at = |t: usize| {
                let t = t0 + t;
                (t / (th * tw), 2 * ((t / tw) % th), 2 * (t % tw))
            };
            for t in 0..nt {
                let (b, oy, ox) = at(t);
                let src: [&[f32]; 16] = std::array::from_fn(|e| {
                    let iy = (oy + e / 4) as isize - g.pad[0] as isize;
                    let ix = (ox + e % 4) as isize - g.pad[1] as isize;
                    input.at(b, iy, ix).unwrap_or(&zeros)
                });
                input_tile(&src, &mut v[t * c..], nt * c, c);
            }
            for e in 0..16 {
                // SAFETY: m_e [nt, k], v_e [nt, c], u_e [c, k], all in bounds.
                unsafe {
                    matmul(
                        (nt, k, c),
                        m[e * nt * k..].as_mut_ptr(),
                        (k as isize, 1),
                        v[e * nt * c..].as_ptr(),
                        (c as isize, 1),
                        u[e * c * k..].as_ptr(),
                        (k as isize, 1),
                        false,
                        false,
                    )
                };
            }
            let mut y = vec![0f32; 4 * k];
            for t in 0..nt {
                let (b, oy, ox) = at(t);
                output_tile(&m[t * k..], nt * k, k, &mut y);
                for (q, yq) in y.chunks_exact_mut(k).enumerate() {
                    let (py, px) = (oy + q / 2, ox + q % 2);
                    if py >= oh || px >= ow {
                        continue;
                    }
                    let at = ((b * oh + py) * ow + px) * k;
                    ep.apply(yq, at);
                    // SAFETY: pixel (b, py, px) belongs to this tile alone,
                    // and `at + k <= out.len()`.
                    unsafe { std::ptr::copy_nonoverlapping(yq.as_ptr(), dst.at(at), k) };
                }
            }
        });
    });
    out
}

widest_vectors! {
    /// `B^T d B` of one tile, over the channels: `src` the 4x4 input pixels
    /// (row-major), `dst[e * stride + ch]` the 16 transformed values.
    fn input_tile / input_tile_avx512 / input_tile_avx2
        => input_tile_any(src: &[&[f32]; 16], dst: &mut [f32], stride: usize, c: usize)
}

#[inline(always)]
fn input_tile_any(src: &[&[f32]; 16], dst: &mut [f32], stride: usize, c: usize) {
    assert!(dst.len() >= 15 * stride + c && src.iter().all(|s| s.len() >= c));
    for ch in 0..c {
        let d = |i: usize, j: usize| src[i * 4 + j][ch];
        // B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3.
        let t: [[f32; 4]; 4] = [
            std::array::from_fn(|j| d(0, j) - d(2, j)),
            std::array::from_fn(|j| d(1, j) + d(2, j)),
            std::array::from_fn(|j| d(2, j) - d(1, j)),
            std::array::from_fn(|j| d(1, j) - d(3, j)),
        ];
        for (i, r) in t.iter().enumerate() {
            let v = [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]];
            for (j, x) in v.into_iter().enumerate() {
                dst[(i * 4 + j) * stride + ch] = x;
            }
        }
    }
}

widest_vectors! {
    /// `A^T m A` of one tile, over the output channels: `m[e * stride + ko]`
    /// the 16 products, `y` the 2x2 outputs (row-major, `k` each).
    fn output_tile / output_tile_avx512 / output_tile_avx2
        => output_tile_any(m: &[f32], stride: usize, k: usize, y: &mut [f32])
}

#[inline(always)]
fn output_tile_any(m: &[f32], stride: usize, k: usize, y: &mut [f32]) {
    assert!(m.len() >= 15 * stride + k && y.len() >= 4 * k);
    for ko in 0..k {
        let v = |i: usize, j: usize| m[(i * 4 + j) * stride + ko];
        // A^T m: rows m0 + m1 + m2, m1 - m2 - m3.
        let t: [[f32; 4]; 2] = [
            std::array::from_fn(|j| v(0, j) + v(1, j) + v(2, j)),
            std::array::from_fn(|j| v(1, j) - v(2, j) - v(3, j)),
        ];
        for (i, r) in t.iter().enumerate() {
            y[(i * 2) * k + ko] = r[0] + r[1] + r[2];
            y[(i * 2 + 1) * k + ko] = r[1] - r[2] - r[3];
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
        k: usize,
        pad: usize,
        bias: &[f32],
        residual: &[f32],
    ) -> Vec<f32> {
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let mut out = vec![0f32; n * oh * ow * k];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ko in 0..k {
                        let mut s = bias[ko] as f64;
                        for r in 0..3 {
                            for q in 0..3 {
                                let (iy, ix) = (oy + r, ox + q);
                                if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                    continue;
                                }
                                let at = ((b * h + iy - pad) * w + ix - pad) * c;
                                for ch in 0..c {
                                    s += x[at + ch] as f64
                                        * wt[((ko * 3 + r) * 3 + q) * c + ch] as f64;
                                }
                            }
                        }
                        let at = ((b * oh + oy) * ow + ox) * k + ko;
                        out[at] = Act::Relu.apply(s as f32 + residual[at]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn winograd_matches_the_direct_sum_in_both_weight_orders() {
        let mut rng = crate::util::SplitMix64(7);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_unit() - 0.5).collect() };
        // Odd and even sizes (a half tile at the edge), pad 0 and 1, more
        // tiles than one block.
        for (n, h, w, c, k, pad) in [
            (2, 7, 6, 16, 24, 1),
            (1, 9, 9, 32, 8, 0),
            (3, 40, 33, 16, 16, 1),
        ] {
            let g = ConvGeometry::square(c, k, 3, 1, pad);
            assert!(applies(&g));
            let (x, wt, bias) = (rand(n * h * w * c), rand(k * 9 * c), rand(k));
            let (oh, ow) = g.out_hw(h, w).unwrap();
            let residual = rand(n * oh * ow * k);
            let want = direct(&x, (n, h, w, c), &wt, k, pad, &bias, &residual);
            let columns: Vec<f32> = (0..9 * c * k)
                .map(|i| wt[(i % k) * 9 * c + i / k])
                .collect();
            for weights in [
                Weights {
                    values: &wt,
                    order: WeightOrder::Rows,
                    winograd: None,
                },
                Weights {
                    values: &columns,
                    order: WeightOrder::Columns,
                    winograd: None,
                },
            ] {
                let input = Input {
                    x: &x,
                    h,
                    w,
                    c,
                    oh,
                    ow,
                };
                let u = filters(weights, c, k);
                let ep = Epilogue {
                    bias: &bias,
                    residual: Some(&residual),
                    act: Act::Relu,
                };
                let y = conv(&g, &input, n, &u, ep);
                let worst = y
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 2e-5,
                    "{n}x{h}x{w}x{c} -> {k}, pad {pad}, {:?}: {worst}",
                    weights.order
                );
            }
        }
        assert!(!applies(&ConvGeometry::square(16, 16, 3, 2, 1)), "stride 2");
        assert!(
            !applies(&ConvGeometry::square(3, 16, 3, 1, 1)),
            "an RGB stem"
        );
        assert!(!applies(&ConvGeometry::square(16, 16, 5, 1, 2)), "5x5");
    }
}
