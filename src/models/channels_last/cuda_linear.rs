//! Linear layers through cuBLASLt: `act(x w^T + bias [+ residual])` with
//! the bias (and ReLU, and the residual as the product's C matrix) in the
//! product's epilogue, any other activation in our `bias_act` kernel right
//! after.
//!
//! Built on cudarc's raw `cublaslt::{result, sys}`, not its `CudaBlasLT`,
//! which runs the algorithm heuristic on every call and computes f32 in
//! TF32. Here every dtype computes in f32 (`CUBLAS_COMPUTE_32F`, so f32
//! stays exact), the heuristic runs once per problem for the process, and
//! each thread keeps one handle and one workspace per device.
//!
//! cuBLASLt is column-major: the row-major `[rows, m]` output is the
//! column-major `m x rows` matrix `D = op(A) B` with `A` = `w` (stored as
//! column-major `k x m`, transposed), `B` = `x` (column-major `k x rows`),
//! the bias running along D's `m` rows, as cuBLASLt's bias epilogue wants.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{result as lt, sys};
use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage};

use super::ops::LinearOp;
use super::program::Act;

/// The cuBLASLt epilogue a product runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Epilogue {
    /// `D = A B + beta C + bias`.
    Bias,
    /// `D = relu(A B + bias)` (used without a residual only).
    ReluBias,
}

impl Epilogue {
    fn sys(self) -> sys::cublasLtEpilogue_t {
        match self {
            Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::ReluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
        }
    }
}

/// How `act(x w^T + b + r)` is split between the product's epilogue and our
/// kernel: the whole pre-activation `x w^T + b + r` always comes out of
/// cuBLASLt (the residual as C with beta = 1), rounded once to the output
/// dtype, as the reference (`ops::epilogue`) sums it before the
/// activation. ReLU is fused when there is no residual; cuBLASLt's GELU is
/// not the exact (erf) GELU, so every other activation (and ReLU after a
/// residual, to keep the sum's order certain) runs in `bias_act` on the
/// output, with no bias or residual left to add.
fn plan(act: Act, has_residual: bool) -> (Epilogue, Option<Act>) {
    match (act, has_residual) {
        (Act::Identity, _) => (Epilogue::Bias, None),
        (Act::Relu, false) => (Epilogue::ReluBias, None),
        (other, _) => (Epilogue::Bias, Some(other)),
    }
}

/// What the chosen algorithm is cached under, for the process: the device,
/// the problem, and the pointers' alignments (the heuristic may pick a
/// kernel that relies on them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AlgoKey {
    ordinal: usize,
    dtype: DType,
    rows: usize,
    k: usize,
    m: usize,
    epilogue: Epilogue,
    has_residual: bool,
    /// Bytes of alignment of A (w), B (x), C and D.
    align: [u32; 4],
}

fn algos() -> &'static Mutex<HashMap<AlgoKey, sys::cublasLtMatmulAlgo_t>> {
    static ALGOS: OnceLock<Mutex<HashMap<AlgoKey, sys::cublasLtMatmulAlgo_t>>> = OnceLock::new();
    ALGOS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The largest power of two up to 256 dividing `ptr`: what cuBLASLt's
/// `MIN_ALIGNMENT_*_BYTES` preferences describe.
fn alignment(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(8)
}

/// One thread's cuBLASLt handle and workspace on one device.
struct ThreadState {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
}

impl ThreadState {
    fn new(dev: &CudaDevice) -> Result<Self> {
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread().w()?;
        // NVIDIA's recommendation, as cudarc's: 32 MiB on Hopper and
        // later, 4 MiB before.
        let major = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .w()?;
        let size = if major >= 9 { 32 << 20 } else { 4 << 20 };
        // SAFETY: scratch memory for cuBLASLt, never read before written.
        let workspace = unsafe { dev.alloc::<u8>(size) }?;
        let handle = lt::create_handle().map_err(|e| {
            candle_core::Error::Msg(format!("cuda_linear::linear: cublasLtCreate failed: {e:?}"))
        })?;
        Ok(ThreadState { handle, workspace })
    }
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

thread_local! {
    /// Per thread and candle device (each has its own stream, and a
    /// workspace must not be shared by two streams).
    static STATE: RefCell<HashMap<DeviceId, ThreadState>> = RefCell::new(HashMap::new());
}

/// A matmul descriptor, destroyed on drop.
struct MatmulDesc(sys::cublasLtMatmulDesc_t);

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

/// A matrix layout, destroyed on drop.
struct MatrixLayout(sys::cublasLtMatrixLayout_t);

impl Drop for MatrixLayout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// Heuristic preferences, destroyed on drop.
struct Preference(sys::cublasLtMatmulPreference_t);

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

fn data_type(dtype: DType) -> Result<sys::cudaDataType> {
    Ok(match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        other => candle_core::bail!("cuda_linear::linear: unsupported dtype {other:?}"),
    })
}

