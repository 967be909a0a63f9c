//! The f32 matrix product every dense CPU layer runs on: `out[rows, m] =
//! act(x[rows, k] W[k, m] + bias [+ residual])`, with `W` packed once at
//! load into panels of up to 64 output channels, each panel `k` rows of
//! its (16-padded) width, so the product reads the weights front to back.
//!
//! On AVX-512 machines our own kernel computes 6 rows x 64 outputs per
//! step in 24 vector registers (one weight load per 16 outputs, one
//! broadcast per row), in blocks of 256 inputs and chunks of 96 rows, and
//! applies the epilogue to each finished panel block (up to 96 rows x 64
//! outputs) while it is still in cache: no second pass over the output,
//! and no zero fill before it (every element is written before it is
//! read). Elsewhere the `gemm` crate multiplies
//! each panel in place and the epilogue follows. Both read the same
//! layout, so a checkpoint is packed one way on every machine.

use std::ops::Range;

use rayon::prelude::*;

use super::{Epilogue, SharedOut};
use crate::models::kernels::conv::matmul;

/// Outputs per panel: 4 AVX-512 vectors.
const PANEL: usize = 64;
const LANES: usize = 16;
/// Inputs per block of the AVX-512 kernel: a 64 x 256 panel block is
/// 64 KiB, which stays in L2 while every row tile of a block reads it.
const KC: usize = 256;
/// Rows per tile of the AVX-512 kernel.
const TILE_ROWS: usize = 6;

/// Values in the packed form of a `[k, m]` matrix.
pub fn packed_len(k: usize, m: usize) -> usize {
    k * m.next_multiple_of(LANES)
}

/// `W[k, m]` (`at(input, output)`) packed for `product`.
pub fn pack(k: usize, m: usize, at: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(packed_len(k, m));
    for c0 in (0..m).step_by(PANEL) {
        let width = (m - c0).min(PANEL).next_multiple_of(LANES);
        for i in 0..k {
            out.extend((c0..c0 + width).map(|o| if o < m { at(i, o) } else { 0.0 }));
        }
    }
    out
}

/// Where `pack` puts `W[i, o]` of a `[k, m]` matrix.
pub fn packed_index(k: usize, m: usize, i: usize, o: usize) -> usize {
    let c0 = o / PANEL * PANEL;
    let width = (m - c0).min(PANEL).next_multiple_of(LANES);
    k * c0 + i * width + (o - c0)
}

/// The panels of an `m`-output product.
fn panels(m: usize) -> usize {
    m.div_ceil(PANEL)
}

/// Panel `p`'s first output, width (unpadded) and offset in the packing.
fn panel(p: usize, k: usize, m: usize) -> (usize, usize, usize) {
    let c0 = p * PANEL;
    (c0, (m - c0).min(PANEL), k * c0)
}

/// Whether the AVX-512 kernel runs here.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The operands of one product: `rows` rows of `x`, `stride` apart, times
/// the packed `w`.
#[derive(Clone, Copy)]
pub struct Operands<'a> {
    pub x: &'a [f32],
    pub stride: usize,
    pub rows: usize,
    pub w: &'a [f32],
    pub k: usize,
    pub m: usize,
}

impl Operands<'_> {
    fn check(&self) {
        assert!(
            self.stride >= self.k
                && (self.rows == 0 || self.x.len() >= (self.rows - 1) * self.stride + self.k)
                && self.w.len() >= packed_len(self.k, self.m),
            "product: operands too short"
        );
    }

    /// The same product over rows `r` only.
    fn rows(&self, r: Range<usize>) -> Self {
        Operands {
            x: &self.x[(r.start * self.stride).min(self.x.len())..],
            rows: r.len(),
            ..*self
        }
    }
}

/// The epilogue applied to the output, which starts at element `at` of
/// the layer's output (for the residual).
type Finish<'a> = Option<(&'a Epilogue<'a>, usize)>;

