//! Depthwise convolutions (one k x k filter per channel: EfficientNet's
//! 3x3 and 5x5 layers, ConvNeXt's 7x7) over NHWC maps, one output row per
//! task. On AVX-512 the pixels whose taps all lie inside the input go in
//! runs of a few pixels by 16 channels: the sums stay in registers over
//! every tap, each tap vector is loaded once per run, and the bias,
//! residual and activation are applied before the one store. The border
//! pixels, and the shapes the runs do not take, sum tap by tap over the
//! channels in place.

use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::{avx512, epilogue_any, Epilogue, Input, BASELINE_FMA};
use crate::models::channels_last::geometry::ConvGeometry;

/// `act(depthwise(x) + bias [+ residual])`, `wt` the KRSC filters
/// `[c, kh, kw, 1]`.
pub fn conv(g: &ConvGeometry, input: &Input, n: usize, wt: &[f32], ep: Epilogue) -> Vec<f32> {
    let c = g.c_in;
    let [kh, kw] = g.kernel;
    // To one row of c taps per (i, j): the loops run over channels,
    // contiguous in both the input and the taps.
    let mut taps = vec![0f32; kh * kw * c];
    for ch in 0..c {
        for t in 0..kh * kw {
            taps[t * c + ch] = wt[ch * kh * kw + t];
        }
    }
    let layer = Layer {
        g,
        input,
        taps: &taps,
        ep: &ep,
    };
    let (oh, ow) = (input.oh, input.ow);
    let len = n * oh * ow * c;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(ow * c)
        .enumerate()
        .for_each(|(r, o)| {
            let row = Row {
                b: r / oh,
                oy: r % oh,
                first: r * ow * c,
            };
            let done = runs(o, &row, &layer);
            pixels(o, &row, done, &layer);
        });
    // SAFETY: each row task wrote every value of its row: the runs their
    // columns, `pixels` the others.
    unsafe { out.set_len(len) };
    out
}

/// What every row task reads: the geometry, the input, the taps (`[kh,
/// kw, c]`: a row of c per tap) and the epilogue.
struct Layer<'a> {
    g: &'a ConvGeometry,
    input: &'a Input<'a>,
    taps: &'a [f32],
    ep: &'a Epilogue<'a>,
}

/// Which output row a task writes: image `b`, row `oy`, whose first value
/// is element `first` of the layer's output (for the residual).
struct Row {
    b: usize,
    oy: usize,
    first: usize,
}

/// The output columns whose taps all lie inside the input's `w` columns.
fn inner_columns(g: &ConvGeometry, w: usize, ow: usize) -> Range<usize> {
    let (s, pad) = (g.stride[1].max(1), g.pad[1]);
    let span = (g.kernel[1].max(1) - 1) * g.dilation[1] + 1;
    let lo = pad.div_ceil(s);
    // Column ox's last tap is input column ox s - pad + span - 1.
    let hi = if w + pad >= span {
        ((w + pad - span) / s + 1).min(ow)
    } else {
        0
    };
    lo.min(hi)..hi
}

/// The columns of the row that the AVX-512 runs wrote (none where the CPU
/// or the shape does not take them).
fn runs(o: &mut [MaybeUninit<f32>], row: &Row, layer: &Layer) -> Range<usize> {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { avx512_runs::runs(o, row, layer) };
    }
    let _ = (o, row, layer);
    0..0
}

#[cfg(target_arch = "x86_64")]
mod avx512_runs {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    use super::super::lanes::InRegisters;
    use super::{inner_columns, Layer, Row};

    const LANES: usize = 16;

    /// What the runs of one output row read: the input rows inside the
    /// image with the filter row that reads each (the zero padding left
    /// out), the taps, the bias and residual from the row's first
    /// output, and the activation.
    struct Run {
        rows: [(usize, *const f32); 7],
        count: usize,
        taps: *const f32,
        c: usize,
        pad: usize,
        bias: *const f32,
        residual: *const f32,
        act: InRegisters,
        out: *mut f32,
    }

