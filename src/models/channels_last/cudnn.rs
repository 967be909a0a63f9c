//! cuDNN 9, loaded at run time with `libloading` rather than linked: a
//! linked cuDNN would make `libcudnn.so.9` a load-time dependency of the
//! CUDA binary, which must start (and run candle's kernels) without it.
//!
//! Declared here, and nowhere else: the few functions the channels-last
//! convolution calls, their C types, and owning wrappers for the handle and
//! descriptors. Every signature and constant was checked against the
//! headers of cuDNN 9.13.0 (`cudnn_graph.h`, `cudnn_ops.h`, `cudnn_cnn.h`
//! of the `nvidia-cudnn-cu13==9.13.0.50` wheel), every symbol against
//! `nm -D` of its `libcudnn.so.9`. The library is looked for once per
//! process ([`Cudnn::load`]): at `IMAGENET_HARD_CUDNN` if set (the file or
//! its folder), else as `libcudnn.so.9` through ld.so's search
//! (`LD_LIBRARY_PATH`, ...), which finds PyTorch's pip cuDNN once its
//! `nvidia/cudnn/lib` is on `LD_LIBRARY_PATH`.

use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;

/// The soname of cuDNN 9, any minor version.
pub const LIBRARY: &str = "libcudnn.so.9";
/// The file `libcudnn.so.9`, or its folder, to load instead of ld.so's search.
pub const ENV_VAR: &str = "IMAGENET_HARD_CUDNN";
/// How to get cuDNN, or do without it: the end of every loading error.
const FIX: &str = "Install it (`pip install nvidia-cudnn-cu13`, or PyTorch's wheels bring it) \
and put its lib folder (site-packages/nvidia/cudnn/lib) on LD_LIBRARY_PATH, or set \
IMAGENET_HARD_CUDNN to the libcudnn.so.9 file or its folder; or run with --kernels candle";

// Opaque pointers (`cudnnHandle_t`, `cudnnTensorDescriptor_t`, ...).
pub type HandlePtr = *mut c_void;
pub type TensorDescPtr = *mut c_void;
pub type FilterDescPtr = *mut c_void;
pub type ConvDescPtr = *mut c_void;
pub type ActDescPtr = *mut c_void;
/// `cudnnStatus_t`; like every cuDNN enum a C `int`.
pub type Status = c_int;

/// `cudnnStatus_t` (cudnn_graph.h). In cuDNN 9 a status is a category
/// (a multiple of 1000) plus a specific code: 3002 is NOT_SUPPORTED_SHAPE.
pub const STATUS_SUCCESS: Status = 0;
pub const STATUS_BAD_PARAM: Status = 2000;
pub const STATUS_NOT_SUPPORTED: Status = 3000;
/// `cudnnTensorFormat_t::CUDNN_TENSOR_NHWC` (cudnn_graph.h).
pub const TENSOR_NHWC: c_int = 1;
/// `cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION` (cudnn_graph.h): PyTorch's convolution.
pub const CROSS_CORRELATION: c_int = 1;
/// `cudnnActivationMode_t` (cudnn_graph.h).
pub const ACTIVATION_RELU: c_int = 1;
pub const ACTIVATION_IDENTITY: c_int = 5;
/// `cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN` (cudnn_graph.h).
pub const NOT_PROPAGATE_NAN: c_int = 0;
/// `CUDNN_CONVOLUTION_FWD_ALGO_COUNT` (cudnn_ops.h): algorithms 0..8.
pub const FWD_ALGO_COUNT: usize = 8;

/// `cudnnConvolutionFwdAlgoPerf_t` (cudnn_cnn.h; cudarc's sys has the same).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConvFwdAlgoPerf {
    /// `cudnnConvolutionFwdAlgo_t`.
    pub algo: c_int,
    pub status: Status,
    /// Milliseconds.
    pub time: f32,
    /// Workspace bytes.
    pub memory: usize,
    /// `cudnnDeterminism_t`.
    pub determinism: c_int,
    /// `cudnnMathType_t` the timing ran with.
    pub math_type: c_int,
    pub reserved: [c_int; 3],
}