/// `out = x W` (then the epilogue, if any) over panels `panels`, one
/// thread.
///
/// # Safety
/// `out` must be valid for writes of `ops.rows` rows of `ops.m` values.
unsafe fn block(ops: &Operands, panels: Range<usize>, out: *mut f32, ep: Finish) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F; `out` as the caller promised.
        return unsafe { avx512_kernel::block(ops, panels, out, ep) };
    }
    // SAFETY: as the caller promised.
    unsafe { portable_block(ops, panels, out, ep) }
}

/// The `gemm` crate over each panel in place, then the epilogue.
///
/// # Safety
/// As `block`.
unsafe fn portable_block(ops: &Operands, panels: Range<usize>, out: *mut f32, ep: Finish) {
    let Operands {
        x,
        stride,
        rows,
        w,
        k,
        m,
    } = *ops;
    for p in panels {
        let (c0, width, offset) = panel(p, k, m);
        let padded = width.next_multiple_of(LANES);
        // SAFETY: out [rows, m] from column c0, x [rows, k] `stride` apart,
        // the panel [k, padded] row-major (`check`ed lengths).
        unsafe {
            let dst = out.add(c0);
            if k == 0 {
                for r in 0..rows {
                    std::ptr::write_bytes(dst.add(r * m), 0, width);
                }
            } else {
                matmul(
                    (rows, width, k),
                    dst,
                    (m as isize, 1),
                    x.as_ptr(),
                    (stride as isize, 1),
                    w[offset..].as_ptr(),
                    (padded as isize, 1),
                    false,
                    false,
                )
            }
        }
        if let Some((ep, at)) = ep {
            for r in 0..rows {
                // SAFETY: row r's panel columns were just written.
                let seg = unsafe { std::slice::from_raw_parts_mut(out.add(r * m + c0), width) };
                finish::<{ super::BASELINE_FMA }>(seg, ep, at + r * m + c0, c0);
            }
        }
    }
}

/// The epilogue over `seg`, the outputs from `c0` on of the row that
/// starts at `at - c0` (`FUSED`: compiled with fused multiply-adds).
#[inline(always)]
fn finish<const FUSED: bool>(seg: &mut [f32], ep: &Epilogue, at: usize, c0: usize) {
    let n = seg.len();
    super::epilogue_any::<FUSED>(
        seg,
        &ep.bias[c0..c0 + n],
        ep.residual.map(|r| &r[at..at + n]),
        ep.act,
    );
}

#[cfg(target_arch = "x86_64")]
mod avx512_kernel {
    use super::{finish, panel, Finish, Operands, KC, LANES, TILE_ROWS};