    /// `super::runs` on AVX-512: square 3x3 and 5x5 filters of stride 1
    /// or 2 and 7x7 of stride 1, undilated, over channels in whole
    /// vectors, with an activation the registers apply.
    ///
    /// # Safety
    /// A CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn runs(
        o: &mut [MaybeUninit<f32>],
        row: &Row,
        layer: &Layer,
    ) -> Range<usize> {
        let Layer { g, input, taps, ep } = *layer;
        let c = input.c;
        let cols = inner_columns(g, input.w, input.ow);
        let Some(act) = InRegisters::of(ep.act) else {
            return 0..0;
        };
        let k = g.kernel[0];
        let takes = g.kernel == [k, k]
            && matches!((k, g.stride[1]), (3, 1 | 2) | (5, 1 | 2) | (7, 1))
            && g.dilation == [1, 1]
            && c.is_multiple_of(LANES)
            && !cols.is_empty();
        if !takes {
            return 0..0;
        }
        // Every read below stays inside these (what the pointer
        // arithmetic relies on).
        let row_len = input.w * c;
        assert!(
            o.len() == input.ow * c
                && taps.len() >= k * k * c
                && ep.bias.len() >= c
                && ep.residual.is_none_or(|r| r.len() >= row.first + o.len())
                && input.x.len() >= (row.b + 1) * input.h * row_len,
            "depthwise: operands too short"
        );
        let mut run = Run {
            rows: [(0, std::ptr::null()); 7],
            count: 0,
            taps: taps.as_ptr(),
            c,
            pad: g.pad[1],
            bias: ep.bias.as_ptr(),
            residual: ep
                .residual
                .map_or(std::ptr::null(), |r| r[row.first..].as_ptr()),
            act,
            out: o.as_mut_ptr().cast::<f32>(),
        };
        for i in 0..k {
            let iy = (row.oy * g.stride[0] + i) as isize - g.pad[0] as isize;
            if iy >= 0 && (iy as usize) < input.h {
                let at = (row.b * input.h + iy as usize) * row_len;
                run.rows[run.count] = (i, input.x[at..].as_ptr());
                run.count += 1;
            }
        }
        // SAFETY: AVX-512F; the columns' taps lie inside the rows
        // (`inner_columns`), the channels in whole vectors, the lengths
        // as asserted.
        unsafe {
            match (k, g.stride[1]) {
                (3, 1) => run.columns::<3, 1, 8>(cols.clone()),
                (3, 2) => run.columns::<3, 2, 6>(cols.clone()),
                (5, 1) => run.columns::<5, 1, 8>(cols.clone()),
                (5, 2) => run.columns::<5, 2, 4>(cols.clone()),
                _ => run.columns::<7, 1, 4>(cols.clone()),
            }
        }
        cols
    }

    impl Run {
        /// Output columns `cols` of a `K x K`, stride-`S` filter, `P`
        /// pixels at a time, then one at a time.
        ///
        /// # Safety
        /// As `runs` made sure.
        #[inline(always)]
        unsafe fn columns<const K: usize, const S: usize, const P: usize>(
            &self,
            cols: Range<usize>,
        ) {
            let mut ox = cols.start;
            // SAFETY: columns inside `cols`, as the caller promised.
            unsafe {
                while ox + P <= cols.end {
                    self.pixels::<K, S, P>(ox);
                    ox += P;
                }
                while ox < cols.end {
                    self.pixels::<K, S, 1>(ox);
                    ox += 1;
                }
            }
        }

        /// Pixels `ox..ox + P`, 16 channels at a time: the sums over
        /// every tap in registers, then the epilogue and one store.
        ///
        /// # Safety
        /// As `columns`.
        #[inline(always)]
        unsafe fn pixels<const K: usize, const S: usize, const P: usize>(&self, ox: usize) {
            let c = self.c;
            // The run's first input column (its first pixel's first tap).
            let x0 = ox * S - self.pad;
            // SAFETY: input columns x0..x0 + (P - 1) S + K and output
            // columns ox..ox + P lie inside their rows, channels ch..ch
            // + 16 inside c (the caller's promise).
            unsafe {
                for ch in (0..c).step_by(LANES) {
                    let mut acc = [_mm512_setzero_ps(); P];
                    for &(i, src) in &self.rows[..self.count] {
                        let src = src.add(x0 * c + ch);
                        let taps = self.taps.add(i * K * c + ch);
                        for j in 0..K {
                            let t = _mm512_loadu_ps(taps.add(j * c));
                            for (p, acc) in acc.iter_mut().enumerate() {
                                let x = _mm512_loadu_ps(src.add((p * S + j) * c));
                                *acc = _mm512_fmadd_ps(x, t, *acc);
                            }
                        }
                    }
                    let b = _mm512_loadu_ps(self.bias.add(ch));
                    for (p, acc) in acc.into_iter().enumerate() {
                        let at = (ox + p) * c + ch;
                        // As `epilogue_any`: the sum plus (bias + residual).
                        let add = if self.residual.is_null() {
                            b
                        } else {
                            _mm512_add_ps(b, _mm512_loadu_ps(self.residual.add(at)))
                        };
                        let v = self.act.apply(_mm512_add_ps(acc, add));
                        _mm512_storeu_ps(self.out.add(at), v);
                    }
                }
            }
        }
    }
}

