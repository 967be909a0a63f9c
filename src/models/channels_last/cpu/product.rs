//! The f32 matrix product every dense CPU layer runs on: `out[rows, m] =
//! act(x[rows, k] W[k, m] + bias [+ residual])`, with `W` packed once at
//! load into panels of up to 64 output channels, each panel `k` rows of
//! its (16-padded) width, so the product reads the weights front to back.
//!
//! On AVX-512 machines our own kernel computes 6 rows x 64 outputs per
//! step in 24 vector registers (one weight load per 16 outputs, one
//! broadcast per row), in blocks of 256 inputs and chunks of 96 rows. The
//! last block's stores add the bias and residual and apply ReLU or ReLU6
//! in registers (large outputs with a residual going past the caches);
//! any other activation runs over each finished panel block
//! (up to 96 rows x 64 outputs) while it is still in cache. No zero fill
//! before (every element is written before it is read). Elsewhere the `gemm` crate multiplies
//! each panel in place and the epilogue follows. Both read the same
//! layout, so a checkpoint is packed one way on every machine.

use std::ops::Range;

use rayon::prelude::*;

use super::{avx512, Epilogue, SharedOut};
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

/// `W[k, m]` packed for `product` from rows `stride` apart in `src`:
/// `W[i, o] = src[i * stride + o]`, or `src[o * stride + i]` if
/// `transposed` (a checkpoint's `[m, k]` rows; the keys of an attention
/// head, one token per row), by whole-row copies.
pub fn pack(src: &[f32], stride: usize, (k, m): (usize, usize), transposed: bool) -> Vec<f32> {
    pack_panels(k, m, |c0, width, padded, block| {
        if transposed {
            for o in 0..width {
                scatter(block, padded, o, &src[(c0 + o) * stride..][..k]);
            }
        } else {
            for (i, dst) in block.chunks_exact_mut(padded).enumerate() {
                dst[..width].copy_from_slice(&src[i * stride + c0..][..width]);
            }
        }
    })
}

/// `W[k, m]` packed from its columns made one at a time: `column(o, buf)`
/// writes `W[.., o]` (output `o`'s `k` weights) into `buf`. For weights
/// that must be reordered on the way in, without a reordered copy of the
/// whole matrix.
pub fn pack_columns(k: usize, m: usize, mut column: impl FnMut(usize, &mut [f32])) -> Vec<f32> {
    let mut buf = vec![0f32; k];
    pack_panels(k, m, |c0, width, padded, block| {
        for o in 0..width {
            column(c0 + o, &mut buf);
            scatter(block, padded, o, &buf);
        }
    })
}

/// The zeroed packing of a `[k, m]` matrix, each panel's block (`k` rows
/// of `padded` values) filled by `fill(first output, width, padded, block)`.
fn pack_panels(
    k: usize,
    m: usize,
    mut fill: impl FnMut(usize, usize, usize, &mut [f32]),
) -> Vec<f32> {
    let mut out = vec![0f32; packed_len(k, m)];
    for p in 0..panels(m) {
        let (c0, width, offset) = panel(p, k, m);
        let padded = width.next_multiple_of(LANES);
        fill(c0, width, padded, &mut out[offset..][..k * padded]);
    }
    out
}

