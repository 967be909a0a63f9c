//! [`ConvOp`] on CUDA: one cuDNN convolution over channels-last tensors,
//! with its bias, residual and activation either fused into cuDNN's
//! `cudnnConvolutionBiasActivationForward` (ReLU, where cuDNN has a fused
//! kernel) or applied by one epilogue kernel of ours after the plain
//! convolution (every other activation, and the fallback).
//!
//! cuDNN handles are per thread (they are not `Send`): each thread keeps,
//! per device, a handle on the device's stream, one workspace and the
//! descriptors of the shapes it ran. The algorithm chosen for a shape is
//! kept for the process.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::{LazyLock, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, SyncOnDrop,
};
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Error, Layout, Result, Shape, Storage};

use super::cudnn::{
    self, ActivationDescriptor, ConvDescriptor, ConvFwdAlgoPerf, Cudnn, CudnnHandle,
    FilterDescriptor, StatusError, TensorDescriptor,
};
use super::geometry::{workspace_growth, AlgoKey, DataType, GeometryError, Nhwc};
use super::ops::ConvOp;
use super::program::Act;

/// The most scratch memory the algorithm search may take (PyTorch's
/// benchmark mode likewise caps it rather than fail).
const SEARCH_WORKSPACE_CAP: usize = 1 << 30;

/// The algorithm run for one [`AlgoKey`], with the math type cuDNN timed it
/// with and the workspace it needs.
#[derive(Debug, Clone, Copy)]
struct Choice {
    algo: c_int,
    math: c_int,
    workspace: usize,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    Run(Choice),
    /// A fused key cuDNN has no fused kernel for: run plain + epilogue.
    Unfused,
}

/// Chosen per process: the search benchmarks, so it runs once per shape.
static PLANS: LazyLock<Mutex<HashMap<AlgoKey, Plan>>> = LazyLock::new(Default::default);

fn plan(key: &AlgoKey) -> Option<Plan> {
    PLANS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .copied()
}

fn remember(key: AlgoKey, plan: Plan) {
    PLANS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, plan);
}

/// The descriptors of one key (the bias only for fused keys).
struct Descriptors {
    x: TensorDescriptor,
    w: FilterDescriptor,
    y: TensorDescriptor,
    conv: ConvDescriptor,
    bias: Option<TensorDescriptor>,
}

/// What one thread keeps for one device.
struct DeviceState {
    descs: HashMap<AlgoKey, Descriptors>,
    relu: ActivationDescriptor,
    /// Grown by `workspace_growth`, never memset (cuDNN's scratch).
    workspace: Option<CudaSlice<u8>>,
    handle: CudnnHandle,
}

thread_local! {
    static STATES: RefCell<HashMap<DeviceId, DeviceState>> = RefCell::new(HashMap::new());
}

/// Why a call failed, before the shapes are added.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    #[error(transparent)]
    Candle(#[from] Error),
    #[error("{0}")]
    Other(String),
}

/// Device addresses of one call.
#[derive(Debug, Clone, Copy)]
struct Ptrs {
    x: u64,
    w: u64,
    bias: u64,
    residual: Option<u64>,
    y: u64,
}

/// `act(conv(x, w) + bias [+ residual])` into a fresh `[n, oh, ow, k]`.
pub(super) fn conv(
    op: &ConvOp,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    use candle_core::DType;
    match x.0.dtype() {
        DType::F32 => conv_as::<f32>(op, DataType::F32, x, w, b),
        DType::F16 => conv_as::<half::f16>(op, DataType::F16, x, w, b),
        DType::BF16 => conv_as::<half::bf16>(op, DataType::Bf16, x, w, b),
        other => bail!(
            "conv {}: the cuDNN path runs f32, f16 and bf16, not {other:?}",
            op.geometry
        ),
    }
}