    /// Rows per chunk: 96 x 256 inputs are 96 KiB.
    const CHUNK_ROWS: usize = 96;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// One tile: `N` rows x `V` vectors of outputs over `kc` inputs, into
    /// `c` (rows `m` apart), added to what `c` holds unless `first`.
    /// Indexed loops over constant bounds, which LLVM unrolls into
    /// registers.
    #[inline(always)]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn tile<const V: usize, const N: usize>(
        kc: usize,
        a: *const f32,
        x: *const f32,
        xs: usize,
        c: *mut f32,
        cs: usize,
        first: bool,
        last: __mmask16,
    ) {
        // SAFETY (whole body): the caller passes pointers covering a
        // `kc x 16V` panel block, N rows of `kc` inputs and N x 16V outputs
        // (the last vector's lanes past `last` are not touched).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; N];
            for p in 0..kc {
                let mut w = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    w[v] = _mm512_loadu_ps(a.add((p * V + v) * LANES));
                }
                for r in 0..N {
                    let b = _mm512_set1_ps(*x.add(r * xs + p));
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(w[v], b, acc[r][v]);
                    }
                }
            }
            for r in 0..N {
                for v in 0..V {
                    let dst = c.add(r * cs + v * LANES);
                    let mask = if v == V - 1 { last } else { 0xffff };
                    let val = if first {
                        acc[r][v]
                    } else {
                        _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(mask, dst))
                    };
                    _mm512_mask_storeu_ps(dst, mask, val);
                }
            }
        }
    }

    /// Every row tile of one panel block. A function of its own per
    /// width, with nothing else in it: with the epilogue inlined beside
    /// the tiles, LLVM kept the accumulators on the stack.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles<const V: usize>(
        kc: usize,
        a: *const f32,
        x: *const f32,
        xs: usize,
        rows: usize,
        c: *mut f32,
        cs: usize,
        first: bool,
        last: __mmask16,
    ) {
        // SAFETY: rows r.. of x and c; the panel block at `a` (the
        // caller's offsets).
        unsafe {
            let mut r = 0;
            while r + TILE_ROWS <= rows {
                tile::<V, TILE_ROWS>(kc, a, x.add(r * xs), xs, c.add(r * cs), cs, first, last);
                r += TILE_ROWS;
            }
            let (x, c) = (x.add(r * xs), c.add(r * cs));
            match rows - r {
                0 => {}
                1 => tile::<V, 1>(kc, a, x, xs, c, cs, first, last),
                2 => tile::<V, 2>(kc, a, x, xs, c, cs, first, last),
                3 => tile::<V, 3>(kc, a, x, xs, c, cs, first, last),
                4 => tile::<V, 4>(kc, a, x, xs, c, cs, first, last),
                _ => tile::<V, 5>(kc, a, x, xs, c, cs, first, last),
            }
        }
    }

    /// `super::block` on AVX-512.
    ///
    /// # Safety
    /// As `super::block`, on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(ops: &Operands, panels: Range<usize>, out: *mut f32, ep: Finish) {
        let (k, m) = (ops.k, ops.m);
        // Rows in chunks whose inputs stay in L2 while every panel reads
        // them.
        if ops.rows > CHUNK_ROWS {
            for r0 in (0..ops.rows).step_by(CHUNK_ROWS) {
                let r = r0..(r0 + CHUNK_ROWS).min(ops.rows);
                let ep = ep.map(|(ep, at)| (ep, at + r0 * m));
                // SAFETY: rows r of the output, as the caller promised.
                unsafe { block(&ops.rows(r), panels.clone(), out.add(r0 * m), ep) };
            }
            return;
        }
        // At least one block, so that k = 0 still writes (zeros).
        let blocks = k.div_ceil(KC).max(1);
        for b in 0..blocks {
            let k0 = b * KC;
            let kc = KC.min(k - k0);
            for p in panels.clone() {
                let (c0, width, offset) = panel(p, k, m);
                let v = width.div_ceil(LANES);
                let tail = width - (v - 1) * LANES;
                let last: __mmask16 = if tail == LANES { !0 } else { (1 << tail) - 1 };
                // SAFETY: the panel holds k rows of 16v values at `offset`;
                // x has `rows` rows from input k0, out from column c0.
                unsafe {
                    let a = ops.w.as_ptr().add(offset + k0 * v * LANES);
                    let x = ops.x.as_ptr().add(k0);
                    let c = out.add(c0);
                    let (rows, xs, first) = (ops.rows, ops.stride, k0 == 0);
                    match v {
                        4 => tiles::<4>(kc, a, x, xs, rows, c, m, first, last),
                        3 => tiles::<3>(kc, a, x, xs, rows, c, m, first, last),
                        2 => tiles::<2>(kc, a, x, xs, rows, c, m, first, last),
                        _ => tiles::<1>(kc, a, x, xs, rows, c, m, first, last),
                    }
                }
                if let (true, Some((ep, at))) = (k0 + kc == k, ep) {
                    for r in 0..ops.rows {
                        // SAFETY: row r's panel columns were just written.
                        let seg =
                            unsafe { std::slice::from_raw_parts_mut(out.add(r * m + c0), width) };
                        finish::<true>(seg, ep, at + r * m + c0, c0);
                    }
                }
            }
        }
    }
}

/// `ops` into `out` (`ops.rows x ops.m`, overwritten), one thread, then
/// the epilogue if any (`out` starting at element `at` of its layer's
/// output).
pub fn product_into(ops: &Operands, out: &mut [f32], ep: Option<(&Epilogue, usize)>) {
    ops.check();
    assert!(out.len() >= ops.rows * ops.m, "product: output too short");
    // SAFETY: operands and output checked above.
    unsafe { block(ops, 0..panels(ops.m), out.as_mut_ptr(), ep) };
}