/// Column `o` of a panel block `padded` wide set to `column`.
fn scatter(block: &mut [f32], padded: usize, o: usize, column: &[f32]) {
    for (row, &v) in block.chunks_exact_mut(padded).zip(column) {
        row[o] = v;
    }
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

/// Panics unless `ep` covers `rows` rows of `m` outputs from element `at`:
/// the kernels read the bias and residual through pointers.
fn check_epilogue(ep: Finish, rows: usize, m: usize) {
    if let Some((ep, at)) = ep {
        assert!(
            ep.bias.len() >= m && ep.residual.is_none_or(|r| r.len() >= at + rows * m),
            "product: bias or residual too short"
        );
    }
}

/// `out = x W` (then the epilogue, if any) over panels `panels`, one
/// thread; `stream`: the finished outputs may bypass the caches
/// (`STREAM_BYTES`).
///
/// # Safety
/// `out` must be valid for writes of `ops.rows` rows of `ops.m` values.
unsafe fn block(ops: &Operands, panels: Range<usize>, out: *mut f32, ep: Finish, stream: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F; `out` as the caller promised.
        unsafe { avx512_kernel::block(ops, panels, out, ep, stream) };
        if stream {
            // The streamed stores reach memory before the task ends and
            // another thread reads them.
            std::arch::x86_64::_mm_sfence();
        }
        return;
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
    use super::super::lanes::InRegisters;
    use super::{panel, Finish, Operands, KC, LANES, TILE_ROWS};

    /// Rows per chunk: 96 x 256 inputs are 96 KiB.
    const CHUNK_ROWS: usize = 96;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// How a tile writes its accumulators.
    #[derive(Clone, Copy)]
    struct Store {
        /// Added to what the output holds (a later input block) rather
        /// than written over it.
        accumulate: bool,
        /// The lanes of the last vector that are outputs.
        last: __mmask16,
        /// On the last input block, the bias of the panel's outputs (else
        /// null): with it the residual (null: none), from the tile's first
        /// output, rows as far apart as the output's, and a clamp.
        bias: *const f32,
        residual: *const f32,
        act: InRegisters,
    }

    impl Store {
        /// The same store for the tile whose first row is `r` rows
        /// (`cs` values each) further on.
        fn down(self, r: usize, cs: usize) -> Store {
            Store {
                residual: if self.residual.is_null() {
                    self.residual
                } else {
                    self.residual.wrapping_add(r * cs)
                },
                ..self
            }
        }
    }

    /// One tile: `N` rows x `V` vectors of outputs over `kc` inputs, into
    /// `c` (rows `cs` apart), stored as `s` says (`STREAM`: whole vectors
    /// past the caches, `STREAM_BYTES`). Indexed loops over constant
    /// bounds, which LLVM unrolls into registers.
    #[inline(always)]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn tile<const V: usize, const N: usize, const STREAM: bool>(
        kc: usize,
        a: *const f32,
        x: *const f32,
        xs: usize,
        c: *mut f32,
        cs: usize,
        s: Store,
    ) {
        // SAFETY (whole body): the caller passes pointers covering a
        // `kc x 16V` panel block, N rows of `kc` inputs, N x 16V outputs
        // and as much residual, and 16V biases (the last vector's lanes
        // past `s.last` are neither read nor written).
        unsafe {
            if !s.bias.is_null() {
                // The epilogue's lines on their way while the sums run:
                // with few inputs (64 in ResNet's 1x1 layers) the sums
                // are too short to hide a miss on each.
                for r in 0..N {
                    for v in 0..V {
                        if !s.residual.is_null() {
                            let res = s.residual.add(r * cs + v * LANES);
                            _mm_prefetch::<_MM_HINT_T0>(res.cast::<i8>());
                        }
                        if !STREAM {
                            _mm_prefetch::<_MM_HINT_ET0>(c.add(r * cs + v * LANES).cast::<i8>());
                        }
                    }
                }
            }
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
                    let mask = if v == V - 1 { s.last } else { 0xffff };
                    let mut val = acc[r][v];
                    if s.accumulate {
                        val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(mask, dst));
                    }
                    if !s.bias.is_null() {
                        val =
                            _mm512_add_ps(val, _mm512_maskz_loadu_ps(mask, s.bias.add(v * LANES)));
                        if !s.residual.is_null() {
                            let res = s.residual.add(r * cs + v * LANES);
                            val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(mask, res));
                        }
                        val = s.act.apply(val);
                    }
                    if STREAM && mask == 0xffff {
                        _mm512_stream_ps(dst, val);
                    } else {
                        _mm512_mask_storeu_ps(dst, mask, val);
                    }
                }
            }
        }
    }

    /// Every row tile of one panel block. A function of its own per
    /// width, with nothing else in it: with the epilogue inlined beside
    /// the tiles, LLVM kept the accumulators on the stack.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles<const V: usize, const STREAM: bool>(
        kc: usize,
        a: *const f32,
        x: *const f32,
        xs: usize,
        rows: usize,
        c: *mut f32,
        cs: usize,
        s: Store,
    ) {
        // SAFETY: rows r.. of x, c and the residual; the panel block at
        // `a` (the caller's offsets).
        unsafe {
            let mut r = 0;
            while r + TILE_ROWS <= rows {
                let (x, c, s) = (x.add(r * xs), c.add(r * cs), s.down(r, cs));
                tile::<V, TILE_ROWS, STREAM>(kc, a, x, xs, c, cs, s);
                r += TILE_ROWS;
            }
            let (x, c, s) = (x.add(r * xs), c.add(r * cs), s.down(r, cs));
            match rows - r {
                0 => {}
                1 => tile::<V, 1, STREAM>(kc, a, x, xs, c, cs, s),
                2 => tile::<V, 2, STREAM>(kc, a, x, xs, c, cs, s),
                3 => tile::<V, 3, STREAM>(kc, a, x, xs, c, cs, s),
                4 => tile::<V, 4, STREAM>(kc, a, x, xs, c, cs, s),
                _ => tile::<V, 5, STREAM>(kc, a, x, xs, c, cs, s),
            }
        }
    }

    /// `super::block` on AVX-512.
    ///
    /// # Safety
    /// As `super::block`, on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(
        ops: &Operands,
        panels: Range<usize>,
        out: *mut f32,
        ep: Finish,
        stream: bool,
    ) {
        let (k, m) = (ops.k, ops.m);
        // Rows in chunks whose inputs stay in L2 while every panel reads
        // them.
        if ops.rows > CHUNK_ROWS {
            for r0 in (0..ops.rows).step_by(CHUNK_ROWS) {
                let r = r0..(r0 + CHUNK_ROWS).min(ops.rows);
                let ep = ep.map(|(ep, at)| (ep, at + r0 * m));
                // SAFETY: rows r of the output, as the caller promised.
                unsafe { block(&ops.rows(r), panels.clone(), out.add(r0 * m), ep, stream) };
            }
            return;
        }
        // At least one block, so that k = 0 still writes (zeros).
        let blocks = k.div_ceil(KC).max(1);
        for b in 0..blocks {
            let k0 = b * KC;
            let kc = KC.min(k - k0);
            let pass = Pass {
                k0,
                kc,
                x: ops.x[k0.min(ops.x.len())..].as_ptr(),
                xs: ops.stride,
                accumulate: b > 0,
                last: b + 1 == blocks,
                stream,
            };
            // SAFETY: x has `rows` rows of inputs k0..k0 + kc from `x`, as
            // `Operands::check` made sure; `out` as the caller promised.
            unsafe { pass.run(ops.w, (k, m), ops.rows, panels.clone(), out, ep) };
        }
    }

    /// One block of inputs `k0..k0 + kc` over panels: rows of `x` `xs`
    /// apart, added to the output unless it is the first, with the
    /// epilogue if it is the last.
    struct Pass {
        k0: usize,
        kc: usize,
        x: *const f32,
        xs: usize,
        accumulate: bool,
        last: bool,
        /// The last block stores past the caches where it can.
        stream: bool,
    }

    impl Pass {
        /// # Safety
        /// `x` holds `rows` rows of `kc` inputs `xs` apart, `out` `rows`
        /// rows of m; `w` is packed for `[k, m]` and `k0 + kc <= k`.
        #[target_feature(enable = "avx512f")]
        unsafe fn run(
            &self,
            w: &[f32],
            (k, m): (usize, usize),
            rows: usize,
            panels: Range<usize>,
            out: *mut f32,
            ep: Finish,
        ) {
            let Pass { k0, kc, x, xs, .. } = *self;
            for p in panels {
                let (c0, width, offset) = panel(p, k, m);
                let v = width.div_ceil(LANES);
                let tail = width - (v - 1) * LANES;
                let mut s = Store {
                    accumulate: self.accumulate,
                    last: if tail == LANES { !0 } else { (1 << tail) - 1 },
                    bias: std::ptr::null(),
                    residual: std::ptr::null(),
                    act: InRegisters::None,
                };
                // The bias, residual and activation in the last block's
                // stores; GELU over the finished block.
                let mut activation = None;
                let mut stream = false;
                if let (true, Some((ep, at))) = (self.last, ep) {
                    s.bias = ep.bias[c0..].as_ptr();
                    if let Some(r) = ep.residual {
                        s.residual = r[at + c0..].as_ptr();
                    }
                    match InRegisters::of(ep.act) {
                        Some(act) => s.act = act,
                        None => activation = Some(ep.act),
                    }
                    // Whole panels (`streams` saw to their alignment),
                    // finished here: no activation pass reads them back.
                    stream = self.stream && v == 4 && activation.is_none();
                }
                // SAFETY: the panel holds k rows of 16v values at `offset`;
                // x `rows` rows of this block's inputs, out from column
                // c0; the bias has the panel's `width` outputs from c0,
                // the residual (the whole layer's, from element `at` of
                // it) `rows` rows of m.
                unsafe {
                    let a = w.as_ptr().add(offset + k0 * v * LANES);
                    let c = out.add(c0);
                    match v {
                        4 if stream => tiles::<4, true>(kc, a, x, xs, rows, c, m, s),
                        4 => tiles::<4, false>(kc, a, x, xs, rows, c, m, s),
                        3 => tiles::<3, false>(kc, a, x, xs, rows, c, m, s),
                        2 => tiles::<2, false>(kc, a, x, xs, rows, c, m, s),
                        _ => tiles::<1, false>(kc, a, x, xs, rows, c, m, s),
                    }
                }
                if let Some(act) = activation {
                    for r in 0..rows {
                        // SAFETY: row r's panel columns were just written.
                        let seg =
                            unsafe { std::slice::from_raw_parts_mut(out.add(r * m + c0), width) };
                        super::super::apply::<true>(seg, act);
                    }
                }
            }
        }
    }

    /// `super::parts_into` on AVX-512: each part's inputs in blocks of
    /// up to 256, one pass each.
    ///
    /// # Safety
    /// As `super::parts_into` checked; a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn parts(
        parts: &[super::Part],
        rows: usize,
        w: &[f32],
        (k, m): (usize, usize),
        out: *mut f32,
        ep: Finish,
    ) {
        let blocks: usize = parts.iter().map(|p| p.len.div_ceil(KC)).sum();
        let mut b = 0;
        for part in parts {
            for j0 in (0..part.len).step_by(KC) {
                let pass = Pass {
                    k0: part.k0 + j0,
                    kc: KC.min(part.len - j0),
                    x: part.x[j0..].as_ptr(),
                    xs: part.stride,
                    accumulate: b > 0,
                    last: b + 1 == blocks,
                    stream: false,
                };
                // SAFETY: as `parts_into` checked.
                unsafe { pass.run(w, (k, m), rows, 0..super::panels(m), out, ep) };
                b += 1;
            }
        }
    }
}

