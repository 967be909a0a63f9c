//! The channels-last ops on the CPU in f32: the fused plans the GPU runs,
//! on our packed product (`product`). A convolution is one product per
//! block of output pixels (NHWC im2col into a per-thread buffer; a 1x1
//! stride-1 convolution reads the input rows directly, an RGB stem its
//! tap rows in place; a 3x3 or 5x5 stride-1 one goes by Winograd,
//! `winograd`), a depthwise convolution in runs of pixels held in
//! registers (`depthwise`), a linear layer one product, attention two per
//! image and head; the bias, residual and activation are applied to each
//! block while it is still in cache. Other formats take the references in
//! `ops`.

use rayon::prelude::*;
use std::cell::RefCell;

use super::geometry::ConvGeometry;
use super::program::Act;

thread_local! {
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rows of a convolution's im2col block: at least four blocks per thread
/// (the product inside a block runs on one thread), at most 16 MiB of
/// columns, a multiple of the product's 6-row tiles.
fn block_rows(k: usize, total: usize) -> usize {
    const MAX_COLUMNS: usize = 1 << 22;
    let per_task = total.div_ceil(4 * rayon::current_num_threads().max(1));
    balanced(total, per_task.min(MAX_COLUMNS / k.max(1)), 6)
}

/// Items per task when `items` are shared out in tasks of at most
/// `at_most`: as many tasks as that takes, rounded up to a multiple of the
/// threads (9 equal tasks on 2 threads keep one idle for the ninth, 10%
/// of the time), each a multiple of `align` items.
fn balanced(items: usize, at_most: usize, align: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks = items.div_ceil(at_most.max(1)).next_multiple_of(threads);
    let align = align.max(1);
    items
        .div_ceil(tasks.max(1))
        .next_multiple_of(align)
        .max(align)
}

/// An output pointer that parallel tasks share, each writing its own
/// disjoint part (rows and panels of a product, a Winograd block's
/// pixels): the users say which.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// The output at element `i` (a method, so closures take the whole
    /// `Send` wrapper rather than its raw field).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

// SAFETY: every user writes a part no other task writes or reads.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// The activation in f32 as the epilogues compute it (`FUSED`: with fused
/// multiply-adds): `exp` by range reduction and Cephes' polynomial (within
/// 2 ulp), erf by Abramowitz and Stegun 7.1.26 (within 1.5e-7), both
/// branch-free so the loops vectorise.
#[cfg(test)]
fn act_fast<const FUSED: bool>(act: Act, x: f32) -> f32 {
    let mut v = [x];
    apply::<FUSED>(&mut v, act);
    v[0]
}

/// Whether the baseline build has fused multiply-adds (x86-64 has them
/// from AVX2 on only: there `mul_add` would be a library call).
const BASELINE_FMA: bool = cfg!(any(target_feature = "fma", target_arch = "aarch64"));

/// Whether the AVX-512 kernels (`product`'s tiles, `depthwise`'s runs)
/// run here.
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

/// `a * b + c`: one fused instruction where the caller is compiled with
/// FMA (`FUSED`), which halves the activations' polynomial work; two
/// otherwise.
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// Round to nearest by adding 1.5 * 2^23: no `floor` call, which the
/// baseline x86-64 target cannot inline.
const EXP_ROUND: f32 = 12_582_912.0;
/// -ln 2 split in two, so r = x - n ln 2 keeps its low bits.
const LN2_HI: f32 = -0.693_359_4;
const LN2_LO: f32 = 2.121_944_4e-4;
/// Cephes' polynomial for `(exp(r) - 1 - r) / r^2`, highest power first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `exp` within 2 ulp (`product`'s AVX-512 stores compute the same on 16
/// lanes, operation for operation).
#[inline(always)]
fn exp_fast<const FUSED: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = madd::<FUSED>(x, LOG2_E, EXP_ROUND);
    let n = t - EXP_ROUND;
    // ... and n as an integer from t's low mantissa bits: no saturating
    // float-to-int cast, which does not vectorise.
    let ni = t.to_bits().wrapping_sub(EXP_ROUND.to_bits()) as i32;
    let r = madd::<FUSED>(n, LN2_LO, madd::<FUSED>(n, LN2_HI, x));
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = madd::<FUSED>(p, r, *c);
    }
    let y = madd::<FUSED>(p * r, r, r + 1.0);
    y * f32::from_bits(((ni + 127) << 23) as u32)
}

#[inline(always)]
fn erf_fast<const FUSED: bool>(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / madd::<FUSED>(0.327_591_1, a, 1.0);
    let mut poly = 1.061_405_4_f32;
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
        poly = madd::<FUSED>(poly, t, c);
    }
    let y = madd::<FUSED>(-poly * t, exp_fast::<FUSED>(-a * a), 1.0);
    y.copysign(x)
}

#[inline(always)]
fn map(v: &mut [f32], f: impl Fn(f32) -> f32) {
    for x in v {
        *x = f(*x);
    }
}