/// The problem, for the descriptors and for error messages.
#[derive(Debug, Clone, Copy)]
struct Problem {
    dtype: DType,
    rows: usize,
    k: usize,
    m: usize,
    act: Act,
    has_residual: bool,
}

impl Problem {
    fn error(&self, what: &str, e: lt::CublasError) -> candle_core::Error {
        candle_core::Error::Msg(format!(
            "cuda_linear::linear: {what} failed ({e:?}) for x [{}, {}], w [{}, {}], {:?}, {:?}{}",
            self.rows,
            self.k,
            self.m,
            self.k,
            self.dtype,
            self.act,
            if self.has_residual {
                ", with a residual"
            } else {
                ""
            }
        ))
    }
}

/// The descriptors of one product.
struct Descriptors {
    matmul: MatmulDesc,
    a: MatrixLayout,
    b: MatrixLayout,
    /// C and D: the same `m x rows` layout.
    cd: MatrixLayout,
}

/// Sets one attribute of a matmul descriptor from a plain value.
///
/// # Safety
/// `desc` must be live and `V` the attribute's C type.
unsafe fn set_desc<V>(
    desc: &MatmulDesc,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &V,
) -> std::result::Result<(), lt::CublasError> {
    lt::set_matmul_desc_attribute(
        desc.0,
        attr,
        value as *const V as *const c_void,
        std::mem::size_of::<V>(),
    )
}

fn descriptors(p: &Problem, epilogue: Epilogue, bias: u64) -> Result<Descriptors> {
    use sys::cublasLtMatmulDescAttributes_t as A;
    let ty = data_type(p.dtype)?;
    let (rows, k, m) = (p.rows as u64, p.k as u64, p.m as u64);
    let matmul = MatmulDesc(
        lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| p.error("cublasLtMatmulDescCreate", e))?,
    );
    // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
    let (op_t, op_n): (i32, i32) = (1, 0);
    let epi = epilogue.sys();
    // SAFETY: live descriptor; each value has its attribute's C type
    // (cublasOperation_t and cublasLtEpilogue_t are 32-bit, the bias
    // pointer a device pointer).
    unsafe {
        set_desc(&matmul, A::CUBLASLT_MATMUL_DESC_TRANSA, &op_t)
            .and_then(|_| set_desc(&matmul, A::CUBLASLT_MATMUL_DESC_TRANSB, &op_n))
            .and_then(|_| set_desc(&matmul, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi))
            .and_then(|_| set_desc(&matmul, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias))
            .map_err(|e| p.error("cublasLtMatmulDescSetAttribute", e))?;
    }
    let layout = |r: u64, c: u64, ld: u64| {
        lt::create_matrix_layout(ty, r, c, ld as i64)
            .map(MatrixLayout)
            .map_err(|e| p.error("cublasLtMatrixLayoutCreate", e))
    };
    Ok(Descriptors {
        matmul,
        // w: [m, k] row-major = k x m column-major, transposed by TRANSA.
        a: layout(k, m, k)?,
        // x: [rows, k] row-major = k x rows column-major.
        b: layout(k, rows, k)?,
        // out (and residual): [rows, m] row-major = m x rows column-major.
        cd: layout(m, rows, m)?,
    })
}

/// The heuristic's best algorithm for these descriptors.
fn heuristic(
    p: &Problem,
    handle: sys::cublasLtHandle_t,
    d: &Descriptors,
    workspace: usize,
    align: [u32; 4],
) -> Result<sys::cublasLtMatmulAlgo_t> {
    use sys::cublasLtMatmulPreferenceAttributes_t as P;
    let pref = Preference(
        lt::create_matmul_pref().map_err(|e| p.error("cublasLtMatmulPreferenceCreate", e))?,
    );
    let workspace = workspace as u64;
    let set = |attr: P, value: *const c_void, size: usize| {
        // SAFETY: live preference; `value` points at `size` bytes of the
        // attribute's C type.
        unsafe { lt::set_matmul_pref_attribute(pref.0, attr, value, size) }
            .map_err(|e| p.error("cublasLtMatmulPreferenceSetAttribute", e))
    };
    set(
        P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
        &workspace as *const u64 as *const c_void,
        8,
    )?;
    let attrs = [
        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
        P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
    ];
    for (attr, a) in attrs.into_iter().zip(align.iter()) {
        set(attr, a as *const u32 as *const c_void, 4)?;
    }
    // SAFETY: live handle, descriptors and preference.
    let found = unsafe {
        lt::get_matmul_algo_heuristic(handle, d.matmul.0, d.a.0, d.b.0, d.cd.0, d.cd.0, pref.0)
    }
    .map_err(|e| p.error("cublasLtMatmulAlgoGetHeuristic (no algorithm)", e))?;
    Ok(found.algo)
}