/// `ops` into `out` (`ops.rows x ops.m`, overwritten), one thread, then
/// the epilogue if any (`out` starting at element `at` of its layer's
/// output).
pub fn product_into(ops: &Operands, out: &mut [f32], ep: Option<(&Epilogue, usize)>) {
    ops.check();
    check_epilogue(ep, ops.rows, ops.m);
    assert!(out.len() >= ops.rows * ops.m, "product: output too short");
    // SAFETY: operands and output checked above.
    unsafe { block(ops, 0..panels(ops.m), out.as_mut_ptr(), ep, false) };
}

/// Inputs `k0..k0 + len` of a product's rows, read from `x` (rows
/// `stride` apart, overlapping where `stride < len`) rather than from one
/// matrix: one tap row of a convolution, whose `kw x c` values lie side
/// by side in the input.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub x: &'a [f32],
    pub stride: usize,
    pub k0: usize,
    pub len: usize,
}

/// `out = sum over parts of x_part W[k0..k0 + len, :]`, then the epilogue
/// (`out` starting at element `at` of its layer's output), one thread:
/// an im2col product that reads each part in place. The parts must cover
/// inputs 0..k in order, once each.
pub fn parts_into(
    parts: &[Part],
    rows: usize,
    w: &[f32],
    (k, m): (usize, usize),
    out: &mut [f32],
    ep: Option<(&Epilogue, usize)>,
) {
    let mut next = 0;
    for p in parts {
        assert!(
            p.k0 == next && (rows == 0 || p.x.len() >= (rows - 1) * p.stride + p.len),
            "product: parts out of order or too short"
        );
        next += p.len;
    }
    assert!(
        next == k && k > 0 && w.len() >= packed_len(k, m) && out.len() >= rows * m,
        "product: parts do not cover the weights' {k} inputs"
    );
    check_epilogue(ep, rows, m);
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F; operands checked above.
        return unsafe { avx512_kernel::parts(parts, rows, w, (k, m), out.as_mut_ptr(), ep) };
    }
    // Elsewhere: the rows gathered into one matrix.
    let mut x = vec![0f32; rows * k];
    for (r, row) in x.chunks_exact_mut(k).enumerate() {
        for p in parts {
            row[p.k0..p.k0 + p.len].copy_from_slice(&p.x[r * p.stride..][..p.len]);
        }
    }
    let ops = Operands {
        x: &x,
        stride: k,
        rows,
        w,
        k,
        m,
    };
    product_into(&ops, out, ep);
}