/// `act` over `v`, one monomorphic loop per activation.
#[inline(always)]
fn apply<const FUSED: bool>(v: &mut [f32], act: Act) {
    let exp = exp_fast::<FUSED>;
    match act {
        Act::Identity => {}
        Act::Relu => map(v, |x| x.max(0.0)),
        Act::Relu6 => map(v, |x| x.clamp(0.0, 6.0)),
        Act::Silu => map(v, |x| x / (1.0 + exp(-x))),
        Act::Gelu => map(v, |x| {
            0.5 * x * (1.0 + erf_fast::<FUSED>(x * std::f32::consts::FRAC_1_SQRT_2))
        }),
        Act::QuickGelu => map(v, |x| x / (1.0 + exp(-1.702 * x))),
        Act::Sigmoid => map(v, |x| 1.0 / (1.0 + exp(-x))),
    }
}

/// `$name(args)` calls `$any(args)` compiled for AVX-512, else for AVX2 +
/// FMA, else for the baseline, chosen at run time: the baseline x86-64
/// target has 4-wide vectors only, and these loops are what the fused
/// kernels spend their time in besides the products.
macro_rules! widest_vectors {
    // `$any::<FUSED>`: the vector variants with fused multiply-adds, the
    // baseline with them where it has them (`BASELINE_FMA`).
    ($(#[$doc:meta])* fn $name:ident / $avx512:ident / $avx2:ident => $any:ident::<FUSED>($($arg:ident: $ty:ty),*)) => {
        widest_vectors!(@ $(#[$doc])* fn $name / $avx512 / $avx2
            => ($any::<true>, $any::<BASELINE_FMA>)($($arg: $ty),*));
    };
    ($(#[$doc:meta])* fn $name:ident / $avx512:ident / $avx2:ident => $any:ident($($arg:ident: $ty:ty),*)) => {
        widest_vectors!(@ $(#[$doc])* fn $name / $avx512 / $avx2 => ($any, $any)($($arg: $ty),*));
    };
    (@ $(#[$doc:meta])* fn $name:ident / $avx512:ident / $avx2:ident
        => ($wide:path, $any:path)($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { $avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $any($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $avx512($($arg: $ty),*) {
            $wide($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $ty),*) {
            $wide($($arg),*)
        }
    };
}

mod depthwise;
#[cfg(target_arch = "x86_64")]
mod lanes;
mod product;
mod winograd;

widest_vectors! {
    /// `out[i] = act(out[i] + bias[i % c] + residual[i])` over whole rows.
    fn epilogue / epilogue_avx512 / epilogue_avx2
        => epilogue_any::<FUSED>(out: &mut [f32], bias: &[f32], residual: Option<&[f32]>, act: Act)
}

#[inline(always)]
fn epilogue_any<const FUSED: bool>(
    out: &mut [f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Act,
) {
    let c = bias.len();
    match residual {
        Some(r) => {
            for (row, rrow) in out.chunks_exact_mut(c).zip(r.chunks_exact(c)) {
                for ((v, b), r) in row.iter_mut().zip(bias).zip(rrow) {
                    *v += b + r;
                }
                apply::<FUSED>(row, act);
            }
        }
        None => {
            for row in out.chunks_exact_mut(c) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
                apply::<FUSED>(row, act);
            }
        }
    }
}

/// What a layer applies to each output row as it writes it:
/// `act(y + bias[c] + residual)`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    pub bias: &'a [f32],
    /// The whole output's residual, same layout as the output.
    pub residual: Option<&'a [f32]>,
    pub act: Act,
}

impl Epilogue<'_> {
    /// Apply it to `out`, the output's values from element `at` on.
    fn apply(&self, out: &mut [f32], at: usize) {
        epilogue(out, self.bias, self.residual.map(|r| &r[at..]), self.act);
    }
}

/// A layer's `[m, k]` weight matrix (`m` outputs, `k` inputs) as a kernel
/// reads it: the checkpoint's rows, or prepared once at load by `net` on
/// the CPU (`prepare`, `winograd_filters`), so that no call packs them.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    pub values: &'a [f32],
    pub order: WeightOrder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightOrder {
    /// `w[o * k + i]`: as read from the checkpoint (KRSC for a convolution).
    Rows,
    /// Packed for `product` (`prepare`).
    Packed,
    /// A 3x3 or 5x5 stride-1 convolution's filters transformed for
    /// Winograd F(4x4, 3x3) or F(2x2, 5x5) and packed (`winograd_filters`).
    Winograd,
}

impl Weights<'_> {
    /// The `[k, m]` product operand packed: as given, or packed now.
    fn packed(&self, k: usize, m: usize) -> std::borrow::Cow<'_, [f32]> {
        match self.order {
            WeightOrder::Packed => std::borrow::Cow::Borrowed(self.values),
            _ => std::borrow::Cow::Owned(prepare(self.values, k, m)),
        }
    }
}

/// A dense layer's `[m, k]` rows (KRSC for a convolution) packed for the
/// product, once at load: what the kernels take as `WeightOrder::Packed`.
pub fn prepare(rows: &[f32], k: usize, m: usize) -> Vec<f32> {
    assert!(rows.len() >= m * k, "weights too short for {m} x {k}");
    product::pack(rows, k, (k, m), true)
}

/// `prepare` for `m` rows whose inputs are channels first, `[c, h, w]`
/// (a checkpoint's OIHW filters; a linear layer after PyTorch's NCHW
/// flatten), where the kernels read `[h, w, c]` (KRSC): each row reordered
/// as it is packed, so loading never holds a reordered copy of the whole
/// matrix beside the packing (VGG-16's first classifier layer is 411 MB).
pub fn prepare_channels_first(
    rows: &[f32],
    m: usize,
    (c, h, w): (usize, usize, usize),
) -> Vec<f32> {
    let (plane, k) = (h * w, c * h * w);
    assert!(
        rows.len() >= m * k,
        "weights too short for {m} x {c} x {h} x {w}"
    );
    product::pack_columns(k, m, |o, column| {
        for (ch, taps) in rows[o * k..][..k].chunks_exact(plane.max(1)).enumerate() {
            for (p, &v) in taps.iter().enumerate() {
                column[p * c + ch] = v;
            }
        }
    })
}

/// Values in `prepare`'s output for `m` outputs of `k` inputs.
pub fn prepared_len(k: usize, m: usize) -> usize {
    product::packed_len(k, m)
}

/// Values in convolution `g`'s filters prepared as `order`; `None` for
/// the checkpoint's rows (or an order `g` cannot take).
pub fn prepared_conv_len(g: &ConvGeometry, order: WeightOrder) -> Option<usize> {
    let [kh, kw] = g.kernel;
    match order {
        WeightOrder::Rows => None,
        WeightOrder::Packed => Some(prepared_len(kh * kw * g.c_in, g.c_out)),
        WeightOrder::Winograd => Some(36 * prepared_len(g.c_in, g.c_out)),
    }
}

/// `out[rows, m] = act(x[rows, k] w[m, k]^T + bias [+ residual])`, the
/// threads sharing the rows (and for few rows the outputs).
pub fn linear(
    x: &[f32],
    w: Weights,
    ep: Epilogue,
    (rows, k, m): (usize, usize, usize),
) -> Vec<f32> {
    let packed = w.packed(k, m);
    product::product(
        &product::Operands {
            x,
            stride: k,
            rows,
            w: &packed,
            k,
            m,
        },
        &ep,
    )
}

/// The NHWC input `x` `[n, h, w, c]` and where output pixel `p` of an
/// `oh x ow` map reads it.
struct Input<'a> {
    x: &'a [f32],
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
}

impl Input<'_> {
    /// Output pixel `p`'s image, row and column.
    fn pixel(&self, p: usize) -> (usize, usize, usize) {
        let per = self.oh * self.ow;
        (p / per, (p % per) / self.ow, p % self.ow)
    }

    /// The `len` pixels from (b, iy, ix) on, all channels, or `None` unless
    /// all are inside the image.
    #[inline(always)]
    fn run(&self, b: usize, iy: isize, ix: isize, len: usize) -> Option<&[f32]> {
        (iy >= 0 && ix >= 0 && (iy as usize) < self.h && ix as usize + len <= self.w).then(|| {
            let at = ((b * self.h + iy as usize) * self.w + ix as usize) * self.c;
            &self.x[at..at + len * self.c]
        })
    }

    /// The input channels at (b, iy, ix), or `None` outside the image.
    #[inline(always)]
    fn at(&self, b: usize, iy: isize, ix: isize) -> Option<&[f32]> {
        (iy >= 0 && ix >= 0 && (iy as usize) < self.h && (ix as usize) < self.w).then(|| {
            let at = ((b * self.h + iy as usize) * self.w + ix as usize) * self.c;
            &self.x[at..at + self.c]
        })
    }
}

/// The filters of a convolution the Winograd path computes (3x3 or 5x5,
/// stride 1, dense), transformed and packed once: what `conv` takes as
/// `WeightOrder::Winograd`. `None` for any other geometry. `krsc`: the
/// checkpoint's KRSC filters.
pub fn winograd_filters(g: &ConvGeometry, krsc: &[f32]) -> Option<Vec<f32>> {
    winograd::applies(g).then(|| winograd::filters(krsc, g.c_in, g.c_out, g.kernel[0]))
}

/// `act(conv(x) + bias [+ residual])` for f32 NHWC `x` `[n, h, w, c_in]`
/// and KRSC `wt` (or, dense only, as `prepare` or `winograd_filters` made
/// them); 3x3 and 5x5 stride-1 convolutions by Winograd. `None` for a
/// grouped (not depthwise) geometry, or weights prepared for another path.
pub fn conv(
    g: &ConvGeometry,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    wt: Weights,
    ep: Epilogue,
) -> Option<Vec<f32>> {
    let (oh, ow) = g.out_hw(h, w).ok()?;
    let input = Input {
        x,
        h,
        w,
        c: g.c_in,
        oh,
        ow,
    };
    let dense = g.groups == 1;
    match wt.order {
        WeightOrder::Winograd if winograd::applies(g) => {
            Some(winograd::conv(g, &input, n, wt.values, ep))
        }
        WeightOrder::Rows if winograd::applies(g) => {
            let u = winograd::filters(wt.values, g.c_in, g.c_out, g.kernel[0]);
            Some(winograd::conv(g, &input, n, &u, ep))
        }
        WeightOrder::Packed | WeightOrder::Rows if dense && !winograd::applies(g) => {
            Some(dense_conv(g, &input, n, wt, ep))
        }
        WeightOrder::Rows if g.groups == g.c_in && g.c_out == g.c_in => {
            Some(depthwise::conv(g, &input, n, wt.values, ep))
        }
        _ => None,
    }
}

/// Whether `gated_conv` folds an input gate into the weights of `g` on
/// maps of `pixels` pixels: a pointwise layer with packed weights and
/// fewer (padded) outputs than pixels, where scaling the `k x m` weights
/// once per image costs less than gating the `pixels x k` input.
fn folds_gate(g: &ConvGeometry, order: WeightOrder, pixels: usize) -> bool {
    pointwise(g) && order == WeightOrder::Packed && g.c_out.next_multiple_of(16) < pixels
}

/// A 1x1, stride-1, unpadded, ungrouped convolution: a linear layer over
/// the pixels.
fn pointwise(g: &ConvGeometry) -> bool {
    g.kernel == [1, 1] && g.stride == [1, 1] && g.pad == [0, 0] && g.groups == 1
}

/// `conv` of `x` multiplied per image and input channel by `gate` (`[n,
/// c_in]`, squeeze-excite): where `folds_gate`, the gate scales a copy of
/// the packed weights for each image instead of a gated copy of `x`;
/// otherwise `x` is gated first.
pub fn gated_conv(
    g: &ConvGeometry,
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    gate: &[f32],
    wt: Weights,
    ep: Epilogue,
) -> Option<Vec<f32>> {
    let (pixels, k, m) = (h * w, g.c_in, g.c_out);
    if !folds_gate(g, wt.order, pixels) {
        return conv(g, &self::gate(x, gate, (n, pixels, k)), (n, h, w), wt, ep);
    }
    assert!(
        x.len() >= n * pixels * k && gate.len() >= n * k,
        "gated conv: inputs too short"
    );
    let len = n * pixels * m;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return Some(out);
    }
    let mut scaled = vec![0f32; prepared_len(k, m)];
    for (b, image) in out.spare_capacity_mut()[..len]
        .chunks_mut(pixels * m)
        .enumerate()
    {
        product::scale_rows(wt.values, (k, m), &gate[b * k..][..k], &mut scaled);
        let ops = product::Operands {
            x: &x[b * pixels * k..],
            stride: k,
            rows: pixels,
            w: &scaled,
            k,
            m,
        };
        let ep = Epilogue {
            residual: ep.residual.map(|r| &r[b * pixels * m..]),
            ..ep
        };
        product::product_to(&ops, &ep, image);
    }
    // SAFETY: `product_to` wrote each image's pixels x m values.
    unsafe { out.set_len(len) };
    Some(out)
}

/// Whether `conv` computes `g` from filters `prepare`d for the product
/// (dense, not Winograd) on the CPU.
pub fn takes_prepared(g: &ConvGeometry) -> bool {
    g.groups == 1 && !winograd::applies(g)
}

fn dense_conv(g: &ConvGeometry, input: &Input, n: usize, wt: Weights, ep: Epilogue) -> Vec<f32> {
    let (m, c) = (g.c_out, g.c_in);
    let pixels = n * input.oh * input.ow;
    let [kh, kw] = g.kernel;
    let k = kh * kw * c;
    // A 1x1 stride-1 convolution is a linear layer over the pixels.
    if pointwise(g) {
        return linear(input.x, wt, ep, (pixels, c, m));
    }
    let packed = wt.packed(k, m);
    if reads_in_place(g, k, m) {
        return conv_in_place(g, input, n, &packed, (k, m), ep);
    }
    let mut out = vec![0f32; pixels * m];
    let block = block_rows(k, pixels);
    out.par_chunks_mut(block * m)
        .enumerate()
        .for_each(|(bi, o)| im2col_product(o, bi * block, (input, g), &packed, &ep));
    out
}

/// Output pixels `p0..` (as many as `out` holds rows of `m`) by im2col
/// into this thread's buffer and one product with the packed filters.
fn im2col_product(
    out: &mut [f32],
    p0: usize,
    (input, g): (&Input, &ConvGeometry),
    packed: &[f32],
    ep: &Epilogue,
) {
    let (k, m) = (g.kernel[0] * g.kernel[1] * g.c_in, g.c_out);
    let rows = out.len() / m;
    COLUMNS.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < rows * k {
            buf.resize(rows * k, 0.0);
        }
        let cols = &mut buf[..rows * k];
        im2col(cols, input, g, p0);
        let ops = product::Operands {
            x: cols,
            stride: k,
            rows,
            w: packed,
            k,
            m,
        };
        product::product_into(&ops, out, Some((ep, p0 * m)));
    });
}

