//! Launches our own CUDA kernels (`kernels.cu`, compiled to PTX by
//! `build.rs`): the bias + residual + activation epilogue, the max and
//! adaptive average pools, and the squeeze-excite gate, over contiguous
//! channels-last tensors in f32, f16 or bf16.
//!
//! The PTX is one module, loaded once per device by candle
//! (`get_or_load_custom_func`) and run on the device's stream, the one
//! candle, cuDNN and cuBLASLt work on here, so no synchronisation is needed.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape};

use super::ops::PoolOp;
use super::program::Act;

/// The kernels, as PTX for the architecture `CUDA_COMPUTE_CAP` named at
/// build time (newer GPUs JIT it).
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/channels_last_kernels.ptx"));

/// The name candle caches the loaded module under, per device.
const MODULE: &str = "imagenet_hard_channels_last";

/// Threads per block: enough to hide latency, small enough for several
/// blocks per SM.
const THREADS: u32 = 256;

/// Blocks at most: with grid-stride loops any count is correct; this many
/// (2^16 x 256 = 16.7M threads) fill any current GPU many times over.
const MAX_BLOCKS: u32 = 1 << 16;

/// The suffix of a kernel's entry point for `dtype`.
fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("channels-last kernels run f32, f16 and bf16, not {other:?}"),
    })
}

/// The name of `kernel`'s entry point for `dtype`.
fn entry(kernel: &str, dtype: DType) -> Result<String> {
    Ok(format!("{kernel}_{}", suffix(dtype)?))
}

/// A launch of `THREADS`-thread blocks covering `work` items (grid-stride
/// beyond `MAX_BLOCKS` blocks).
fn launch_config(work: usize) -> LaunchConfig {
    let blocks = work
        .div_ceil(THREADS as usize)
        .clamp(1, MAX_BLOCKS as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `y = act(y + bias[c] + residual)` in place over `[rows, channels]`
/// values of `dtype` at raw device pointers, on `dev`'s stream: the
/// epilogue after a cuDNN convolution or a cuBLASLt product. `bias == 0`
/// means no bias (zero); `residual` is `[rows, channels]` like `y`. The
/// caller owns the buffers and keeps them alive until the stream has run
/// the kernel (anything queued after it on the same stream is ordered).
#[allow(clippy::too_many_arguments)]
pub(super) fn bias_act(
    dev: &CudaDevice,
    dtype: DType,
    y: u64,
    bias: u64,
    residual: Option<u64>,
    rows: usize,
    channels: usize,
    act: Act,
) -> Result<()> {
    let Some(total) = rows.checked_mul(channels) else {
        candle_core::bail!("bias_act: [{rows}, {channels}] overflows");
    };
    if total == 0 || (bias == 0 && residual.is_none() && act == Act::Identity) {
        return Ok(());
    }
    if y == 0 {
        candle_core::bail!("bias_act: null output for [{rows}, {channels}] {dtype:?}");
    }
    if residual == Some(0) {
        candle_core::bail!("bias_act: null residual for [{rows}, {channels}] {dtype:?}");
    }
    let func = dev.get_or_load_custom_func(&entry("bias_act", dtype)?, MODULE, PTX)?;
    let residual = residual.unwrap_or(0);
    let code = act.code();
    let mut b = func.builder();
    b.arg(&y);
    b.arg(&bias);
    b.arg(&residual);
    b.arg(&rows);
    b.arg(&channels);
    b.arg(&code);
    // SAFETY: the argument list matches `bias_act_*` in kernels.cu (three
    // pointers, two size_t, one uint32_t); the caller vouches for the
    // pointers and sizes.
    unsafe { b.launch(launch_config(total)) }.w()?;
    Ok(())
}

/// The dims of a contiguous `[n, h, w, c]` input, or a clear error.
fn nhwc_dims(what: &str, l: &Layout) -> Result<(usize, usize, usize, usize)> {
    let dims = l.shape().dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{what}: expected [n, h, w, c], got {:?}",
            l.shape()
        ))
    })?;
    if !l.is_contiguous() {
        candle_core::bail!(
            "{what}: the input {:?} is not contiguous (strides {:?})",
            l.shape(),
            l.stride()
        );
    }
    Ok(dims)
}

/// Runs `f::<T>` for the storage's dtype.
macro_rules! by_dtype {
    ($dtype:expr, $what:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            other => candle_core::bail!("{}: unsupported dtype {other:?}", $what),
        }
    };
}