/// A product's outputs of at least this many bytes with a residual
/// added (a block's output in a residual network) are stored past the
/// caches (non-temporal stores) where the last block writes them whole:
/// the next layer and the next shortcut cannot find them in cache anyway,
/// and the lines need not be read in before they are written. ResNet-50,
/// 2 cores (L2 1 MiB a core), thread time of each layer, medians of 3
/// alternating runs against ordinary stores: the layers writing 12.8 MB a
/// part (stage 1, 64 -> 256 channels) take 0.74-0.81 of the time, 6.4 MB
/// 0.89-0.91, 3.2 MB 0.93-0.97; 1.6 MB (stage 4) 1.04-1.07, read back
/// from L2 and L3 by the next layer. Without the residual condition it
/// lost: EfficientNet-B0's expansions (SiLU) went past the caches to a
/// depthwise layer that had found them in L3, 136-141 crops/s against
/// 143-144 (4 alternating pairs). ResNet-50 as a whole, model-only crops/s
/// in 6 alternating runs of one binary, streaming on and off:
/// 30.3-31.8 (median 31.0) against 27.0-30.8 (29.4).
const STREAM_BYTES: usize = 2 << 20;

/// Whether `product_to` streams its `rows x m` outputs from `out` on: a
/// residual, `STREAM_BYTES` or more, and rows of whole vectors from a
/// 64-byte aligned start, so that every panel's stores are aligned
/// vectors (the kernel streams whole 64-wide panels whose activation it
/// applies in registers).
fn streams(ep: &Epilogue, (rows, m): (usize, usize), out: *const f32) -> bool {
    ep.residual.is_some()
        && rows * m * size_of::<f32>() >= STREAM_BYTES
        && m.is_multiple_of(LANES)
        && (out as usize).is_multiple_of(64)
}