/// The im2col rows of output pixels `p0..` into `cols`, one row of
/// `kh kw c` values each in (kh, kw, c) order: the KRSC weight's.
fn im2col(cols: &mut [f32], input: &Input, g: &ConvGeometry, p0: usize) {
    let c = g.c_in;
    let [kh, kw] = g.kernel;
    let k = kh * kw * c;
    for (r, col) in cols.chunks_exact_mut(k).enumerate() {
        let (b, oy, ox) = input.pixel(p0 + r);
        for i in 0..kh {
            let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pad[0] as isize;
            // Undilated, a tap row's kw pixels lie side by side in the
            // input: one copy (an RGB stem's 11 pixels are 33 values, not
            // 11 copies of 3).
            let ix0 = (ox * g.stride[1]) as isize - g.pad[1] as isize;
            if let (1, Some(src)) = (g.dilation[1], input.run(b, iy, ix0, kw)) {
                col[i * kw * c..][..kw * c].copy_from_slice(src);
                continue;
            }
            for j in 0..kw {
                let ix = (ox * g.stride[1] + j * g.dilation[1]) as isize - g.pad[1] as isize;
                let dst = &mut col[(i * kw + j) * c..][..c];
                match input.at(b, iy, ix) {
                    Some(src) => dst.copy_from_slice(src),
                    None => dst.fill(0.0),
                }
            }
        }
    }
}