/// The input's and output's NHWC dims, with the filter, bias and dtypes
/// checked against the geometry; the shapes in words for errors.
fn checked_dims(
    g: &super::geometry::ConvGeometry,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<(Nhwc, Nhwc, String)> {
    let dtype = x.0.dtype();
    let shapes = format!(
        "input {:?}, filter {:?}, bias {:?}",
        x.1.dims(),
        w.1.dims(),
        b.1.dims()
    );
    let (n, h, wd, c) = x.1.shape().dims4()?;
    let input = Nhwc { n, h, w: wd, c };
    let out = input.conv_out(g).map_err(Error::wrap)?;
    if w.1.dims() != [g.c_out, g.kernel[0], g.kernel[1], g.c_in / g.groups]
        || b.1.shape().elem_count() != g.c_out
    {
        bail!("conv {g}: {shapes} do not fit (filter KRSC [k, r, s, c/groups], bias [k])");
    }
    if w.0.dtype() != dtype || b.0.dtype() != dtype {
        bail!(
            "conv {g}: dtypes differ: input {dtype:?}, filter {:?}, bias {:?}",
            w.0.dtype(),
            b.0.dtype()
        );
    }
    if out.is_empty() {
        bail!("conv {g}: empty output for {shapes}");
    }
    Ok((input, out, shapes))
}

fn conv_as<T: CudaDType + DeviceRepr + 'static>(
    op: &ConvOp,
    data: DataType,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let g = op.geometry;
    let dtype = x.0.dtype();
    let (input, out, shapes) = checked_dims(&g, x, w, b)?;
    let y_shape = Shape::from((out.n, out.h, out.w, out.c));

    // When cuDNN cannot be loaded, its error says how to get it.
    let cudnn = Cudnn::load().map_err(Error::wrap)?;
    let dev = x.0.device().clone();
    let stream = dev.cuda_stream();
    // The handle belongs to the context current when it was made.
    stream.context().bind_to_thread().w()?;

    let (xp, _xg) = device_ptr::<T>(x, &stream)?;
    let (wp, _wg) = device_ptr::<T>(w, &stream)?;
    let (bp, _bg) = device_ptr::<T>(b, &stream)?;
    let residual = op.residual.as_ref().map(|t| t.storage_and_layout());
    let (rp, _rg) = match &residual {
        None => (None, None),
        Some((storage, layout)) => {
            let Storage::Cuda(s) = &**storage else {
                bail!("conv {g}: the residual is not on the GPU");
            };
            if layout.shape() != &y_shape || s.dtype() != dtype {
                bail!(
                    "conv {g}: residual {:?} {:?} for output {y_shape:?} {dtype:?}",
                    layout.dims(),
                    s.dtype()
                );
            }
            let (p, guard) = device_ptr::<T>((s, layout), &stream)?;
            (Some(p), Some(guard))
        }
    };
    // Fresh and not memset: cuDNN writes all of it (beta = 0).
    // SAFETY: every element is written before it is read.
    let mut y = unsafe { dev.alloc::<T>(out.len()) }?;
    let (yp, y_guard) = y.device_ptr_mut(&stream);

    let call = Call {
        cudnn,
        dev: &dev,
        stream: &stream,
        key: AlgoKey {
            device: stream.context().ordinal(),
            dtype: data,
            input,
            geometry: g,
            fused: false,
        },
        out,
        ptrs: Ptrs {
            x: xp,
            w: wp,
            bias: bp,
            residual: rp,
            y: yp,
        },
    };
    let fused = call.run(op.act).map_err(|f| {
        Error::msg(format!(
            "cuDNN conv {g} ({dtype:?}, NHWC {shapes}, output {:?}): {f}",
            y_shape.dims()
        ))
    })?;
    if !fused {
        // y = act(y + bias[c] + residual), one pass, in place.
        let rows = out.n * out.h * out.w;
        super::cuda_kernels::bias_act(&dev, dtype, yp, bp, rp, rows, out.c, op.act)?;
    }
    drop(y_guard);
    Ok((CudaStorage::wrap_cuda_slice(y, dev), y_shape))
}

/// The address of a contiguous tensor's first element, and the guard that
/// records its use on `stream` when dropped.
fn device_ptr<'a, T: CudaDType + 'static>(
    (s, l): (&'a CudaStorage, &Layout),
    stream: &'a CudaStream,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!(
            "the cuDNN conv takes contiguous tensors, not {:?} with strides {:?}",
            l.dims(),
            l.stride()
        );
    };
    let slice = s.as_cuda_slice::<T>()?;
    let Some(view) = slice.try_slice(start..end) else {
        bail!(
            "elements {start}..{end} outside a buffer of {}",
            slice.len()
        );
    };
    Ok(view.view_ptr(stream))
}

/// One convolution call.
struct Call<'a> {
    cudnn: &'static Cudnn,
    dev: &'a CudaDevice,
    stream: &'a CudaStream,
    /// The plain key; the fused one differs in `fused` only.
    key: AlgoKey,
    out: Nhwc,
    ptrs: Ptrs,
}