/// Rows per task of the parallel product, at most: a multiple of the tile
/// height.
const TASK_ROWS: usize = 96;

/// How many tasks `product` shares `rows` rows out in: one for up to
/// `TASK_ROWS`, else enough for tasks of at most `TASK_ROWS`, rounded up
/// to a multiple of the threads (never more than there are tiles).
fn task_count(rows: usize, threads: usize) -> usize {
    let tiles = rows.div_ceil(TILE_ROWS);
    if rows <= TASK_ROWS {
        return 1;
    }
    tiles
        .div_ceil(TASK_ROWS / TILE_ROWS)
        .next_multiple_of(threads.max(1))
        .min(tiles)
}

/// The first row of task `t` of `tasks` over `rows` rows: whole tiles,
/// each task within one tile of the others (800 rows in 10 tasks: 78 or
/// 84 rows each, not nine of 84 and one of 44).
fn task_start(rows: usize, tasks: usize, t: usize) -> usize {
    let tiles = rows.div_ceil(TILE_ROWS);
    (t * tiles / tasks.max(1) * TILE_ROWS).min(rows)
}

/// `act(x W + bias [+ residual])` as a new `[rows, m]` output, shared by
/// the threads: tasks of up to 96 rows (their count a multiple of the
/// threads), and for few rows (a classifier on one batch) groups of panels
/// as well, so every thread has work. Large outputs with a residual go
/// past the caches (`STREAM_BYTES`).
pub fn product(ops: &Operands, ep: &Epilogue) -> Vec<f32> {
    let len = ops.rows * ops.m;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    product_to(ops, ep, &mut out.spare_capacity_mut()[..len]);
    // SAFETY: `product_to` wrote every element of rows x m.
    unsafe { out.set_len(len) };
    out
}