/// Whether `dense_conv` reads `g`'s tap rows in place
/// (`product::parts_into`) instead of copying them by im2col: undilated,
/// tap rows of at least 16 values, and filters small enough (`k x m` up
/// to 256 KiB) to stay in L2 while every output row's task reads them:
/// the RGB stems (AlexNet's 11x11, the ResNets' 7x7), whose im2col is the
/// largest copy of any layer.
fn reads_in_place(g: &ConvGeometry, k: usize, m: usize) -> bool {
    g.dilation == [1, 1] && g.kernel[1] * g.c_in >= 16 && k * m <= 1 << 16
}

/// `dense_conv` with the tap rows read in place: one task per output
/// row, its inner pixels (every tap inside the image) as one product over
/// the `kh` tap rows, each `kw c` values at a pixel stride of `stride c`;
/// the pixels at the border (and whole rows there) through im2col.
fn conv_in_place(
    g: &ConvGeometry,
    input: &Input,
    n: usize,
    packed: &[f32],
    (k, m): (usize, usize),
    ep: Epilogue,
) -> Vec<f32> {
    let (c, [kh, kw], [sy, sx], [py, px]) = (g.c_in, g.kernel, g.stride, g.pad);
    let (oh, ow) = (input.oh, input.ow);
    // Inner columns: ox * sx >= px and ox * sx - px + kw <= w.
    let lo = px.div_ceil(sx);
    let hi = (input.w + px)
        .checked_sub(kw)
        .map(|last| (last / sx).min(ow.saturating_sub(1)));
    let mut out = vec![0f32; n * oh * ow * m];
    out.par_chunks_mut(ow * m).enumerate().for_each(|(row, o)| {
        let (b, oy) = (row / oh, row % oh);
        let p0 = row * ow;
        // Pixels ox0..ox1 of this row through im2col.
        let by_copy = |o: &mut [f32], ox0: usize, ox1: usize| {
            if ox1 > ox0 {
                im2col_product(&mut o[ox0 * m..ox1 * m], p0 + ox0, (input, g), packed, &ep);
            }
        };
        let iy0 = (oy * sy) as isize - py as isize;
        let rows_inside = iy0 >= 0 && iy0 as usize + kh <= input.h;
        match hi.filter(|&hi| rows_inside && lo <= hi) {
            Some(hi) => {
                let (iy0, ix0) = (iy0 as usize, lo * sx - px);
                let parts: Vec<product::Part> = (0..kh)
                    .map(|i| product::Part {
                        x: &input.x[((b * input.h + iy0 + i) * input.w + ix0) * c..],
                        stride: sx * c,
                        k0: i * kw * c,
                        len: kw * c,
                    })
                    .collect();
                let at = (p0 + lo) * m;
                let inner = &mut o[lo * m..(hi + 1) * m];
                product::parts_into(&parts, hi + 1 - lo, packed, (k, m), inner, Some((&ep, at)));
                by_copy(o, 0, lo);
                by_copy(o, hi + 1, ow);
            }
            None => by_copy(o, 0, ow),
        }
    });
    out
}