/// The pooling `op` over a contiguous `[n, h, w, c]` tensor, into a new
/// `[n, oh, ow, c]` one.
pub(super) fn pool(op: &PoolOp, x: (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let (s, l) = x;
    let what = match op {
        PoolOp::Max { .. } => "max_pool_nhwc",
        PoolOp::Avg { .. } => "adaptive_avg_pool_nhwc",
    };
    let (n, h, w, c) = nhwc_dims(what, l)?;
    let (oh, ow) = op.out_hw(h, w)?;
    if let PoolOp::Avg { out } = op {
        if out.0 == 0 || out.1 == 0 || h == 0 || w == 0 {
            candle_core::bail!("{what}: {h}x{w} input to {out:?}");
        }
    }
    let dims = PoolDims { n, h, w, c, oh, ow };
    let storage = by_dtype!(s.dtype(), what, pool_typed(op, s, l, dims))?;
    Ok((storage, Shape::from((n, oh, ow, c))))
}

#[derive(Debug, Clone, Copy)]
struct PoolDims {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
}

fn pool_typed<T: CudaDType + DeviceRepr>(
    op: &PoolOp,
    s: &CudaStorage,
    l: &Layout,
    d: PoolDims,
) -> Result<CudaStorage> {
    let dev = &s.device;
    let len = d.n * d.oh * d.ow * d.c;
    let x = s.as_cuda_slice::<T>()?.slice(l.start_offset()..);
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<T>(len) }?;
    if len > 0 {
        let kernel = match op {
            PoolOp::Max { .. } => "max_pool_nhwc",
            PoolOp::Avg { .. } => "adaptive_avg_pool_nhwc",
        };
        let func = dev.get_or_load_custom_func(&entry(kernel, s.dtype())?, MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&out);
        for v in [&d.n, &d.h, &d.w, &d.c, &d.oh, &d.ow] {
            b.arg(v);
        }
        let window;
        if let PoolOp::Max { k, stride, pad } = op {
            window = [*k, *stride, *pad];
            for v in &window {
                b.arg(v);
            }
        }
        // SAFETY: the arguments match `max_pool_nhwc_*` (x, y, n, h, w, c,
        // oh, ow, k, stride, pad) or `adaptive_avg_pool_nhwc_*` (x, y, n,
        // h, w, c, oh, ow); `x` holds n h w c values from its offset (a
        // contiguous layout), `out` n oh ow c.
        unsafe { b.launch(launch_config(len)) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// `x * g` over a contiguous `x` `[n, h, w, c]` and gate `g` `[n, 1, 1, c]`
/// of the same dtype, into a new tensor shaped as `x`.
pub(super) fn gate(
    x: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let ((xs, xl), (gs, gl)) = (x, g);
    let (n, h, w, c) = nhwc_dims("gate_nhwc", xl)?;
    if gl.shape().dims() != [n, 1, 1, c] {
        candle_core::bail!(
            "gate_nhwc: gate {:?} for input {:?}, expected [{n}, 1, 1, {c}]",
            gl.shape(),
            xl.shape()
        );
    }
    if !gl.is_contiguous() {
        candle_core::bail!("gate_nhwc: the gate {:?} is not contiguous", gl.shape());
    }
    if xs.dtype() != gs.dtype() {
        candle_core::bail!(
            "gate_nhwc: input {:?} and gate {:?} differ",
            xs.dtype(),
            gs.dtype()
        );
    }
    let storage = by_dtype!(
        xs.dtype(),
        "gate_nhwc",
        gate_typed(xs, xl, gs, gl, [n, h * w, c])
    )?;
    Ok((storage, xl.shape().clone()))
}

fn gate_typed<T: CudaDType + DeviceRepr>(
    xs: &CudaStorage,
    xl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
    [n, hw, c]: [usize; 3],
) -> Result<CudaStorage> {
    let dev = &xs.device;
    let len = n * hw * c;
    let x = xs.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
    let g = gs.as_cuda_slice::<T>()?.slice(gl.start_offset()..);
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<T>(len) }?;
    if len > 0 {
        let func = dev.get_or_load_custom_func(&entry("gate_nhwc", xs.dtype())?, MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&g);
        b.arg(&out);
        b.arg(&n);
        b.arg(&hw);
        b.arg(&c);
        // SAFETY: the arguments match `gate_nhwc_*` (x, g, y, n, hw, c);
        // `x` and `out` hold n hw c values, `g` n c.
        unsafe { b.launch(launch_config(len)) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel's name without its dtype suffix.
    const KERNELS: [&str; 4] = [
        "bias_act",
        "max_pool_nhwc",
        "adaptive_avg_pool_nhwc",
        "gate_nhwc",
    ];

    /// The `.entry` names the PTX defines.
    fn entries(ptx: &str) -> Vec<&str> {
        ptx.lines()
            .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
            .map(|l| l.split('(').next().unwrap_or("").trim())
            .collect()
    }

    #[test]
    fn the_ptx_defines_every_kernel_for_every_dtype() {
        let found = entries(PTX);
        let mut expected = Vec::new();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for k in KERNELS {
                expected.push(entry(k, dtype).unwrap());
            }
        }
        for name in &expected {
            assert!(
                found.contains(&name.as_str()),
                "{name} missing from {found:?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:?}");
        assert!(suffix(DType::U8).is_err());
    }

    #[test]
    fn the_ptx_parameters_match_what_we_push() {
        // Each entry point's parameter widths, in order: what the launches
        // above push (u64 pointers, usize sizes, u32 activation code).
        let widths = |name: &str| -> Vec<String> {
            let start = PTX
                .find(&format!(".entry {name}("))
                .unwrap_or_else(|| panic!("{name}"));
            let body = &PTX[start..];
            let end = body.find(')').unwrap();
            body[..end]
                .lines()
                .filter_map(|l| l.trim().strip_prefix(".param ."))
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect()
        };
        let n = |k: usize, extra: &[&str]| {
            let mut v = vec!["u64".to_string(); k];
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        for sfx in ["f32", "f16", "bf16"] {
            assert_eq!(
                widths(&format!("bias_act_{sfx}")),
                n(5, &["u32"]),
                "bias_act_{sfx}"
            );
            assert_eq!(widths(&format!("max_pool_nhwc_{sfx}")), n(11, &[]));
            assert_eq!(widths(&format!("adaptive_avg_pool_nhwc_{sfx}")), n(8, &[]));
            assert_eq!(widths(&format!("gate_nhwc_{sfx}")), n(6, &[]));
        }
    }

    #[test]
    fn launches_cover_the_work_within_the_grid_limit() {
        assert_eq!(launch_config(0).grid_dim.0, 1);
        assert_eq!(launch_config(1).grid_dim.0, 1);
        assert_eq!(launch_config(257).grid_dim.0, 2);
        assert_eq!(launch_config(usize::MAX).grid_dim.0, MAX_BLOCKS);
        assert_eq!(launch_config(10).block_dim.0, THREADS);
    }
}