/// Why cuDNN could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudnnError {
    #[error("cannot load cuDNN 9 ({path}): {reason}. {}", FIX)]
    Load { path: String, reason: String },
    #[error("{path} is not cuDNN 9: it lacks {symbol} ({reason}). {}", FIX)]
    Symbol {
        path: String,
        symbol: &'static str,
        reason: String,
    },
    #[error(
        "cuDNN {major}.{minor}.{patch} found ({path}), cuDNN 9 needed. {}",
        FIX
    )]
    Version {
        path: String,
        major: usize,
        minor: usize,
        patch: usize,
    },
}

/// A cuDNN call that returned an error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{function} failed: {message} (status {status})")]
pub struct StatusError {
    pub function: &'static str,
    pub status: Status,
    /// `cudnnGetErrorString`'s text.
    pub message: String,
}

impl StatusError {
    /// CUDNN_STATUS_NOT_SUPPORTED or one of its specific codes.
    pub fn is_not_supported(&self) -> bool {
        self.status / 1000 * 1000 == STATUS_NOT_SUPPORTED
    }

    /// CUDNN_STATUS_BAD_PARAM or one of its specific codes.
    pub fn is_bad_param(&self) -> bool {
        self.status / 1000 * 1000 == STATUS_BAD_PARAM
    }
}