widest_vectors! {
    /// The row's pixels outside `done` (the runs'), tap by tap over the
    /// channels, each pixel's epilogue as soon as its taps are in: any
    /// kernel, stride, dilation and padding.
    fn pixels / pixels_avx512 / pixels_avx2
        => pixels_any::<FUSED>(o: &mut [MaybeUninit<f32>], row: &Row, done: Range<usize>, layer: &Layer)
}

#[inline(always)]
fn pixels_any<const FUSED: bool>(
    o: &mut [MaybeUninit<f32>],
    row: &Row,
    done: Range<usize>,
    layer: &Layer,
) {
    let Layer { g, input, taps, ep } = *layer;
    let (c, [kh, kw]) = (input.c, g.kernel);
    for ox in (0..input.ow).filter(|ox| !done.contains(ox)) {
        let acc = zeroed(&mut o[ox * c..][..c]);
        for i in 0..kh {
            let iy = (row.oy * g.stride[0] + i * g.dilation[0]) as isize - g.pad[0] as isize;
            for j in 0..kw {
                let ix = (ox * g.stride[1] + j * g.dilation[1]) as isize - g.pad[1] as isize;
                if let Some(src) = input.at(row.b, iy, ix) {
                    let tap = &taps[(i * kw + j) * c..][..c];
                    for ((a, s), t) in acc.iter_mut().zip(src).zip(tap) {
                        *a += s * t;
                    }
                }
            }
        }
        let residual = ep.residual.map(|r| &r[row.first + ox * c..][..c]);
        epilogue_any::<FUSED>(acc, ep.bias, residual, ep.act);
    }
}

/// `part` with every value written as 0.0, as initialised values.
fn zeroed(part: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in part.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was just written; MaybeUninit<f32> has f32's
    // layout.
    unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::channels_last::program::Act;

    /// Every shape the AVX-512 runs take (runs of P pixels and single
    /// ones, borders on both sides, rows in the padding), and shapes they
    /// leave to the pixel loop (channels not in whole vectors, dilation),
    /// against the definition summed in f64, with and without a residual.
    #[test]
    fn depthwise_matches_the_direct_sum() {
        let mut rng = crate::util::SplitMix64(11);
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_unit() * 2.0 - 1.0).collect() };
        let mut shapes: Vec<ConvGeometry> = [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1)]
            .iter()
            .flat_map(|&(k, s)| [32, 48, 24].map(|c| ConvGeometry::depthwise(c, k, s, k / 2)))
            .collect();
        shapes.push(ConvGeometry {
            dilation: [2, 2],
            ..ConvGeometry::depthwise(32, 3, 1, 2)
        });
        let (n, h, w) = (2, 7, 29);
        for g in shapes {
            let c = g.c_in;
            let [kh, kw] = g.kernel;
            let (oh, ow) = g.out_hw(h, w).unwrap();
            let x = rand(n * h * w * c);
            let wt = rand(c * kh * kw);
            let bias = rand(c);
            let res = rand(n * oh * ow * c);
            let input = Input {
                x: &x,
                h,
                w,
                c,
                oh,
                ow,
            };
            for residual in [None, Some(&res[..])] {
                let ep = Epilogue {
                    bias: &bias,
                    residual,
                    act: Act::Silu,
                };
                let got = conv(&g, &input, n, &wt, ep);
                let mut worst = 0f64;
                for (e, got) in got.iter().enumerate() {
                    let (ch, ox, oy, b) = (e % c, e / c % ow, e / c / ow % oh, e / c / ow / oh);
                    let mut sum = f64::from(bias[ch]) + residual.map_or(0.0, |r| f64::from(r[e]));
                    for i in 0..kh {
                        for j in 0..kw {
                            let iy =
                                (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pad[0] as isize;
                            let ix =
                                (ox * g.stride[1] + j * g.dilation[1]) as isize - g.pad[1] as isize;
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                let at = ((b * h + iy as usize) * w + ix as usize) * c + ch;
                                sum += f64::from(x[at]) * f64::from(wt[(ch * kh + i) * kw + j]);
                            }
                        }
                    }
                    let want = sum / (1.0 + (-sum).exp());
                    worst = worst.max((f64::from(*got) - want).abs());
                }
                assert!(worst < 1e-5, "{g} residual {}: {worst}", residual.is_some());
            }
        }
    }
}