impl Call<'_> {
    /// Runs the convolution: `true` when fused (bias, residual and ReLU
    /// done), `false` when y holds the bare convolution.
    fn run(&self, act: Act) -> std::result::Result<bool, Fault> {
        STATES.with(|states| {
            let mut states = states.borrow_mut();
            let state = match states.entry(self.dev.id()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(DeviceState {
                    descs: HashMap::new(),
                    relu: self.cudnn.activation(cudnn::ACTIVATION_RELU)?,
                    workspace: None,
                    // SAFETY: the device's stream, which the device (and so
                    // every tensor this handle works on) keeps alive.
                    handle: unsafe { self.cudnn.handle(self.stream.cu_stream() as *mut c_void) }?,
                }),
            };
            // cuDNN fuses ReLU (and identity, with one algorithm only): ReLU alone here.
            if act == Act::Relu && self.fused(state)? {
                return Ok(true);
            }
            self.plain(state)?;
            Ok(false)
        })
    }

    /// The plain convolution into y (alpha 1, beta 0).
    fn plain(&self, st: &mut DeviceState) -> std::result::Result<(), Fault> {
        let key = self.key;
        let known = plan(&key);
        let DeviceState {
            descs,
            workspace,
            handle,
            ..
        } = st;
        let d = self.descriptors(descs, &key, known)?;
        let choice = match known {
            Some(Plan::Run(c)) => c,
            _ => {
                let found = self.search(handle, d)?;
                let c = self.choose(handle, d, &found[0])?;
                remember(key, Plan::Run(c));
                c
            }
        };
        let (ws, ws_len, _g) = self.workspace(workspace, choice.workspace)?;
        let (one, zero) = (1f32, 0f32);
        let p = &self.ptrs;
        // SAFETY: live descriptors of these shapes; device buffers of them;
        // scaling factors in host memory, f32 for every data type we run.
        let status = unsafe {
            (self.cudnn.convolution_forward)(
                handle.raw,
                host(&one),
                d.x.raw,
                p.x as *const c_void,
                d.w.raw,
                p.w as *const c_void,
                d.conv.raw,
                choice.algo,
                ws as *mut c_void,
                ws_len,
                host(&zero),
                d.y.raw,
                p.y as *mut c_void,
            )
        };
        Ok(self.cudnn.check("cudnnConvolutionForward", status)?)
    }

    /// `y = relu(conv(x) + bias + residual)` in one cuDNN call: `false`
    /// (remembered for the key) where cuDNN has no fused kernel for it.
    fn fused(&self, st: &mut DeviceState) -> std::result::Result<bool, Fault> {
        let key = AlgoKey {
            fused: true,
            ..self.key
        };
        let known = plan(&key);
        if let Some(Plan::Unfused) = known {
            return Ok(false);
        }
        let DeviceState {
            descs,
            relu,
            workspace,
            handle,
        } = st;
        let d = self.descriptors(descs, &key, known)?;
        let p = self.ptrs;
        let mut attempt = |c: Choice| -> std::result::Result<Option<StatusError>, Fault> {
            let (ws, ws_len, _g) = self.workspace(workspace, c.workspace)?;
            let bias = d.bias.as_ref().expect("fused keys have a bias descriptor");
            // No residual: z = y with alpha2 = 0, as PyTorch's cudnn_convolution_relu.
            let alpha2 = if p.residual.is_some() { 1f32 } else { 0f32 };
            let one = 1f32;
            // SAFETY: as in `plain`; z has y's shape (checked), bias [1, k, 1, 1].
            let status = unsafe {
                (self.cudnn.convolution_bias_activation_forward)(
                    handle.raw,
                    host(&one),
                    d.x.raw,
                    p.x as *const c_void,
                    d.w.raw,
                    p.w as *const c_void,
                    d.conv.raw,
                    c.algo,
                    ws as *mut c_void,
                    ws_len,
                    host(&alpha2),
                    d.y.raw,
                    p.residual.unwrap_or(p.y) as *const c_void,
                    bias.raw,
                    p.bias as *const c_void,
                    relu.raw,
                    d.y.raw,
                    p.y as *mut c_void,
                )
            };
            match self
                .cudnn
                .check("cudnnConvolutionBiasActivationForward", status)
            {
                Ok(()) => Ok(None),
                // No fused kernel for this configuration: the plain path will run it.
                Err(e) if e.is_not_supported() || e.is_bad_param() => Ok(Some(e)),
                Err(e) => Err(e.into()),
            }
        };
        let why = match known {
            Some(Plan::Run(c)) => match attempt(c)? {
                None => return Ok(true),
                Some(e) => e,
            },
            _ => {
                // The plain convolution's search (cuDNN has none for the fused call),
                // fastest first; the first the fused call accepts is kept.
                let mut why = None;
                for perf in self.search(handle, d)? {
                    let c = self.choose(handle, d, &perf)?;
                    match attempt(c)? {
                        None => {
                            remember(key, Plan::Run(c));
                            return Ok(true);
                        }
                        Some(e) => why = Some(e),
                    }
                }
                why.expect("the search returns at least one algorithm")
            }
        };
        tracing::debug!(
            "cuDNN has no fused conv+bias+ReLU for {} on {:?}: {why}; conv + epilogue",
            key.geometry,
            key.input
        );
        remember(key, Plan::Unfused);
        descs.remove(&key);
        Ok(false)
    }

    /// The key's descriptors, made on first use on this thread with the
    /// chosen math type if the process has one, else the data type's (set
    /// before the search, which then sets the one it found).
    fn descriptors<'s>(
        &self,
        descs: &'s mut HashMap<AlgoKey, Descriptors>,
        key: &AlgoKey,
        known: Option<Plan>,
    ) -> std::result::Result<&'s Descriptors, Fault> {
        if let Entry::Vacant(e) = descs.entry(*key) {
            let math = match known {
                Some(Plan::Run(c)) => c.math,
                _ => key.dtype.cudnn_math(),
            };
            e.insert(self.create(key, math)?);
        }
        Ok(&descs[key])
    }

    fn create(&self, key: &AlgoKey, math: c_int) -> std::result::Result<Descriptors, Fault> {
        let (c, g) = (self.cudnn, &key.geometry);
        // NHWC tensors and KRSC filters: dims given as [n, c, h, w], memory channels-last.
        let ty = key.dtype.cudnn_data();
        let x = c.nhwc_tensor(ty, key.input.dims()?)?;
        let y = c.nhwc_tensor(ty, self.out.dims()?)?;
        let w = c.krsc_filter(ty, g.filter_dims()?)?;
        // f32 accumulation for every data type (cuDNN has only this for bf16).
        let conv = c.convolution(
            i32s(g.pad)?,
            i32s(g.stride)?,
            i32s(g.dilation)?,
            int(g.groups)?,
            key.dtype.cudnn_compute(),
            math,
        )?;
        let theirs = c.output_dim(&conv, &x, &w)?;
        if theirs != self.out.dims()? {
            return Err(Fault::Other(format!(
                "cuDNN's output [n, c, h, w] is {theirs:?}, ours {:?}",
                self.out.dims()?
            )));
        }
        // The bias as cuDNN's fused call takes it: [1, k, 1, 1], y's data type.
        let bias = match key.fused {
            true => {
                let k = Nhwc {
                    n: 1,
                    h: 1,
                    w: 1,
                    c: g.c_out,
                };
                Some(c.nhwc_tensor(ty, k.dims()?)?)
            }
            false => None,
        };
        Ok(Descriptors {
            x,
            w,
            y,
            conv,
            bias,
        })
    }

    /// cudnnFindConvolutionForwardAlgorithmEx over every algorithm: those
    /// that ran, fastest first.
    fn search(
        &self,
        handle: &CudnnHandle,
        d: &Descriptors,
    ) -> std::result::Result<Vec<ConvFwdAlgoPerf>, Fault> {
        let c = self.cudnn;
        // Scratch for the search: what the most demanding algorithm asks,
        // capped; algorithms that do not apply fail this query and are skipped.
        let mut bytes = 0usize;
        for algo in 0..cudnn::FWD_ALGO_COUNT as c_int {
            let mut size = 0usize;
            // SAFETY: live descriptors; out-pointer to a local.
            let status = unsafe {
                (c.get_convolution_forward_workspace_size)(
                    handle.raw, d.x.raw, d.w.raw, d.conv.raw, d.y.raw, algo, &mut size,
                )
            };
            if status == cudnn::STATUS_SUCCESS {
                bytes = bytes.max(size);
            }
        }
        let bytes = bytes.min(SEARCH_WORKSPACE_CAP);
        // Freed after the search; if memory is short, search without any.
        // SAFETY: scratch, written before read.
        let mut scratch = (bytes > 0)
            .then(|| unsafe { self.dev.alloc::<u8>(bytes) }.ok())
            .flatten();
        let (sp, s_len, _sg) = match scratch.as_mut() {
            Some(s) => {
                let (p, guard) = s.device_ptr_mut(self.stream);
                (p, bytes, Some(guard))
            }
            None => (0, 0, None),
        };
        let mut perfs = [ConvFwdAlgoPerf::default(); cudnn::FWD_ALGO_COUNT];
        let mut returned: c_int = 0;
        let p = &self.ptrs;
        // SAFETY: live descriptors, buffers of their shapes; y is overwritten
        // by the search, and again by the real call.
        let status = unsafe {
            (c.find_convolution_forward_algorithm_ex)(
                handle.raw,
                d.x.raw,
                p.x as *const c_void,
                d.w.raw,
                p.w as *const c_void,
                d.conv.raw,
                d.y.raw,
                p.y as *mut c_void,
                cudnn::FWD_ALGO_COUNT as c_int,
                &mut returned,
                perfs.as_mut_ptr(),
                sp as *mut c_void,
                s_len,
            )
        };
        c.check("cudnnFindConvolutionForwardAlgorithmEx", status)?;
        let tried = &perfs[..(returned.max(0) as usize).min(perfs.len())];
        let ran: Vec<ConvFwdAlgoPerf> = tried
            .iter()
            .filter(|p| p.status == cudnn::STATUS_SUCCESS)
            .copied()
            .collect();
        if ran.is_empty() {
            let why: Vec<String> = tried
                .iter()
                .map(|p| format!("algo {}: {}", p.algo, c.error_string(p.status)))
                .collect();
            return Err(Fault::Other(format!(
                "no algorithm ran in the search ({} bytes of scratch): {}",
                s_len,
                why.join(", ")
            )));
        }
        Ok(ran)
    }

    /// Takes a search result: sets its math type on the descriptor (else
    /// cuDNN runs a slower kernel, per PyTorch's Conv_v7 note) and sizes its
    /// workspace under that math type.
    fn choose(
        &self,
        handle: &CudnnHandle,
        d: &Descriptors,
        perf: &ConvFwdAlgoPerf,
    ) -> std::result::Result<Choice, Fault> {
        let c = self.cudnn;
        c.set_math_type(&d.conv, perf.math_type)?;
        let mut bytes = 0usize;
        // SAFETY: live descriptors; out-pointer to a local.
        let status = unsafe {
            (c.get_convolution_forward_workspace_size)(
                handle.raw, d.x.raw, d.w.raw, d.conv.raw, d.y.raw, perf.algo, &mut bytes,
            )
        };
        c.check("cudnnGetConvolutionForwardWorkspaceSize", status)?;
        Ok(Choice {
            algo: perf.algo,
            math: perf.math_type,
            workspace: bytes.max(perf.memory),
        })
    }

    /// The thread's workspace for this device, grown to at least `bytes`:
    /// its address and size (0 and 0 when none is needed) and its guard.
    fn workspace<'w>(
        &'w self,
        slot: &'w mut Option<CudaSlice<u8>>,
        bytes: usize,
    ) -> std::result::Result<(u64, usize, Option<SyncOnDrop<'w>>), Fault> {
        if bytes == 0 {
            return Ok((0, 0, None));
        }
        let current = slot.as_ref().map_or(0, |s| s.len());
        if let Some(size) = workspace_growth(current, bytes) {
            // Free the old one first; stream-ordered, so earlier calls finish with it.
            *slot = None;
            // SAFETY: scratch, never read before cuDNN writes it.
            *slot = Some(unsafe { self.dev.alloc::<u8>(size) }?);
        }
        let s = slot.as_mut().expect("allocated above");
        let len = s.len();
        let (p, guard) = s.device_ptr_mut(self.stream);
        Ok((p, len, Some(guard)))
    }
}

/// A scaling factor's host address, as cuDNN takes it.
fn host(v: &f32) -> *const c_void {
    (v as *const f32).cast()
}

/// A size as cuDNN's `int`.
fn int(x: usize) -> std::result::Result<c_int, Fault> {
    Ok(c_int::try_from(x).map_err(|_| GeometryError::TooLarge(x))?)
}

fn i32s([a, b]: [usize; 2]) -> std::result::Result<[c_int; 2], Fault> {
    Ok([int(a)?, int(b)?])
}