/// The library's functions as `field = "symbol": fn(args) -> ret;`, each
/// resolved once when the library is loaded.
macro_rules! cudnn_api {
    ($($field:ident = $symbol:literal : fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// The loaded library and its functions (call them through the
        /// fields; [`Cudnn::check`] turns a status into an error).
        pub struct Cudnn {
            path: String,
            version: usize,
            $(pub $field: unsafe extern "C" fn($($arg),*) -> $ret,)*
            /// Keeps the functions above mapped.
            _lib: Library,
        }

        impl Cudnn {
            fn resolve(lib: Library, path: String) -> Result<Cudnn, CudnnError> {
                $(
                    // SAFETY: the type is the header's prototype of the symbol.
                    let $field = *unsafe {
                        lib.get::<unsafe extern "C" fn($($arg),*) -> $ret>($symbol)
                    }
                    .map_err(|e| CudnnError::Symbol {
                        path: path.clone(),
                        symbol: $symbol,
                        reason: e.to_string(),
                    })?;
                )*
                let mut cudnn = Cudnn { path, version: 0, $($field,)* _lib: lib };
                // SAFETY: cudnnGetVersion takes nothing and needs no GPU.
                cudnn.version = unsafe { (cudnn.get_version)() };
                check_version(cudnn.version, &cudnn.path)?;
                Ok(cudnn)
            }
        }
    };
}

cudnn_api! {
    // cudnn_graph.h
    get_version = "cudnnGetVersion": fn() -> usize;
    get_error_string = "cudnnGetErrorString": fn(Status) -> *const c_char;
    create = "cudnnCreate": fn(*mut HandlePtr) -> Status;
    destroy = "cudnnDestroy": fn(HandlePtr) -> Status;
    // cudaStream_t: the CUstream of cudarc's stream.
    set_stream = "cudnnSetStream": fn(HandlePtr, *mut c_void) -> Status;
    // cudnn_ops.h
    create_tensor_descriptor = "cudnnCreateTensorDescriptor": fn(*mut TensorDescPtr) -> Status;
    // (desc, format, dataType, n, c, h, w)
    set_tensor_4d_descriptor = "cudnnSetTensor4dDescriptor":
        fn(TensorDescPtr, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    destroy_tensor_descriptor = "cudnnDestroyTensorDescriptor": fn(TensorDescPtr) -> Status;
    create_filter_descriptor = "cudnnCreateFilterDescriptor": fn(*mut FilterDescPtr) -> Status;
    // (desc, dataType, format, k, c, h, w): type before format, unlike tensors.
    set_filter_4d_descriptor = "cudnnSetFilter4dDescriptor":
        fn(FilterDescPtr, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    destroy_filter_descriptor = "cudnnDestroyFilterDescriptor": fn(FilterDescPtr) -> Status;
    create_activation_descriptor = "cudnnCreateActivationDescriptor":
        fn(*mut ActDescPtr) -> Status;
    // (desc, mode, reluNanOpt, coef)
    set_activation_descriptor = "cudnnSetActivationDescriptor":
        fn(ActDescPtr, c_int, c_int, f64) -> Status;
    destroy_activation_descriptor = "cudnnDestroyActivationDescriptor": fn(ActDescPtr) -> Status;
    // cudnn_cnn.h
    create_convolution_descriptor = "cudnnCreateConvolutionDescriptor":
        fn(*mut ConvDescPtr) -> Status;
    destroy_convolution_descriptor = "cudnnDestroyConvolutionDescriptor":
        fn(ConvDescPtr) -> Status;
    // (desc, pad_h, pad_w, u, v, dilation_h, dilation_w, mode, computeType)
    set_convolution_2d_descriptor = "cudnnSetConvolution2dDescriptor":
        fn(ConvDescPtr, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    set_convolution_math_type = "cudnnSetConvolutionMathType": fn(ConvDescPtr, c_int) -> Status;
    set_convolution_group_count = "cudnnSetConvolutionGroupCount":
        fn(ConvDescPtr, c_int) -> Status;
    // (conv, input, filter, *n, *c, *h, *w)
    get_convolution_2d_forward_output_dim = "cudnnGetConvolution2dForwardOutputDim":
        fn(ConvDescPtr, TensorDescPtr, FilterDescPtr, *mut c_int, *mut c_int, *mut c_int,
           *mut c_int) -> Status;
    // (handle, x, w, conv, y, algo, *bytes)
    get_convolution_forward_workspace_size = "cudnnGetConvolutionForwardWorkspaceSize":
        fn(HandlePtr, TensorDescPtr, FilterDescPtr, ConvDescPtr, TensorDescPtr, c_int,
           *mut usize) -> Status;
    // (handle, xDesc, x, wDesc, w, conv, yDesc, y, requested, *returned, perf[],
    //  workspace, workspaceBytes)
    find_convolution_forward_algorithm_ex = "cudnnFindConvolutionForwardAlgorithmEx":
        fn(HandlePtr, TensorDescPtr, *const c_void, FilterDescPtr, *const c_void, ConvDescPtr,
           TensorDescPtr, *mut c_void, c_int, *mut c_int, *mut ConvFwdAlgoPerf, *mut c_void,
           usize) -> Status;
    // (handle, alpha, xDesc, x, wDesc, w, conv, algo, workspace, workspaceBytes, beta,
    //  yDesc, y)
    convolution_forward = "cudnnConvolutionForward":
        fn(HandlePtr, *const c_void, TensorDescPtr, *const c_void, FilterDescPtr,
           *const c_void, ConvDescPtr, c_int, *mut c_void, usize, *const c_void,
           TensorDescPtr, *mut c_void) -> Status;
    // y = act(alpha1 conv(x) + alpha2 z + bias): (handle, alpha1, xDesc, x, wDesc, w,
    //  conv, algo, workspace, workspaceBytes, alpha2, zDesc, z, biasDesc, bias, actDesc,
    //  yDesc, y)
    convolution_bias_activation_forward = "cudnnConvolutionBiasActivationForward":
        fn(HandlePtr, *const c_void, TensorDescPtr, *const c_void, FilterDescPtr,
           *const c_void, ConvDescPtr, c_int, *mut c_void, usize, *const c_void,
           TensorDescPtr, *const c_void, TensorDescPtr, *const c_void, ActDescPtr,
           TensorDescPtr, *mut c_void) -> Status;
}

impl std::fmt::Debug for Cudnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor, patch) = parse_version(self.version);
        write!(f, "cuDNN {major}.{minor}.{patch} ({})", self.path)
    }
}

impl Cudnn {
    /// The process's cuDNN, loaded on first use; a failure is kept and
    /// returned again.
    pub fn load() -> Result<&'static Cudnn, CudnnError> {
        static CUDNN: OnceLock<Result<Cudnn, CudnnError>> = OnceLock::new();
        CUDNN
            .get_or_init(|| {
                let loaded = load_from(&candidates(std::env::var_os(ENV_VAR).as_deref()));
                if let Ok(c) = &loaded {
                    tracing::info!("{c:?} loaded");
                }
                loaded
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// `(major, minor, patch)`.
    pub fn version(&self) -> (usize, usize, usize) {
        parse_version(self.version)
    }

    /// What was loaded: the path given to the loader.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// cuDNN's text for a status.
    pub fn error_string(&self, status: Status) -> String {
        // SAFETY: returns a static NUL-terminated string (or null).
        let text = unsafe { (self.get_error_string)(status) };
        if text.is_null() {
            return format!("cuDNN status {status}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }

    /// `Ok` on success, else the error naming `function` and the status.
    pub fn check(&self, function: &'static str, status: Status) -> Result<(), StatusError> {
        if status == STATUS_SUCCESS {
            return Ok(());
        }
        Err(StatusError {
            function,
            status,
            message: self.error_string(status),
        })
    }

    /// A handle working on `stream`, in the CUDA context current on this
    /// thread.
    ///
    /// # Safety
    /// `stream` is a `CUstream` of that context (or a special stream such
    /// as the per-thread one) that outlives the handle.
    pub unsafe fn handle(&'static self, stream: *mut c_void) -> Result<CudnnHandle, StatusError> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        self.check("cudnnCreate", unsafe { (self.create)(&mut raw) })?;
        let handle = CudnnHandle { cudnn: self, raw };
        // SAFETY: a live handle; the caller vouches for the stream.
        self.check("cudnnSetStream", unsafe { (self.set_stream)(raw, stream) })?;
        Ok(handle)
    }

    /// A tensor of dimensions `[n, c, h, w]` laid out channels-last (NHWC).
    pub fn nhwc_tensor(
        &'static self,
        data_type: c_int,
        [n, c, h, w]: [c_int; 4],
    ) -> Result<TensorDescriptor, StatusError> {
        let d = TensorDescriptor::create(self)?;
        // SAFETY: a live descriptor; plain values.
        let status =
            unsafe { (self.set_tensor_4d_descriptor)(d.raw, TENSOR_NHWC, data_type, n, c, h, w) };
        self.check("cudnnSetTensor4dDescriptor", status)?;
        Ok(d)
    }

    /// A filter of dimensions `[k, c, r, s]` whose memory is KRSC (the
    /// NHWC filter format).
    pub fn krsc_filter(
        &'static self,
        data_type: c_int,
        [k, c, r, s]: [c_int; 4],
    ) -> Result<FilterDescriptor, StatusError> {
        let d = FilterDescriptor::create(self)?;
        // SAFETY: a live descriptor; plain values (data type before format here).
        let status =
            unsafe { (self.set_filter_4d_descriptor)(d.raw, data_type, TENSOR_NHWC, k, c, r, s) };
        self.check("cudnnSetFilter4dDescriptor", status)?;
        Ok(d)
    }

    /// A cross-correlation (PyTorch's convolution) with `[h, w]` padding,
    /// stride and dilation, in `groups` groups, accumulating in
    /// `compute_type` under `math_type`.
    pub fn convolution(
        &'static self,
        pad: [c_int; 2],
        stride: [c_int; 2],
        dilation: [c_int; 2],
        groups: c_int,
        compute_type: c_int,
        math_type: c_int,
    ) -> Result<ConvDescriptor, StatusError> {
        let d = ConvDescriptor::create(self)?;
        // SAFETY: a live descriptor; plain values.
        let status = unsafe {
            (self.set_convolution_2d_descriptor)(
                d.raw,
                pad[0],
                pad[1],
                stride[0],
                stride[1],
                dilation[0],
                dilation[1],
                CROSS_CORRELATION,
                compute_type,
            )
        };
        self.check("cudnnSetConvolution2dDescriptor", status)?;
        // One grouped call for grouped and depthwise convolutions.
        // SAFETY: a live descriptor.
        let status = unsafe { (self.set_convolution_group_count)(d.raw, groups) };
        self.check("cudnnSetConvolutionGroupCount", status)?;
        self.set_math_type(&d, math_type)?;
        Ok(d)
    }

    pub fn set_math_type(
        &self,
        conv: &ConvDescriptor,
        math_type: c_int,
    ) -> Result<(), StatusError> {
        // SAFETY: a live descriptor.
        let status = unsafe { (self.set_convolution_math_type)(conv.raw, math_type) };
        self.check("cudnnSetConvolutionMathType", status)
    }

    /// cuDNN's own `[n, c, h, w]` of the convolution's output.
    pub fn output_dim(
        &self,
        conv: &ConvDescriptor,
        x: &TensorDescriptor,
        w: &FilterDescriptor,
    ) -> Result<[c_int; 4], StatusError> {
        let mut d = [0 as c_int; 4];
        let [n, c, h, wd] = d.each_mut().map(|v| v as *mut c_int);
        // SAFETY: live descriptors; out-pointers to a local array.
        let status = unsafe {
            (self.get_convolution_2d_forward_output_dim)(conv.raw, x.raw, w.raw, n, c, h, wd)
        };
        self.check("cudnnGetConvolution2dForwardOutputDim", status)?;
        Ok(d)
    }

    /// An activation (`ACTIVATION_RELU`, ...) that does not propagate NaN.
    pub fn activation(&'static self, mode: c_int) -> Result<ActivationDescriptor, StatusError> {
        let d = ActivationDescriptor::create(self)?;
        // SAFETY: a live descriptor; the coefficient is unused by ReLU and identity.
        let status =
            unsafe { (self.set_activation_descriptor)(d.raw, mode, NOT_PROPAGATE_NAN, 0.0) };
        self.check("cudnnSetActivationDescriptor", status)?;
        Ok(d)
    }
}

/// A cuDNN handle, destroyed on drop. Not `Send`: cuDNN handles are used
/// by one thread.
pub struct CudnnHandle {
    cudnn: &'static Cudnn,
    pub raw: HandlePtr,
}

impl Drop for CudnnHandle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate, destroyed once.
        unsafe { (self.cudnn.destroy)(self.raw) };
    }
}

/// An owning descriptor type: created empty, destroyed on drop.
macro_rules! descriptor {
    ($name:ident, $ptr:ty, $create:ident, $create_name:literal, $destroy:ident) => {
        pub struct $name {
            cudnn: &'static Cudnn,
            pub raw: $ptr,
        }

        impl $name {
            fn create(cudnn: &'static Cudnn) -> Result<Self, StatusError> {
                let mut raw = std::ptr::null_mut();
                // SAFETY: out-pointer to a local.
                cudnn.check($create_name, unsafe { (cudnn.$create)(&mut raw) })?;
                Ok($name { cudnn, raw })
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: created by the matching create call, destroyed once.
                unsafe { (self.cudnn.$destroy)(self.raw) };
            }
        }
    };
}

descriptor!(
    TensorDescriptor,
    TensorDescPtr,
    create_tensor_descriptor,
    "cudnnCreateTensorDescriptor",
    destroy_tensor_descriptor
);
descriptor!(
    FilterDescriptor,
    FilterDescPtr,
    create_filter_descriptor,
    "cudnnCreateFilterDescriptor",
    destroy_filter_descriptor
);
descriptor!(
    ConvDescriptor,
    ConvDescPtr,
    create_convolution_descriptor,
    "cudnnCreateConvolutionDescriptor",
    destroy_convolution_descriptor
);
descriptor!(
    ActivationDescriptor,
    ActDescPtr,
    create_activation_descriptor,
    "cudnnCreateActivationDescriptor",
    destroy_activation_descriptor
);

/// Where to look, given the value of `IMAGENET_HARD_CUDNN` (if set and
/// not empty: only there); else the soname, for ld.so's search.
pub fn candidates(env: Option<&OsStr>) -> Vec<PathBuf> {
    match env.filter(|v| !v.is_empty()) {
        Some(v) => vec![resolve_env(v)],
        None => vec![PathBuf::from(LIBRARY)],
    }
}

/// `IMAGENET_HARD_CUDNN`'s value as a file: a folder means its `libcudnn.so.9`.
pub fn resolve_env(value: &OsStr) -> PathBuf {
    let path = Path::new(value);
    if path.is_dir() {
        path.join(LIBRARY)
    } else {
        path.to_path_buf()
    }
}

/// Loads the first candidate that opens, resolves every function and
/// checks the version is 9.x.
pub fn load_from(candidates: &[PathBuf]) -> Result<Cudnn, CudnnError> {
    let mut failures = Vec::new();
    for path in candidates {
        // SAFETY: loading runs the library's initialisers, as any dlopen.
        match unsafe { Library::new(path) } {
            Ok(lib) => return Cudnn::resolve(lib, path.display().to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let paths: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(CudnnError::Load {
        path: paths.join(", "),
        reason: if failures.is_empty() {
            "nowhere to look".into()
        } else {
            failures.join("; ")
        },
    })
}

/// `cudnnGetVersion()` as `(major, minor, patch)`: cuDNN 9 counts
/// `major * 10000 + minor * 100 + patch` (9.13.0 is 91300), cuDNN 8 and
/// before `major * 1000 + minor * 100 + patch` (8.9.7 is 8907).
pub fn parse_version(v: usize) -> (usize, usize, usize) {
    if v >= 10_000 {
        (v / 10_000, v % 10_000 / 100, v % 100)
    } else {
        (v / 1000, v % 1000 / 100, v % 100)
    }
}

/// The version if it is 9.x, else the error naming what was found.
pub fn check_version(v: usize, path: &str) -> Result<(usize, usize, usize), CudnnError> {
    match parse_version(v) {
        (9, minor, patch) => Ok((9, minor, patch)),
        (major, minor, patch) => Err(CudnnError::Version {
            path: path.to_string(),
            major,
            minor,
            patch,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_names_the_fix() {
        let e = load_from(&[PathBuf::from("/no/such/dir/libcudnn.so.9")]).unwrap_err();
        assert!(matches!(e, CudnnError::Load { .. }), "{e:?}");
        let text = e.to_string();
        for needle in [
            "cannot load cuDNN 9",
            "/no/such/dir/libcudnn.so.9",
            "libcudnn.so.9",
            "IMAGENET_HARD_CUDNN",
            "LD_LIBRARY_PATH",
            "pip install nvidia-cudnn-cu13",
            "--kernels candle",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        // Every candidate is tried and named.
        let e = load_from(&[PathBuf::from("/no/a.so"), PathBuf::from("/no/b.so")]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/no/a.so, /no/b.so"), "{text}");
    }

    #[test]
    fn the_env_var_names_the_file_or_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_env(dir.path().as_os_str()),
            dir.path().join("libcudnn.so.9")
        );
        let file = dir.path().join("libcudnn.so.9.13.0");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(resolve_env(file.as_os_str()), file);
        // A path that does not exist is taken as the file (loading says why it fails).
        let missing = dir.path().join("nope/libcudnn.so.9");
        assert_eq!(resolve_env(missing.as_os_str()), missing);

        assert_eq!(candidates(None), [PathBuf::from("libcudnn.so.9")]);
        assert_eq!(
            candidates(Some(OsStr::new(""))),
            [PathBuf::from("libcudnn.so.9")]
        );
        assert_eq!(
            candidates(Some(dir.path().as_os_str())),
            [dir.path().join("libcudnn.so.9")]
        );
    }

    #[test]
    fn a_library_that_is_not_cudnn_names_the_missing_symbol() {
        let e = load_from(&[PathBuf::from("libc.so.6")]).unwrap_err();
        match &e {
            CudnnError::Symbol { symbol, path, .. } => {
                assert_eq!(*symbol, "cudnnGetVersion");
                assert_eq!(path, "libc.so.6");
            }
            other => panic!("{other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains("libc.so.6 is not cuDNN 9"), "{text}");
        assert!(text.contains("cudnnGetVersion"), "{text}");
        assert!(text.contains("--kernels candle"), "{text}");
    }

    #[test]
    fn only_cudnn_9_is_accepted() {
        assert_eq!(parse_version(91300), (9, 13, 0));
        assert_eq!(check_version(91300, "x"), Ok((9, 13, 0)));
        assert_eq!(check_version(90100, "x"), Ok((9, 1, 0)));
        assert_eq!(check_version(92102, "x"), Ok((9, 21, 2)));
        assert_eq!(parse_version(8907), (8, 9, 7));
        let e = check_version(8907, "/opt/libcudnn.so.9").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("cuDNN 8.9.7 found (/opt/libcudnn.so.9), cuDNN 9 needed."),
            "{text}"
        );
        assert!(text.contains("--kernels candle"), "{text}");
        let e = check_version(100_200, "x").unwrap_err().to_string();
        assert!(e.starts_with("cuDNN 10.2.0 found"), "{e}");
    }

    #[test]
    fn status_categories() {
        let e = |status| StatusError {
            function: "f",
            status,
            message: String::new(),
        };
        assert!(e(3000).is_not_supported() && e(3002).is_not_supported());
        assert!(!e(3000).is_bad_param() && !e(4000).is_not_supported());
        assert!(e(2000).is_bad_param() && e(2008).is_bad_param());
        assert_eq!(
            StatusError {
                function: "cudnnConvolutionForward",
                status: 3000,
                message: "CUDNN_STATUS_NOT_SUPPORTED".into()
            }
            .to_string(),
            "cudnnConvolutionForward failed: CUDNN_STATUS_NOT_SUPPORTED (status 3000)"
        );
    }

    #[test]
    fn the_perf_struct_has_the_header_layout() {
        use std::mem::{align_of, offset_of, size_of};
        // {int algo; int status; float time; size_t memory; int determinism;
        //  int mathType; int reserved[3];} on LP64.
        assert_eq!(offset_of!(ConvFwdAlgoPerf, time), 8);
        assert_eq!(offset_of!(ConvFwdAlgoPerf, memory), 16);
        assert_eq!(offset_of!(ConvFwdAlgoPerf, determinism), 24);
        assert_eq!(offset_of!(ConvFwdAlgoPerf, math_type), 28);
        assert_eq!(offset_of!(ConvFwdAlgoPerf, reserved), 32);
        assert_eq!(size_of::<ConvFwdAlgoPerf>(), 48);
        assert_eq!(align_of::<ConvFwdAlgoPerf>(), 8);
    }

    /// The descriptor calls against a real cuDNN 9, which needs no GPU for
    /// them: our output sizes are cuDNN's, with the NHWC formats and the
    /// filter's argument order as declared.
    // Getters, for this test only: read back what the setters stored.
    type GetTensor = unsafe extern "C" fn(
        TensorDescPtr,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
    ) -> Status;
    type GetFilter = unsafe extern "C" fn(
        FilterDescPtr,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
    ) -> Status;
    type GetInt = unsafe extern "C" fn(ConvDescPtr, *mut c_int) -> Status;

    struct Getters {
        tensor: GetTensor,
        filter: GetFilter,
        groups: GetInt,
        math: GetInt,
    }

    fn getters(cudnn: &Cudnn) -> Getters {
        // SAFETY: the symbols' types are cuDNN 9's declarations.
        unsafe {
            Getters {
                tensor: *cudnn
                    ._lib
                    .get::<GetTensor>("cudnnGetTensor4dDescriptor")
                    .unwrap(),
                filter: *cudnn
                    ._lib
                    .get::<GetFilter>("cudnnGetFilter4dDescriptor")
                    .unwrap(),
                groups: *cudnn
                    ._lib
                    .get::<GetInt>("cudnnGetConvolutionGroupCount")
                    .unwrap(),
                math: *cudnn
                    ._lib
                    .get::<GetInt>("cudnnGetConvolutionMathType")
                    .unwrap(),
            }
        }
    }

    /// One geometry in one data type: the descriptors cuDNN stored hold our
    /// dims, strides, formats, group count and math type, and cuDNN's output
    /// size is ours.
    fn descriptors_agree(
        cudnn: &'static Cudnn,
        get: &Getters,
        g: super::super::geometry::ConvGeometry,
        x: super::super::geometry::Nhwc,
        dt: super::super::geometry::DataType,
    ) {
        let i32s = |v: [usize; 2]| v.map(|x| x as c_int);
        let (get_tensor, get_filter, get_groups, get_math) =
            (get.tensor, get.filter, get.groups, get.math);
        let xd = cudnn
            .nhwc_tensor(dt.cudnn_data(), x.dims().unwrap())
            .unwrap();
        // The tensor: our data type, dims, and NHWC strides.
        let mut t = [0 as c_int; 9];
        let [a, b, c, d, e, f, g2, h, i] = t.each_mut().map(|v| v as *mut c_int);
        let status = unsafe { get_tensor(xd.raw, a, b, c, d, e, f, g2, h, i) };
        cudnn.check("cudnnGetTensor4dDescriptor", status).unwrap();
        assert_eq!(t[0], dt.cudnn_data(), "{g} {dt:?}");
        assert_eq!(t[1..5], x.dims().unwrap(), "{g} {dt:?}");
        assert_eq!(t[5..9], x.strides().unwrap(), "{g} {dt:?}");

        let wd = cudnn
            .krsc_filter(dt.cudnn_data(), g.filter_dims().unwrap())
            .unwrap();
        // The filter: data type and format in their places.
        let mut fl = [0 as c_int; 6];
        let [a, b, c, d, e, f] = fl.each_mut().map(|v| v as *mut c_int);
        let status = unsafe { get_filter(wd.raw, a, b, c, d, e, f) };
        cudnn.check("cudnnGetFilter4dDescriptor", status).unwrap();
        assert_eq!(fl[0], dt.cudnn_data(), "{g} {dt:?}");
        assert_eq!(fl[1], TENSOR_NHWC, "{g} {dt:?}");
        assert_eq!(fl[2..6], g.filter_dims().unwrap(), "{g} {dt:?}");

        let conv = cudnn
            .convolution(
                i32s(g.pad),
                i32s(g.stride),
                i32s(g.dilation),
                g.groups as c_int,
                dt.cudnn_compute(),
                dt.cudnn_math(),
            )
            .unwrap();
        let (mut groups, mut math) = (0, -1);
        unsafe {
            cudnn
                .check("groups", get_groups(conv.raw, &mut groups))
                .unwrap();
            cudnn.check("math", get_math(conv.raw, &mut math)).unwrap();
        }
        assert_eq!((groups, math), (g.groups as c_int, dt.cudnn_math()));
        let ours = x.conv_out(&g).unwrap().dims().unwrap();
        assert_eq!(
            cudnn.output_dim(&conv, &xd, &wd).unwrap(),
            ours,
            "{g} {dt:?}"
        );
    }

    #[test]
    #[ignore = "needs cuDNN 9: IMAGENET_HARD_CUDNN=/path/to/libcudnn.so.9 \
                cargo test --lib channels_last::cudnn -- --ignored"]
    fn real_cudnn_descriptors_agree_with_our_geometry() {
        use super::super::geometry::{ConvGeometry, DataType, Nhwc};
        let env = std::env::var_os(ENV_VAR);
        let cudnn: &'static Cudnn =
            Box::leak(Box::new(load_from(&candidates(env.as_deref())).unwrap()));
        assert_eq!(cudnn.version().0, 9, "{cudnn:?}");
        assert!(
            cudnn
                .error_string(STATUS_NOT_SUPPORTED)
                .contains("NOT_SUPPORTED"),
            "{}",
            cudnn.error_string(STATUS_NOT_SUPPORTED)
        );
        let get = getters(cudnn);
        let cases = [
            ConvGeometry::square(3, 64, 7, 2, 3),
            ConvGeometry::depthwise(96, 5, 2, 2),
            ConvGeometry {
                groups: 2,
                dilation: [2, 3],
                kernel: [3, 5],
                stride: [1, 2],
                pad: [2, 1],
                ..ConvGeometry::square(4, 6, 3, 1, 2)
            },
            ConvGeometry::square(3, 768, 32, 32, 0),
        ];
        for g in cases {
            let x = Nhwc {
                n: 3,
                h: 37,
                w: 53,
                c: g.c_in,
            };
            for dt in [DataType::F32, DataType::F16, DataType::Bf16] {
                descriptors_agree(cudnn, &get, g, x, dt);
            }
        }
        // The group count is what makes a [8, 4, 3, 3] filter fit 8 channels.
        let xd = cudnn.nhwc_tensor(0, [1, 8, 9, 9]).unwrap();
        let wd = cudnn.krsc_filter(0, [8, 4, 3, 3]).unwrap();
        let grouped = cudnn.convolution([1, 1], [1, 1], [1, 1], 2, 0, 3).unwrap();
        assert_eq!(cudnn.output_dim(&grouped, &xd, &wd), Ok([1, 8, 9, 9]));
        let plain = cudnn.convolution([1, 1], [1, 1], [1, 1], 1, 0, 3).unwrap();
        let e = cudnn.output_dim(&plain, &xd, &wd).unwrap_err();
        assert!(e.is_bad_param(), "{e}");
        assert!(
            e.to_string().starts_with(
                "cudnnGetConvolution2dForwardOutputDim failed: CUDNN_STATUS_BAD_PARAM"
            ),
            "{e}"
        );
        assert!(cudnn.activation(ACTIVATION_RELU).is_ok());
    }
}