/// `product` into `out` (`rows x m` values, written whole, none read).
pub fn product_to(ops: &Operands, ep: &Epilogue, out: &mut [std::mem::MaybeUninit<f32>]) {
    ops.check();
    check_epilogue(Some((ep, 0)), ops.rows, ops.m);
    let (rows, m) = (ops.rows, ops.m);
    let len = rows * m;
    assert!(out.len() >= len, "product: output too short");
    if len == 0 {
        return;
    }
    let stream = streams(ep, (rows, m), out.as_ptr().cast());
    let threads = rayon::current_num_threads().max(1);
    let row_tasks = task_count(rows, threads);
    let groups = (2 * threads).div_ceil(row_tasks).min(panels(m)).max(1);
    let per_group = panels(m).div_ceil(groups);
    let dst = SharedOut(out.as_mut_ptr().cast::<f32>());
    (0..row_tasks * groups).into_par_iter().for_each(|t| {
        let (rt, g) = (t / groups, t % groups);
        let r = task_start(rows, row_tasks, rt)..task_start(rows, row_tasks, rt + 1);
        let ps = g * per_group..((g + 1) * per_group).min(panels(m));
        let at = r.start * m;
        let part = ops.rows(r);
        // SAFETY: task (rt, g) writes rows r of panels ps only: disjoint
        // from every other task's; `out` holds rows x m values. Together
        // the tasks write every element (every row range, every panel,
        // every column of each panel).
        unsafe { block(&part, ps, dst.at(at), Some((ep, at)), stream) };
    });
}