/// `k x k` max-pool (stride, zero padding never chosen) or PyTorch's
/// adaptive average pool over f32 NHWC `x` `[n, h, w, c]`, one output row
/// per task.
pub fn pool(
    op: &super::ops::PoolOp,
    x: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
) -> Vec<f32> {
    use super::ops::PoolOp;
    let Ok((oh, ow)) = op.out_hw(h, w) else {
        return Vec::new();
    };
    let mut out = vec![0f32; n * oh * ow * c];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(ow * c).enumerate().for_each(|(row, o)| {
        let (b, oy) = (row / oh, row % oh);
        let image = &x[b * h * w * c..][..h * w * c];
        for ox in 0..ow {
            let acc = &mut o[ox * c..][..c];
            match *op {
                PoolOp::Max { k, stride, pad } => {
                    acc.fill(f32::NEG_INFINITY);
                    for i in 0..k {
                        let Some(iy) = (oy * stride + i).checked_sub(pad).filter(|&y| y < h) else {
                            continue;
                        };
                        for j in 0..k {
                            let Some(ix) = (ox * stride + j).checked_sub(pad).filter(|&v| v < w)
                            else {
                                continue;
                            };
                            let src = &image[(iy * w + ix) * c..][..c];
                            for (a, v) in acc.iter_mut().zip(src) {
                                *a = a.max(*v);
                            }
                        }
                    }
                }
                PoolOp::Avg { out: (oh_, ow_) } => {
                    let (y0, y1) = PoolOp::avg_bin(oy, oh_, h);
                    let (x0, x1) = PoolOp::avg_bin(ox, ow_, w);
                    acc.fill(0.0);
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let src = &image[(iy * w + ix) * c..][..c];
                            for (a, v) in acc.iter_mut().zip(src) {
                                *a += v;
                            }
                        }
                    }
                    let scale = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                    acc.iter_mut().for_each(|a| *a *= scale);
                }
            }
        }
    });
    out
}