/// `act(x w^T + bias [+ residual])`: `x` `[rows, k]`, `w` `[m, k]` (a
/// PyTorch Linear weight), `bias` `[m]`, the residual `op.residual`
/// `[rows, m]`; all contiguous, of one dtype (f32, f16, bf16), on one
/// device. Returns a new `[rows, m]` tensor.
pub(super) fn linear(
    op: &LinearOp,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let ((xs, xl), (ws, wl), (bs, bl)) = (x, w, b);
    let dtype = xs.dtype();
    let shapes = || {
        format!(
            "x {:?}, w {:?}, bias {:?}",
            xl.shape(),
            wl.shape(),
            bl.shape()
        )
    };
    let (Ok((rows, k)), Ok((m, k2))) = (xl.shape().dims2(), wl.shape().dims2()) else {
        candle_core::bail!(
            "cuda_linear::linear: expected x [rows, k], w [m, k]: {}",
            shapes()
        );
    };
    if k != k2 || bl.shape().elem_count() != m || k == 0 {
        candle_core::bail!("cuda_linear::linear: shapes do not agree: {}", shapes());
    }
    if !(xl.is_contiguous() && wl.is_contiguous() && bl.is_contiguous()) {
        candle_core::bail!(
            "cuda_linear::linear: inputs must be contiguous: {}",
            shapes()
        );
    }
    if ws.dtype() != dtype || bs.dtype() != dtype {
        candle_core::bail!(
            "cuda_linear::linear: dtypes differ: x {dtype:?}, w {:?}, bias {:?}",
            ws.dtype(),
            bs.dtype()
        );
    }
    let ids = [xs.device.id(), ws.device.id(), bs.device.id()];
    if ids.iter().any(|id| *id != ids[0]) {
        candle_core::bail!(
            "cuda_linear::linear: inputs on different devices: {}",
            shapes()
        );
    }
    // The residual rides in the op; hold its storage's read lock for the call.
    let guard = op.residual.as_ref().map(|t| t.storage_and_layout());
    let residual = match &guard {
        None => None,
        Some((storage, rl)) => {
            let Storage::Cuda(rs) = &**storage else {
                candle_core::bail!("cuda_linear::linear: the residual is not on the GPU");
            };
            if rs.dtype() != dtype || rs.device.id() != ids[0] {
                candle_core::bail!(
                    "cuda_linear::linear: residual {:?} for {dtype:?} output, or on another device",
                    rs.dtype()
                );
            }
            if !rl.is_contiguous() || rl.shape().elem_count() != rows * m {
                candle_core::bail!(
                    "cuda_linear::linear: residual {:?} (contiguous: {}) for output [{rows}, {m}]",
                    rl.shape(),
                    rl.is_contiguous()
                );
            }
            Some((rs, *rl))
        }
    };
    let p = Problem {
        dtype,
        rows,
        k,
        m,
        act: op.act,
        has_residual: residual.is_some(),
    };
    let inputs = Inputs {
        x: (xs, xl),
        w: (ws, wl),
        b: (bs, bl),
        r: residual,
    };
    let out = match dtype {
        DType::F32 => linear_typed::<f32>(&p, &inputs),
        DType::F16 => linear_typed::<half::f16>(&p, &inputs),
        DType::BF16 => linear_typed::<half::bf16>(&p, &inputs),
        other => candle_core::bail!("cuda_linear::linear: unsupported dtype {other:?}"),
    }?;
    Ok((out, Shape::from((rows, m))))
}

struct Inputs<'a> {
    x: (&'a CudaStorage, &'a Layout),
    w: (&'a CudaStorage, &'a Layout),
    b: (&'a CudaStorage, &'a Layout),
    r: Option<(&'a CudaStorage, &'a Layout)>,
}