/// `packed` (a `[k, m]` packing) with its row `i` multiplied by
/// `scale[i]`, written to `out` (as long): the weights of a product whose
/// inputs are scaled per column, `(x diag(s)) W = x (diag(s) W)`.
pub fn scale_rows(packed: &[f32], (k, m): (usize, usize), scale: &[f32], out: &mut [f32]) {
    let len = packed_len(k, m);
    assert!(
        packed.len() >= len && out.len() >= len && scale.len() >= k,
        "scale_rows: operands too short"
    );
    for p in 0..panels(m) {
        let (_, width, offset) = panel(p, k, m);
        let padded = width.next_multiple_of(LANES);
        let (src, dst) = (
            &packed[offset..][..k * padded],
            &mut out[offset..][..k * padded],
        );
        for ((d, s), &f) in dst
            .chunks_exact_mut(padded)
            .zip(src.chunks_exact(padded))
            .zip(scale)
        {
            for (d, s) in d.iter_mut().zip(s) {
                *d = s * f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::channels_last::program::Act;

    fn rand(rng: &mut crate::util::SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.next_unit() - 0.5).collect()
    }

    /// Parts read in place (overlapping rows, a part longer than one
    /// input block, several panels) give the product of the rows they
    /// make up.
    #[test]
    fn parts_match_the_rows_they_make_up() {
        let mut rng = crate::util::SplitMix64(11);
        let (rows, m) = (13, 70);
        let lens = [300, 7, 40];
        let k: usize = lens.iter().sum();
        // Part i reads rows `strides[i]` apart from its own source.
        let strides = [310, 3, 40];
        let sources: Vec<Vec<f32>> = lens
            .iter()
            .zip(strides)
            .map(|(&len, stride)| rand(&mut rng, (rows - 1) * stride + len))
            .collect();
        let w = rand(&mut rng, k * m);
        let bias = rand(&mut rng, m);
        let packed = pack(&w, m, (k, m), false);
        let mut k0 = 0;
        let parts: Vec<Part> = (0..3)
            .map(|i| {
                let part = Part {
                    x: &sources[i],
                    stride: strides[i],
                    k0,
                    len: lens[i],
                };
                k0 += lens[i];
                part
            })
            .collect();
        let ep = Epilogue {
            bias: &bias,
            residual: None,
            act: Act::Relu,
        };
        let mut y = vec![f32::NAN; rows * m];
        parts_into(&parts, rows, &packed, (k, m), &mut y, Some((&ep, 0)));
        for r in 0..rows {
            let row: Vec<f32> = parts
                .iter()
                .flat_map(|p| p.x[r * p.stride..][..p.len].iter().copied())
                .collect();
            for o in 0..m {
                let dot: f64 = (0..k).map(|i| (row[i] * w[i * m + o]) as f64).sum();
                let want = Act::Relu.apply(dot as f32 + bias[o]);
                let got = y[r * m + o];
                assert!((got - want).abs() < 2e-5, "({r}, {o}): {got} vs {want}");
            }
        }
    }

    /// Every shape class (tile rows 1..6, partial vectors and panels,
    /// several input blocks, k = 0), in parallel and one-thread form, on
    /// this machine's kernel and on the portable one, against an f64 sum;
    /// each activation the AVX-512 stores apply (or leave to a pass over
    /// the block), with and without a residual, and a NaN input row that
    /// each keeps or drops as the reference does.
    #[test]
    fn tasks_share_the_rows_evenly_in_whole_tiles() {
        for threads in [1, 2, 3, 16] {
            for rows in [1, 6, 95, 96, 97, 200, 800, 801, 12544] {
                let tasks = task_count(rows, threads);
                // One task for a few rows; else a multiple of the threads
                // (unless there are fewer tiles than that).
                let shared = tasks.is_multiple_of(threads) || tasks == rows.div_ceil(TILE_ROWS);
                assert!(
                    tasks >= 1 && (rows <= TASK_ROWS || shared),
                    "{rows}: {tasks}"
                );
                let starts: Vec<usize> = (0..=tasks).map(|t| task_start(rows, tasks, t)).collect();
                assert_eq!(
                    (starts[0], starts[tasks]),
                    (0, rows),
                    "{rows} rows, {threads} threads"
                );
                let sizes: Vec<usize> = starts.windows(2).map(|w| w[1] - w[0]).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(
                    *hi <= TASK_ROWS.max(TILE_ROWS) && hi - lo <= TILE_ROWS,
                    "{rows}: {sizes:?}"
                );
                // Every task but the last starts and ends on a tile.
                assert!(
                    starts[..tasks].iter().all(|s| s % TILE_ROWS == 0),
                    "{rows}: {starts:?}"
                );
            }
        }
    }

    #[test]
    fn product_matches_the_f64_sum() {
        let mut rng = crate::util::SplitMix64(5);
        let cases = [
            (1, 3, 5),
            (7, 0, 20),
            (13, 300, 64),
            (200, 40, 130),
            (11, 600, 72),
            (97, 17, 1000),
        ];
        let acts = [Act::Silu, Act::Identity, Act::Relu, Act::Relu6, Act::Gelu];
        for (case, (rows, k, m)) in cases.into_iter().enumerate() {
            let (mut x, w, bias, res) = (
                rand(&mut rng, rows * k),
                rand(&mut rng, k * m),
                rand(&mut rng, m),
                rand(&mut rng, rows * m),
            );
            if k > 0 {
                x[(rows - 1) * k] = f32::NAN;
            }
            let packed = pack(&w, m, (k, m), false);
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
            let act = acts[case % acts.len()];
            for residual in [Some(&res[..]), None] {
                let ep = Epilogue {
                    bias: &bias,
                    residual,
                    act,
                };
                let want = |i: usize, j: usize| {
                    let dot: f64 = (0..k).map(|t| (x[i * k + t] * w[t * m + j]) as f64).sum();
                    act.apply(dot as f32 + bias[j] + residual.map_or(0.0, |r| r[i * m + j]))
                };
                let parallel = product(&ops, &ep);
                let mut single = vec![f32::NAN; rows * m];
                product_into(&ops, &mut single, Some((&ep, 0)));
                let mut portable = vec![f32::NAN; rows * m];
                // SAFETY: `portable` holds rows x m values.
                unsafe {
                    portable_block(&ops, 0..panels(m), portable.as_mut_ptr(), Some((&ep, 0)))
                };
                for (name, y) in [
                    ("parallel", &parallel),
                    ("one thread", &single),
                    ("portable", &portable),
                ] {
                    for i in 0..rows {
                        for j in 0..m {
                            let (got, want) = (y[i * m + j], want(i, j));
                            assert!(
                                (got - want).abs() < 2e-5 || (got.is_nan() && want.is_nan()),
                                "{name} {rows}x{k}x{m}, {act:?}, residual {}: \
                                 ({i}, {j}): {got} vs {want}",
                                residual.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn streamed_outputs_match_the_f64_sum() {
        // 2.3 MB of outputs with a residual: streamed where the output is
        // 64-byte aligned, in whole panels (the 16-wide last one is not).
        let (rows, k, m) = (2100, 70, 272);
        assert!(m % PANEL != 0);
        let mut rng = crate::util::SplitMix64(9);
        let (x, w, bias, res) = (
            rand(&mut rng, rows * k),
            rand(&mut rng, k * m),
            rand(&mut rng, m),
            rand(&mut rng, rows * m),
        );
        let packed = pack(&w, m, (k, m), false);
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
            act: Act::Relu,
        };
        let mut buf = vec![std::mem::MaybeUninit::new(f32::NAN); rows * m + 32];
        let aligned = buf.as_ptr().align_offset(64);
        let start = buf[aligned..].as_ptr().cast::<f32>();
        assert!(streams(&ep, (rows, m), start));
        assert!(!streams(
            &Epilogue {
                residual: None,
                ..ep
            },
            (rows, m),
            start
        ));
        assert!(!streams(&ep, (rows, m), start.wrapping_add(1)));
        // Aligned (streamed) and one value off (stored as usual).
        for at in [aligned, aligned + 1] {
            product_to(&ops, &ep, &mut buf[at..at + rows * m]);
            for i in 0..rows {
                for j in 0..m {
                    // SAFETY: `product_to` wrote all rows x m values.
                    let got = unsafe { buf[at + i * m + j].assume_init() };
                    let dot: f64 = (0..k).map(|t| (x[i * k + t] * w[t * m + j]) as f64).sum();
                    let want = Act::Relu.apply(dot as f32 + bias[j] + res[i * m + j]);
                    assert!(
                        (got - want).abs() < 2e-5,
                        "offset {}: ({i}, {j}): {got} vs {want}",
                        at - aligned
                    );
                }
            }
        }
    }
}