/// Softmax attention over f32 tokens `qkv` `[n, t, 3d]` holding each
/// token's query (already scaled), key and value, in `heads` heads of
/// `d / heads`: `[n, t, d]`, each head's output in its columns. One task
/// per image and head, both products on ours (the keys and values packed
/// per task, `t x d / heads` values each), read in place from `qkv`.
pub fn attention(qkv: &[f32], (n, t, d): (usize, usize, usize), heads: usize) -> Vec<f32> {
    let dh = d / heads.max(1);
    assert!(
        heads > 0 && dh * heads == d && qkv.len() == n * t * 3 * d,
        "attention: {} values for [{n}, {t}, 3 x {d}] in {heads} heads",
        qkv.len()
    );
    let len = n * t * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = SharedOut(out.as_mut_ptr());
    (0..n * heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / heads, task % heads);
        let image = &qkv[b * t * 3 * d..][..t * 3 * d];
        // scores[t, t] = q k^T: the keys transposed are the packed operand.
        let keys = product::pack(&image[d + h * dh..], 3 * d, (dh, t), true);
        let mut scores = vec![0f32; t * t];
        let q = product::Operands {
            x: &image[h * dh..],
            stride: 3 * d,
            rows: t,
            w: &keys,
            k: dh,
            m: t,
        };
        product::product_into(&q, &mut scores, None);
        softmax_rows(&mut scores, t);
        let values = product::pack(&image[2 * d + h * dh..], 3 * d, (t, dh), false);
        let mut o = vec![0f32; t * dh];
        let p = product::Operands {
            x: &scores,
            stride: t,
            rows: t,
            w: &values,
            k: t,
            m: dh,
        };
        product::product_into(&p, &mut o, None);
        for (i, row) in o.chunks_exact(dh).enumerate() {
            // SAFETY: task (b, h) writes columns h*dh.. of image b's rows
            // only, disjoint from every other task's; within capacity.
            unsafe {
                let to = dst.at((b * t + i) * d + h * dh);
                std::ptr::copy_nonoverlapping(row.as_ptr(), to, dh);
            }
        }
    });
    // SAFETY: the tasks wrote every head's columns of every row.
    unsafe { out.set_len(len) };
    out
}

widest_vectors! {
    /// A softmax over each row of `t` values, in place.
    fn softmax_rows / softmax_rows_avx512 / softmax_rows_avx2
        => softmax_rows_any::<FUSED>(s: &mut [f32], t: usize)
}

#[inline(always)]
fn softmax_rows_any<const FUSED: bool>(s: &mut [f32], t: usize) {
    for row in s.chunks_exact_mut(t.max(1)) {
        let max = lanes_reduce(row, f32::NEG_INFINITY, |v| v, f32::max);
        // Separate passes, so that each vectorises.
        row.iter_mut()
            .for_each(|v| *v = exp_fast::<FUSED>(*v - max));
        let scale = 1.0 / lanes_reduce(row, 0.0, |v| v, |a, b| a + b);
        row.iter_mut().for_each(|v| *v *= scale);
    }
}

/// `map` over `row` reduced by `combine` from `init`, in 16 lanes and
/// then across them: a reduction that vectorises (a sequential f32 fold
/// cannot be reordered).
#[inline(always)]
fn lanes_reduce(
    row: &[f32],
    init: f32,
    map: impl Fn(f32) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = combine(*a, map(v));
        }
    }
    let lanes = acc.into_iter().fold(init, &combine);
    chunks
        .remainder()
        .iter()
        .fold(lanes, |a, &v| combine(a, map(v)))
}