/// Rows per task of the parallel product: a multiple of the tile height.
const TASK_ROWS: usize = 96;

/// `act(x W + bias [+ residual])` as a new `[rows, m]` output, shared by
/// the threads: tasks of up to 96 rows (their count a multiple of the
/// threads), and for few rows (a classifier on one batch) groups of panels
/// as well, so every thread has work.
pub fn product(ops: &Operands, ep: &Epilogue) -> Vec<f32> {
    ops.check();
    let (rows, m) = (ops.rows, ops.m);
    let len = rows * m;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let threads = rayon::current_num_threads().max(1);
    let per_task = if rows <= TASK_ROWS {
        rows
    } else {
        super::balanced(rows, TASK_ROWS, TILE_ROWS)
    };
    let row_tasks = rows.div_ceil(per_task);
    let groups = (2 * threads).div_ceil(row_tasks).min(panels(m)).max(1);
    let per_group = panels(m).div_ceil(groups);
    let dst = SharedOut(out.as_mut_ptr());
    (0..row_tasks * groups).into_par_iter().for_each(|t| {
        let (rt, g) = (t / groups, t % groups);
        let r = rt * per_task..((rt + 1) * per_task).min(rows);
        let ps = g * per_group..((g + 1) * per_group).min(panels(m));
        let at = r.start * m;
        let part = ops.rows(r);
        // SAFETY: task (rt, g) writes rows r of panels ps only: disjoint
        // from every other task's; the capacity covers rows x m.
        unsafe { block(&part, ps, dst.at(at), Some((ep, at))) };
    });
    // SAFETY: the tasks wrote every element of rows x m (every row range,
    // every panel, every column of each panel).
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::channels_last::program::Act;

    fn rand(rng: &mut crate::util::SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.next_unit() - 0.5).collect()
    }

    /// Every shape class (tile rows 1..6, partial vectors and panels,
    /// several input blocks, k = 0), in parallel and one-thread form, on
    /// this machine's kernel and on the portable one, against an f64 sum.
    #[test]
    fn product_matches_the_f64_sum() {
        let mut rng = crate::util::SplitMix64(5);
        for (rows, k, m) in [
            (1, 3, 5),
            (7, 0, 20),
            (13, 300, 64),
            (200, 40, 130),
            (11, 600, 72),
            (97, 17, 1000),
        ] {
            let (x, w, bias, res) = (
                rand(&mut rng, rows * k),
                rand(&mut rng, k * m),
                rand(&mut rng, m),
                rand(&mut rng, rows * m),
            );
            let packed = pack(k, m, |i, o| w[i * m + o]);
            assert_eq!(packed.len(), packed_len(k, m));
            for (i, o) in [(0, 0), (k.saturating_sub(1), m - 1), (k / 2, m / 2)] {
                if k > 0 {
                    assert_eq!(packed[packed_index(k, m, i, o)], w[i * m + o]);
                }
            }
            let ops = Operands {
                x: &x,
                stride: k,
                rows,
                w: &packed,
                k,
                m,
            };
            let ep = Epilogue {
                bias: &bias,
                residual: Some(&res),
                act: Act::Silu,
            };
            let want = |i: usize, j: usize| {
                let dot: f64 = (0..k).map(|t| (x[i * k + t] * w[t * m + j]) as f64).sum();
                Act::Silu.apply(dot as f32 + bias[j] + res[i * m + j])
            };
            let parallel = product(&ops, &ep);
            let mut single = vec![f32::NAN; rows * m];
            product_into(&ops, &mut single, Some((&ep, 0)));
            let mut portable = vec![f32::NAN; rows * m];
            // SAFETY: `portable` holds rows x m values.
            unsafe { portable_block(&ops, 0..panels(m), portable.as_mut_ptr(), Some((&ep, 0))) };
            for (name, y) in [
                ("parallel", &parallel),
                ("one thread", &single),
                ("portable", &portable),
            ] {
                for i in 0..rows {
                    for j in 0..m {
                        let (got, want) = (y[i * m + j], want(i, j));
                        assert!(
                            (got - want).abs() < 2e-5,
                            "{name} {rows}x{k}x{m} at ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