/// A contiguous tensor's values: exactly its elements, from its offset.
fn view<'a, T: CudaDType + 'a>((s, l): (&'a CudaStorage, &Layout)) -> Result<CudaView<'a, T>> {
    let start = l.start_offset();
    let end = start + l.shape().elem_count();
    let slice = s.as_cuda_slice::<T>()?;
    if end > slice.len() {
        candle_core::bail!(
            "cuda_linear::linear: {:?} at offset {start} overruns a buffer of {}",
            l.shape(),
            slice.len()
        );
    }
    Ok(slice.slice(start..end))
}

fn linear_typed<T: CudaDType + DeviceRepr>(p: &Problem, inp: &Inputs) -> Result<CudaStorage> {
    let dev = &inp.x.0.device;
    let stream = dev.cuda_stream();
    let (x, w, bias) = (view::<T>(inp.x)?, view::<T>(inp.w)?, view::<T>(inp.b)?);
    let r = inp.r.map(view::<T>).transpose()?;
    let len = p.rows * p.m;
    // SAFETY: every element is written by the product before it is read.
    let mut out = unsafe { dev.alloc::<T>(len) }?;
    if len == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
    }
    let (epilogue, then_act) = plan(p.act, r.is_some());
    {
        let (x_ptr, _x_guard) = x.device_ptr(&stream);
        let (w_ptr, _w_guard) = w.device_ptr(&stream);
        let (mut bias_ptr, _b_guard) = bias.device_ptr(&stream);
        // A bias off 16-byte alignment (a view into a larger buffer) is
        // copied (`bias` holds exactly its m values): no cuBLASLt
        // preference describes the bias's alignment.
        let aligned_bias: Option<CudaSlice<T>>;
        let _ab_guard;
        if bias_ptr % 16 != 0 {
            // SAFETY: filled by the copy right after.
            let mut copy = unsafe { dev.alloc::<T>(p.m) }?;
            dev.memcpy_dtod(&bias, &mut copy)?;
            aligned_bias = Some(copy);
            let (ptr, guard) = aligned_bias.as_ref().unwrap().device_ptr(&stream);
            bias_ptr = ptr;
            _ab_guard = guard;
        }
        let (r_ptr, _r_guard) = r.as_ref().map(|r| r.device_ptr(&stream)).unzip();
        let (d_ptr, _d_guard) = out.device_ptr_mut(&stream);
        let c_ptr = r_ptr.unwrap_or(d_ptr);
        let key = AlgoKey {
            ordinal: stream.context().ordinal(),
            dtype: p.dtype,
            rows: p.rows,
            k: p.k,
            m: p.m,
            epilogue,
            has_residual: r_ptr.is_some(),
            align: [w_ptr, x_ptr, c_ptr, d_ptr].map(alignment),
        };
        let d = descriptors(p, epilogue, bias_ptr)?;
        let alpha = 1f32;
        let beta = if r_ptr.is_some() { 1f32 } else { 0f32 };
        stream.context().bind_to_thread().w()?;
        STATE.with(|cell| -> Result<()> {
            let mut states = cell.borrow_mut();
            let st = match states.entry(dev.id()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(ThreadState::new(dev)?),
            };
            let ws_size = st.workspace.len();
            let algo = {
                let mut cache = algos().lock().unwrap_or_else(|e| e.into_inner());
                match cache.get(&key) {
                    Some(a) => *a,
                    None => {
                        let a = heuristic(p, st.handle, &d, ws_size, key.align)?;
                        cache.insert(key, a);
                        a
                    }
                }
            };
            let (ws_ptr, _ws_guard) = st.workspace.device_ptr(&stream);
            // SAFETY: live handle and descriptors that describe these
            // buffers (w [m, k], x [rows, k], C/D [rows, m], bias [m], all
            // contiguous, of `T`); the algorithm was chosen for the same
            // descriptors, alignments and workspace size; everything runs
            // on the device's stream.
            unsafe {
                lt::matmul(
                    st.handle,
                    d.matmul.0,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    w_ptr as *const c_void,
                    d.a.0,
                    x_ptr as *const c_void,
                    d.b.0,
                    c_ptr as *const c_void,
                    d.cd.0,
                    d_ptr as *mut c_void,
                    d.cd.0,
                    &algo,
                    ws_ptr as *mut c_void,
                    ws_size,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
            .map_err(|e| p.error("cublasLtMatmul", e))
        })?;
        if let Some(act) = then_act {
            // The sum is complete in `out`; only the activation is left.
            super::cuda_kernels::bias_act(dev, p.dtype, d_ptr, 0, None, p.rows, p.m, act)?;
        }
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epilogue_leaves_only_the_activation_to_our_kernel() {
        assert_eq!(plan(Act::Identity, false), (Epilogue::Bias, None));
        assert_eq!(plan(Act::Identity, true), (Epilogue::Bias, None));
        assert_eq!(plan(Act::Relu, false), (Epilogue::ReluBias, None));
        assert_eq!(plan(Act::Relu, true), (Epilogue::Bias, Some(Act::Relu)));
        for act in [
            Act::Gelu,
            Act::QuickGelu,
            Act::Silu,
            Act::Relu6,
            Act::Sigmoid,
        ] {
            for r in [false, true] {
                assert_eq!(plan(act, r), (Epilogue::Bias, Some(act)));
            }
        }
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0), 256);
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0080), 128);
        assert_eq!(alignment(0x7f00_0000_0002), 2);
        assert_eq!(alignment(0x7f00_0000_0004), 4);
    }
}