/// Layer norm over each row of `weight.len()` values of f32 `x`:
/// `(x - mean) / sqrt(var + eps) * weight + bias`, the mean and (biased)
/// variance in two passes, rows shared by the threads.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    assert!(
        d > 0 && bias.len() == d && x.len().is_multiple_of(d),
        "layer norm: {} values in rows of {d} ({} biases)",
        x.len(),
        bias.len()
    );
    let mut out = vec![0f32; x.len()];
    let rows_per_task = (1 << 14) / d + 1;
    out.par_chunks_mut(rows_per_task * d)
        .zip(x.par_chunks(rows_per_task * d))
        .for_each(|(o, x)| layer_norm_rows(x, o, (weight, bias), eps));
    out
}

widest_vectors! {
    /// `layer_norm` over whole rows of `x` into `o`.
    fn layer_norm_rows / layer_norm_rows_avx512 / layer_norm_rows_avx2
        => layer_norm_rows_any::<FUSED>(x: &[f32], o: &mut [f32], affine: (&[f32], &[f32]), eps: f32)
}

#[inline(always)]
fn layer_norm_rows_any<const FUSED: bool>(
    x: &[f32],
    o: &mut [f32],
    (weight, bias): (&[f32], &[f32]),
    eps: f32,
) {
    let d = weight.len();
    for (row, out) in x.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
        let mean = lanes_reduce(row, 0.0, |v| v, |a, b| a + b) / d as f32;
        let var = lanes_reduce(row, 0.0, |v| (v - mean) * (v - mean), |a, b| a + b) / d as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((y, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
            *y = madd::<FUSED>((v - mean) * rstd, w, b);
        }
    }
}

/// `x * gate` over f32 NHWC `x` `[n, h, w, c]` with `gate` `[n, c]`.
pub fn gate(x: &[f32], g: &[f32], (n, hw, c): (usize, usize, usize)) -> Vec<f32> {
    let len = n * hw * c;
    assert!(x.len() >= len && g.len() >= n * c, "gate: inputs too short");
    // Written value by value, so not zero-filled first.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(c.max(1))
        .enumerate()
        .for_each(|(p, o)| {
            let (src, gate) = (&x[p * c..][..c], &g[(p / hw) * c..][..c]);
            for ((o, v), s) in o.iter_mut().zip(src).zip(gate) {
                o.write(v * s);
            }
        });
    // SAFETY: every pixel's c values were written above.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both forms: with fused multiply-adds (the vector kernels) and
    /// without (a baseline x86-64 build).
    #[test]
    fn fast_activations_are_within_f32_rounding_of_exact() {
        fn check<const FUSED: bool>() {
            for i in -9000..9000 {
                let x = i as f32 / 100.0;
                let (e, exact) = (exp_fast::<FUSED>(x), (x as f64).exp());
                let rel = ((e as f64 - exact) / exact).abs();
                assert!(
                    !(-87.0..=88.0).contains(&x) || rel < 3e-7,
                    "fused {FUSED}: exp({x}) = {e}, not {exact}"
                );
                for act in [
                    Act::Silu,
                    Act::Sigmoid,
                    Act::QuickGelu,
                    Act::Relu,
                    Act::Relu6,
                ] {
                    let (fast, want) = (act_fast::<FUSED>(act, x), act.apply(x));
                    assert!(
                        (fast - want).abs() <= 3e-7 * want.abs().max(1.0),
                        "fused {FUSED}: {act:?}({x}): {fast} vs {want}"
                    );
                }
            }
            for i in -800..800 {
                let x = i as f32 / 100.0;
                let (fast, exact) = (act_fast::<FUSED>(Act::Gelu, x), Act::Gelu.apply(x));
                assert!(
                    (fast - exact).abs() <= 4e-7 * x.abs().max(1.0),
                    "fused {FUSED}: GELU({x}): {fast} vs {exact}"
                );
            }
        }
        check::<true>();
        check::<false>();
    }

    #[test]
    fn attention_and_layer_norm_match_their_definitions() {
        let mut rng = crate::util::SplitMix64(9);
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| 2.0 * rng.next_unit() - 1.0).collect() };
        // Heads of 8 and 20 (a partial vector), 7 and 70 tokens (two
        // panels of keys).
        for (n, t, d, heads) in [(2, 7, 24, 3), (1, 70, 40, 2)] {
            let qkv = rand(n * t * 3 * d);
            let y = attention(&qkv, (n, t, d), heads);
            let dh = d / heads;
            let at = |b: usize, i: usize, part: usize, c: usize| {
                qkv[(b * t + i) * 3 * d + part * d + c] as f64
            };
            for b in 0..n {
                for h in 0..heads {
                    for i in 0..t {
                        let scores: Vec<f64> = (0..t)
                            .map(|j| {
                                (0..dh)
                                    .map(|c| at(b, i, 0, h * dh + c) * at(b, j, 1, h * dh + c))
                                    .sum()
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        for c in 0..dh {
                            let want: f64 =
                                (0..t).map(|j| e[j] / sum * at(b, j, 2, h * dh + c)).sum();
                            let got = y[(b * t + i) * d + h * dh + c] as f64;
                            assert!(
                                (got - want).abs() < 1e-5,
                                "{t} tokens, head {h}: ({b}, {i}, {c}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
        // Rows of 5 (no whole vector), 40 and 768, far from zero mean.
        for d in [5, 40, 768] {
            let x: Vec<f32> = rand(3 * d).into_iter().map(|v| 100.0 + v).collect();
            let (w, b) = (rand(d), rand(d));
            let y = layer_norm(&x, &w, &b, 1e-5);
            for (row, out) in x.chunks(d).zip(y.chunks(d)) {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                for i in 0..d {
                    let want =
                        (row[i] as f64 - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64;
                    assert!(
                        (out[i] as f64 - want).abs() < 1e-4,
                        "rows of {d}: {i}: {} vs {want}",
                        out[i]
                    );
                }
            }
        }
    }

    #[test]
    fn tasks_come_in_multiples_of_the_threads() {
        let threads = rayon::current_num_threads();
        // ViT-B/32's 800 token rows, ResNet-50's 784 pixels at 7x7, 64
        // Winograd tiles, an im2col of 200,704 rows.
        for (items, at_most, align) in [
            (800, 96, 6),
            (784, 96, 6),
            (64, 14, 1),
            (200_704, 25_088, 6),
        ] {
            let per = balanced(items, at_most, align);
            let tasks = items.div_ceil(per);
            assert_eq!(per % align, 0, "{items}");
            assert!(per <= at_most.next_multiple_of(align), "{items}: {per}");
            assert_eq!(tasks % threads, 0, "{items} in {tasks} tasks of {per}");
        }
        assert_eq!(balanced(0, 96, 6), 6, "never a task of nothing");
    }

    #[test]
    fn a_gate_folded_into_the_weights_gates_the_input() {
        let mut rng = crate::util::SplitMix64(9);
        let mut rand =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.next_unit() - 0.5).collect() };
        let (n, h, w, k) = (3, 5, 7, 20);
        // 17 outputs (padded to 32) on 35 pixels fold; 40 (48) do not.
        for (m, folds) in [(17, true), (40, false)] {
            let g = ConvGeometry::square(k, m, 1, 1, 0);
            let (x, gate, wv, bias, res) = (
                rand(n * h * w * k),
                rand(n * k),
                rand(m * k),
                rand(m),
                rand(n * h * w * m),
            );
            let packed = prepare(&wv, k, m);
            let wt = Weights {
                values: &packed,
                order: WeightOrder::Packed,
            };
            assert_eq!(folds_gate(&g, wt.order, h * w), folds, "{m}");
            let ep = Epilogue {
                bias: &bias,
                residual: Some(&res),
                act: Act::Silu,
            };
            let got = gated_conv(&g, &x, (n, h, w), &gate, wt, ep).unwrap();
            let gated = super::gate(&x, &gate, (n, h * w, k));
            let want = conv(&g, &gated, (n, h, w), wt, ep).unwrap();
            let worst = crate::models::channels_last::max_abs_diff(&got, &want);
            assert!(worst < 1e-5, "{m} outputs: {worst}");
        }
    }

    #[test]
    fn channels_first_rows_pack_as_their_krsc_order() {
        let mut rng = crate::util::SplitMix64(5);
        // Two panels and a part of one; a single input pixel (a 1x1 layer).
        for (m, (c, h, w)) in [(150, (5, 3, 4)), (17, (9, 1, 1))] {
            let k = c * h * w;
            let rows: Vec<f32> = (0..m * k).map(|_| rng.next_unit()).collect();
            let mut krsc = vec![0f32; m * k];
            for o in 0..m {
                for ch in 0..c {
                    for p in 0..h * w {
                        krsc[o * k + p * c + ch] = rows[o * k + ch * h * w + p];
                    }
                }
            }
            assert_eq!(
                prepare_channels_first(&rows, m, (c, h, w)),
                prepare(&krsc, k, m),
                "{m} x {c} x {h} x {w}"
            );
        }
    }

    #[test]
    fn linear_takes_rows_and_packed_weights() {
        let mut rng = crate::util::SplitMix64(3);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_unit() - 0.5).collect() };
        // Few rows (tasks split the outputs) and many (tasks split rows).
        for rows in [5, 700] {
            let (k, m) = (37, 19);
            let (x, w, b, r) = (rand(rows * k), rand(m * k), rand(m), rand(rows * m));
            let packed = prepare(&w, k, m);
            for wt in [
                Weights {
                    values: &w,
                    order: WeightOrder::Rows,
                },
                Weights {
                    values: &packed,
                    order: WeightOrder::Packed,
                },
            ] {
                let y = linear(
                    &x,
                    wt,
                    Epilogue {
                        bias: &b,
                        residual: Some(&r),
                        act: Act::Silu,
                    },
                    (rows, k, m),
                );
                for i in 0..rows {
                    for j in 0..m {
                        let dot: f64 = (0..k).map(|t| (x[i * k + t] * w[j * k + t]) as f64).sum();
                        let want = Act::Silu.apply(dot as f32 + b[j] + r[i * m + j]);
                        assert!(
                            (y[i * m + j] - want).abs() < 1e-5,
                            "{rows} rows, {:?}: ({i}, {j})",
                            wt.order
                        );
                    }
                }
            }
        }
    }
}
