//! The paper's zoom transform (protocol §1): decode to RGB, resize so the shorter
//! side is `S` with Pillow's antialiased bicubic, cut a crop around one of the
//! 3x3 anchors with black fill, normalise.
//!
//! Geometry is pure integer arithmetic; the resampler reproduces Pillow's
//! fixed-point convolution, so crops match Pillow's.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The 36 scales of the zoom study, sorted.
pub(crate) const PAPER_SCALES: [u32; 36] = [
    10, 16, 32, 48, 64, 96, 122, 128, 192, 224, 235, 240, 256, 288, 320, 348, 384, 448, 460, 512,
    573, 576, 640, 664, 672, 680, 686, 690, 700, 720, 768, 798, 832, 896, 911, 1024,
];

/// ImageNet mean/std, used by the zoom study for every model (CLIP included).
pub(crate) const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub(crate) const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One zoom transform: anchor `(row, col)` on the grid and shorter side `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Transform {
    pub row: u8,
    pub col: u8,
    pub scale: u32,
}

impl Transform {
    /// The standard single "1-crop" view.
    pub(crate) const ONE_CROP: Transform = Transform {
        row: 1,
        col: 1,
        scale: 256,
    };
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}c{}s{}", self.row, self.col, self.scale)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{0}` is not a transform name; expected r<row>c<col>s<scale>, e.g. r1c1s256")]
pub struct BadTransformName(pub String);

impl FromStr for Transform {
    type Err = BadTransformName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadTransformName(s.to_string());
        let rest = s.strip_prefix('r').ok_or_else(bad)?;
        let (row, rest) = rest.split_once('c').ok_or_else(bad)?;
        let (col, scale) = rest.split_once('s').ok_or_else(bad)?;
        Ok(Transform {
            row: row.parse().map_err(|_| bad())?,
            col: col.parse().map_err(|_| bad())?,
            scale: scale.parse().map_err(|_| bad())?,
        })
    }
}

/// The exhaustive grid of transforms scanned for every image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoomGrid {
    /// Shorter-side sizes, ascending.
    pub scales: Vec<u32>,
    /// Anchor grid is `anchors x anchors` (3 in the paper).
    pub anchors: u8,
    /// Side of the square crop fed to the model.
    pub crop_size: u32,
    /// Value of pixels outside the resized image, before normalisation.
    pub fill: u8,
}

impl ZoomGrid {
    pub fn paper() -> Self {
        ZoomGrid {
            scales: PAPER_SCALES.to_vec(),
            anchors: 3,
            crop_size: 224,
            fill: 0,
        }
    }

    /// All transforms in canonical order: row, then column, then scale, ascending.
    /// A transform's position in this list is its index in scan records.
    pub fn transforms(&self) -> Vec<Transform> {
        let mut out = Vec::with_capacity(self.len());
        for row in 0..self.anchors {
            for col in 0..self.anchors {
                for &scale in &self.scales {
                    out.push(Transform { row, col, scale });
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.scales.len() * self.anchors as usize * self.anchors as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of `t` in [`ZoomGrid::transforms`], if it belongs to the grid.
    pub(crate) fn index_of(&self, t: Transform) -> Option<usize> {
        let s = self.scales.iter().position(|&s| s == t.scale)?;
        if t.row >= self.anchors || t.col >= self.anchors {
            return None;
        }
        let anchor = t.row as usize * self.anchors as usize + t.col as usize;
        Some(anchor * self.scales.len() + s)
    }
}

/// Size after resizing so the shorter side is `scale`; the longer side is
/// `floor(scale * long / short)` (torchvision's `Resize(int)` on a PIL image).
pub(crate) fn resized_size(width: u32, height: u32, scale: u32) -> (u32, u32) {
    let long_of = |long: u32, short: u32| ((scale as u64 * long as u64) / short as u64) as u32;
    if width <= height {
        (scale, long_of(height, width))
    } else {
        (long_of(width, height), scale)
    }
}

/// Top-left corner of the crop for anchor `(row, col)` in a `width x height`
/// resized image: `tile = size / anchors`, `anchor = i*tile + tile/2`,
/// corner = anchor - crop/2. May be negative or past the edge (zero fill).
pub(crate) fn crop_origin(
    width: u32,
    height: u32,
    row: u8,
    col: u8,
    anchors: u8,
    crop: u32,
) -> (i64, i64) {
    let tile_w = (width / anchors as u32) as i64;
    let tile_h = (height / anchors as u32) as i64;
    let anchor_x = col as i64 * tile_w + tile_w / 2;
    let anchor_y = row as i64 * tile_h + tile_h / 2;
    let half = (crop / 2) as i64;
    (anchor_x - half, anchor_y - half)
}

/// An 8-bit RGB image, rows packed, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Limits applied while decoding untrusted images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeLimits {
    /// Largest accepted width or height, in pixels.
    pub max_side: u32,
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
    /// Largest accepted encoded size, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Largest working memory of one image's zoom: its decoded pixels plus
    /// the largest scale's resampling buffers ([`zoom_bytes`]). Only the
    /// pixels under the crops are resampled, so within the other limits an
    /// image needs at most about 0.6 GB; lower it to cap a worker's memory.
    #[serde(default = "default_max_zoom_bytes")]
    pub max_zoom_bytes: u64,
}

fn default_max_bytes() -> u64 {
    100_000_000
}

fn default_max_zoom_bytes() -> u64 {
    1 << 30
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_side: 32_768,
            max_pixels: 178_956_970,
            max_bytes: default_max_bytes(),
            max_zoom_bytes: default_max_zoom_bytes(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty image bytes")]
    Empty,
    #[error("unrecognised image format")]
    UnknownFormat,
    #[error("image is {width}x{height}, over the decode limit ({limit}); raise `decode.max_pixels`/`decode.max_side` if it is genuine")]
    TooLarge {
        width: u32,
        height: u32,
        limit: String,
    },
    #[error("image file is {bytes} bytes, over the decode limit of {limit}; raise `decode.max_bytes` if it is genuine")]
    TooManyBytes { bytes: u64, limit: u64 },
    #[error("cannot decode image: {0}")]
    Decode(String),
    #[error("zooming this {width}x{height} image takes {bytes} bytes, over `decode.max_zoom_bytes` ({limit}); raise it if the worker has the memory")]
    TooLargeAfterZoom {
        width: u32,
        height: u32,
        bytes: u64,
        limit: u64,
    },
}

impl DecodeError {
    /// Short, stable reason used to count skips.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty-image",
            DecodeError::UnknownFormat => "unknown-format",
            DecodeError::TooLarge { .. } | DecodeError::TooManyBytes { .. } => "too-large",
            DecodeError::Decode(_) => "corrupt-image",
            DecodeError::TooLargeAfterZoom { .. } => "too-large-after-zoom",
        }
    }
}

/// Decode any supported image (JPEG, PNG; grey, palette, alpha, CMYK, 16-bit)
/// to 8-bit RGB. Alpha is dropped, as Pillow's `convert("RGB")` does.
/// Grey and YCbCr JPEGs go through libjpeg-turbo's decoder (mozjpeg), the
/// one inside Pillow, so pixels match Pillow's exactly; other formats and
/// CMYK JPEGs go through the `image` crate.
pub fn decode_rgb(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    use image::ImageReader;
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(DecodeError::TooManyBytes {
            bytes: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        if let Some(result) = decode_jpeg(bytes, limits) {
            return result;
        }
    }
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    check_limits(width, height, limits)?;
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_side);
    image_limits.max_image_height = Some(limits.max_side);
    reader.limits(image_limits);
    let decoded = reader
        .decode()
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    let rgb = decoded.into_rgb8();
    Ok(RgbImage {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}

/// Decode an image that will be zoomed over `grid`, refusing one whose
/// zoom would take more than `limits.max_zoom_bytes`.
pub(crate) fn decode_for_zoom(
    bytes: &[u8],
    limits: DecodeLimits,
    grid: &ZoomGrid,
) -> Result<RgbImage, DecodeError> {
    let img = decode_rgb(bytes, limits)?;
    let need = zoom_bytes(&img, grid);
    if need > limits.max_zoom_bytes {
        return Err(DecodeError::TooLargeAfterZoom {
            width: img.width,
            height: img.height,
            bytes: need,
            limit: limits.max_zoom_bytes,
        });
    }
    Ok(img)
}

fn check_limits(width: u32, height: u32, limits: DecodeLimits) -> Result<(), DecodeError> {
    if width > limits.max_side
        || height > limits.max_side
        || width as u64 * height as u64 > limits.max_pixels
    {
        let limit = format!(
            "max_side {}, max_pixels {}",
            limits.max_side, limits.max_pixels
        );
        return Err(DecodeError::TooLarge {
            width,
            height,
            limit,
        });
    }
    Ok(())
}

/// libjpeg-turbo decode of a grey or YCbCr JPEG; `None` for other colour
/// spaces (CMYK, YCCK), which the caller hands to the `image` crate.
fn decode_jpeg(bytes: &[u8], limits: DecodeLimits) -> Option<Result<RgbImage, DecodeError>> {
    use mozjpeg::{ColorSpace, Decompress};
    // libjpeg pads a truncated stream with grey and only warns; Pillow
    // refuses it, and so do we: the end-of-image marker must be there.
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Some(Err(DecodeError::Decode(
            "truncated JPEG: no end-of-image marker".into(),
        )));
    }
    // mozjpeg reports libjpeg errors by unwinding; contain them here.
    let err = |e: std::io::Error| DecodeError::Decode(e.to_string());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<Option<RgbImage>, DecodeError> {
            let d = Decompress::new_mem(bytes).map_err(err)?;
            if !matches!(
                d.color_space(),
                ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB
            ) {
                return Ok(None);
            }
            let (width, height) = (d.width() as u32, d.height() as u32);
            check_limits(width, height, limits)?;
            let mut started = d.rgb().map_err(err)?;
            let data: Vec<u8> = started.read_scanlines::<u8>().map_err(err)?;
            started.finish().map_err(err)?;
            if data.len() != width as usize * height as usize * 3 {
                return Err(DecodeError::Decode(
                    "JPEG ended before its last scanline".into(),
                ));
            }
            Ok(Some(RgbImage {
                width,
                height,
                data,
            }))
        },
    ));
    match result {
        Ok(outcome) => outcome.transpose(),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg error".into());
            Some(Err(DecodeError::Decode(msg)))
        }
    }
}

/// Resampling filter of a resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Pillow BICUBIC (a = -0.5), antialiased when downscaling.
    Bicubic,
    /// Pillow BILINEAR, antialiased when downscaling (torchvision's eval default).
    Bilinear,
}

/// Resize to exactly `width x height` the way Pillow's `Image.resize` does
/// for 8-bit images: a separable convolution whose kernel support widens
/// with the downscale factor (antialiasing), weights normalised per output
/// pixel and rounded to 22-bit fixed point, horizontal pass first into an
/// 8-bit intermediate, then the vertical pass. Implemented here rather than
/// with a SIMD resizer because bit-exact parity with Pillow is the point.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Interpolation) -> RgbImage {
    let region = resize_region(
        img,
        (width, height),
        filter,
        Runs::all(width as usize),
        Runs::all(height as usize),
    );
    RgbImage {
        width,
        height,
        data: region.data,
    }
}

/// Sorted, disjoint runs of pixel indices along one axis.
#[derive(Debug, Clone, PartialEq)]
struct Runs(Vec<std::ops::Range<usize>>);

impl Runs {
    fn all(n: usize) -> Runs {
        Runs(std::iter::once(0..n).filter(|r| !r.is_empty()).collect())
    }

    /// The union of the windows `[start, start + len)`, clipped to `[0, size)`.
    fn windows(size: usize, starts: impl IntoIterator<Item = i64>, len: usize) -> Runs {
        Runs::merged(starts.into_iter().filter_map(|start| {
            let lo = start.clamp(0, size as i64) as usize;
            let hi = (start + len as i64).clamp(0, size as i64) as usize;
            (hi > lo).then_some(lo..hi)
        }))
    }

    fn merged(ranges: impl IntoIterator<Item = std::ops::Range<usize>>) -> Runs {
        let mut v: Vec<std::ops::Range<usize>> = ranges.into_iter().collect();
        v.sort_by_key(|r| r.start);
        let mut out: Vec<std::ops::Range<usize>> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        Runs(out)
    }

    fn count(&self) -> usize {
        self.0.iter().map(|r| r.len()).sum()
    }

    fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().flat_map(|r| r.clone())
    }

    /// Where index `i` sits among the runs' indices.
    fn position(&self, i: usize) -> Option<usize> {
        let mut before = 0;
        for r in &self.0 {
            if r.contains(&i) {
                return Some(before + i - r.start);
            }
            before += r.len();
        }
        None
    }
}

/// Part of a resized image: the pixels where the output rows `rows` cross
/// the output columns `cols`, packed row by row.
struct Region {
    cols: Runs,
    rows: Runs,
    data: Vec<u8>,
}

impl Region {
    /// Pixels `[x0, x1)` of output row `y`, if the region holds them all
    /// in one run.
    fn span(&self, y: usize, x0: usize, x1: usize) -> Option<&[u8]> {
        let py = self.rows.position(y)?;
        let px = self.cols.position(x0)?;
        if x1 > x0 && self.cols.position(x1 - 1)? != px + (x1 - 1 - x0) {
            return None;
        }
        let row = self.cols.count() * 3;
        self.data
            .get(py * row + px * 3..py * row + (px + x1 - x0) * 3)
    }
}

/// The bytes [`resize_region`] works in to compute `cols x rows` of a
/// resize of `img` to `height` rows: the horizontal pass's output for the
/// source rows the vertical pass reads, plus the region itself.
fn region_bytes(
    img: &RgbImage,
    height: u32,
    filter: Interpolation,
    cols: &Runs,
    rows: &Runs,
) -> u64 {
    let src_rows = if height != img.height {
        Taps::new(img.height, height, filter, rows.indices())
            .source_runs()
            .count()
    } else {
        rows.count()
    };
    3 * cols.count() as u64 * (src_rows + rows.count()) as u64
}

/// Resize `img` to `width x height`, computing only the output pixels of
/// `rows x cols`: each one depends only on its filter taps, so the values
/// are those of the full resize, with memory and time bounded by the
/// region (a 1 x 6000 image zoomed to a shorter side of 1024 is 6 million
/// pixels long; its crops need 672 rows of it).
fn resize_region(
    img: &RgbImage,
    (width, height): (u32, u32),
    filter: Interpolation,
    cols: Runs,
    rows: Runs,
) -> Region {
    let iw = img.width as usize;
    let vtaps =
        (height != img.height).then(|| Taps::new(img.height, height, filter, rows.indices()));
    // The source rows the vertical pass reads (all of `rows` when it is skipped).
    let src_rows = match &vtaps {
        Some(t) => t.source_runs(),
        None => rows.clone(),
    };
    let ncols = cols.count();
    let line = ncols * 3;
    // Horizontal pass (or a copy of the needed columns) into `mid`.
    let htaps = (width != img.width).then(|| Taps::new(img.width, width, filter, cols.indices()));
    let mut mid = vec![0u8; src_rows.count() * line];
    for (ri, y) in src_rows.indices().enumerate() {
        let src = &img.data[y * iw * 3..(y + 1) * iw * 3];
        let dst = &mut mid[ri * line..(ri + 1) * line];
        match &htaps {
            Some(t) => {
                for (k, px) in dst.chunks_exact_mut(3).enumerate() {
                    let (first, w) = t.of(k);
                    let mut acc = [HALF; 3];
                    for (j, &wt) in w.iter().enumerate() {
                        let p = &src[(first + j) * 3..(first + j) * 3 + 3];
                        acc[0] += wt * p[0] as i32;
                        acc[1] += wt * p[1] as i32;
                        acc[2] += wt * p[2] as i32;
                    }
                    px.copy_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
                }
            }
            None => {
                let mut at = 0;
                for r in &cols.0 {
                    dst[at..at + r.len() * 3].copy_from_slice(&src[r.start * 3..r.end * 3]);
                    at += r.len() * 3;
                }
            }
        }
    }
    let Some(vt) = vtaps else {
        return Region {
            cols,
            rows,
            data: mid,
        };
    };
    // Vertical pass over the packed columns.
    let mut out = vec![0u8; rows.count() * line];
    let mut acc = vec![0i32; line];
    for (k, dst) in out
        .chunks_exact_mut(line.max(1))
        .enumerate()
        .take(rows.count())
    {
        let (first, w) = vt.of(k);
        // A tap range lies inside one run of source rows.
        let base = src_rows.position(first).unwrap_or(0);
        acc.iter_mut().for_each(|a| *a = HALF);
        for (j, &wt) in w.iter().enumerate() {
            let src = &mid[(base + j) * line..(base + j + 1) * line];
            for (a, &v) in acc.iter_mut().zip(src) {
                *a += wt * v as i32;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    Region {
        cols,
        rows,
        data: out,
    }
}

/// Fixed-point fraction bits of the weights (Pillow's `PRECISION_BITS` for 8-bit images).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Sums start at one half, for rounding (as Pillow's do).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Shift a fixed-point sum (started at [`HALF`]) back to 8 bits, clamped.
/// Sums fit in i32 as in Pillow: the weights add up to 2^22 and their
/// positive part to at most 1.25 x 2^22, times 255.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Per wanted output pixel: the first input pixel and the fixed-point
/// weights, `stride` slots each.
struct Taps {
    first: Vec<usize>,
    len: Vec<usize>,
    stride: usize,
    weights: Vec<i32>,
}

impl Taps {
    /// Taps of the output pixels `outputs` of an `in_size -> out_size`
    /// resize, in that order.
    fn new(
        in_size: u32,
        out_size: u32,
        filter: Interpolation,
        outputs: impl Iterator<Item = usize>,
    ) -> Taps {
        let (support, kernel): (f64, fn(f64) -> f64) = match filter {
            Interpolation::Bicubic => (2.0, bicubic),
            Interpolation::Bilinear => (1.0, bilinear),
        };
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = support * filter_scale;
        // Outputs read at most floor(2 * support) + 1 inputs.
        let stride = (2.0 * support).ceil() as usize + 2;
        let mut taps = Taps {
            first: Vec::new(),
            len: Vec::new(),
            stride,
            weights: Vec::new(),
        };
        let mut raw: Vec<f64> = Vec::with_capacity(stride);
        for x in outputs {
            let center = (x as f64 + 0.5) * scale;
            // Truncation toward zero, as a C cast does.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64)
                .min(in_size as i64)
                .max(lo as i64) as usize;
            raw.clear();
            raw.extend((lo..hi).map(|i| kernel((i as f64 - center + 0.5) / filter_scale)));
            let total: f64 = raw.iter().sum();
            taps.first.push(lo);
            taps.len.push(raw.len());
            let at = taps.weights.len();
            taps.weights.resize(at + stride, 0);
            for (slot, &w) in taps.weights[at..].iter_mut().zip(&raw) {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * (1u64 << PRECISION_BITS) as f64;
                *slot = (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32;
            }
        }
        taps
    }

    /// The `k`-th wanted output's first input pixel and weights.
    fn of(&self, k: usize) -> (usize, &[i32]) {
        let at = k * self.stride;
        (self.first[k], &self.weights[at..at + self.len[k]])
    }

    /// The input pixels any wanted output reads.
    fn source_runs(&self) -> Runs {
        Runs::merged(
            self.first
                .iter()
                .zip(&self.len)
                .filter(|(_, &n)| n > 0)
                .map(|(&f, &n)| f..f + n),
        )
    }
}

/// Keys' cubic with a = -0.5 (Pillow's BICUBIC).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn bilinear(x: f64) -> f64 {
    (1.0 - x.abs()).max(0.0)
}

/// Cut a `size x size` window at `(left, top)`; pixels outside `img` are `fill`.
pub(crate) fn crop_with_fill(img: &RgbImage, left: i64, top: i64, size: u32, fill: u8) -> RgbImage {
    let size_us = size as usize;
    let mut data = vec![fill; size_us * size_us * 3];
    let (w, h) = (img.width as i64, img.height as i64);
    let x0 = left.max(0);
    let x1 = (left + size as i64).min(w);
    if x1 > x0 {
        let span = (x1 - x0) as usize * 3;
        for y in top.max(0)..(top + size as i64).min(h) {
            let src = (y as usize * img.width as usize + x0 as usize) * 3;
            let dst = ((y - top) as usize * size_us + (x0 - left) as usize) * 3;
            data[dst..dst + span].copy_from_slice(&img.data[src..src + span]);
        }
    }
    RgbImage {
        width: size,
        height: size,
        data,
    }
}

/// Torchvision `CenterCrop`: offsets are `round((side - crop) / 2)` with
/// Python's round-half-to-even.
pub(crate) fn center_crop_origin(width: u32, height: u32, crop: u32) -> (i64, i64) {
    let offset = |side: u32| ((side as f64 - crop as f64) / 2.0).round_ties_even() as i64;
    (offset(width), offset(height))
}

/// The evaluation view of torchvision/timm: resize shorter side to `resize_to`,
/// centre-crop `crop` (only the crop's pixels are resampled).
pub(crate) fn center_view(
    img: &RgbImage,
    resize_to: u32,
    crop: u32,
    filter: Interpolation,
) -> RgbImage {
    let (w, h) = resized_size(img.width, img.height, resize_to);
    let (left, top) = center_crop_origin(w, h, crop);
    let region = resize_region(
        img,
        (w, h),
        filter,
        Runs::windows(w as usize, [left], crop as usize),
        Runs::windows(h as usize, [top], crop as usize),
    );
    crop_region(&region, (w, h), left, top, crop, 0)
}

/// `x/255`, then `(x - mean) / std`, written channel-first into `out`
/// (length `3 * width * height`).
pub(crate) fn normalise_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let plane = img.width as usize * img.height as usize;
    assert_eq!(out.len(), plane * 3, "output buffer must hold 3 planes");
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
}

/// The value `normalise_chw` gives each 8-bit level of each channel:
/// `lut[c * 256 + v]`. Normalising through this table (on any device) is
/// bit-identical to [`normalise_chw`].
pub(crate) fn normalise_lut(mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    (0..3)
        .flat_map(|c| (0..=255u8).map(move |v| (v as f32 / 255.0 - mean[c]) / std[c]))
        .collect()
}

/// The crop windows of one scale: the resized size, and the left and top
/// edges of the anchors' columns and rows.
fn scale_windows(img: &RgbImage, scale: u32, grid: &ZoomGrid) -> ((u32, u32), Vec<i64>, Vec<i64>) {
    let (w, h) = resized_size(img.width, img.height, scale);
    let lefts = (0..grid.anchors)
        .map(|col| crop_origin(w, h, 0, col, grid.anchors, grid.crop_size).0)
        .collect();
    let tops = (0..grid.anchors)
        .map(|row| crop_origin(w, h, row, 0, grid.anchors, grid.crop_size).1)
        .collect();
    ((w, h), lefts, tops)
}

/// The anchors' crops of one scale of `img`, in anchor order (row, then
/// column), each `crop x crop` RGB pixels (HWC). Only the resized pixels
/// under the crops are computed (the rows of the three row windows across
/// the columns of the three column windows), the same values as resizing
/// the whole image.
pub(crate) fn scale_crops(img: &RgbImage, scale: u32, grid: &ZoomGrid) -> Vec<RgbImage> {
    let ((w, h), lefts, tops) = scale_windows(img, scale, grid);
    let size = grid.crop_size as usize;
    let region = resize_region(
        img,
        (w, h),
        Interpolation::Bicubic,
        Runs::windows(w as usize, lefts.iter().copied(), size),
        Runs::windows(h as usize, tops.iter().copied(), size),
    );
    let mut crops = Vec::with_capacity(tops.len() * lefts.len());
    for &top in &tops {
        for &left in &lefts {
            crops.push(crop_region(
                &region,
                (w, h),
                left,
                top,
                grid.crop_size,
                grid.fill,
            ));
        }
    }
    crops
}

/// Working memory of zooming `img` over `grid`: its decoded pixels plus
/// the largest scale's resampling buffers ([`scale_crops`]).
pub(crate) fn zoom_bytes(img: &RgbImage, grid: &ZoomGrid) -> u64 {
    let size = grid.crop_size as usize;
    let largest = grid
        .scales
        .iter()
        .map(|&scale| {
            let ((w, h), lefts, tops) = scale_windows(img, scale, grid);
            let cols = Runs::windows(w as usize, lefts, size);
            let rows = Runs::windows(h as usize, tops, size);
            region_bytes(img, h, Interpolation::Bicubic, &cols, &rows)
        })
        .max()
        .unwrap_or(0);
    img.data.len() as u64 + largest
}

/// A `size x size` window at `(left, top)` of a resized image held as a
/// region; pixels outside the image are `fill`.
fn crop_region(
    region: &Region,
    (w, h): (u32, u32),
    left: i64,
    top: i64,
    size: u32,
    fill: u8,
) -> RgbImage {
    let size_us = size as usize;
    let mut data = vec![fill; size_us * size_us * 3];
    let x0 = left.max(0);
    let x1 = (left + size as i64).min(w as i64);
    if x1 > x0 {
        for y in top.max(0)..(top + size as i64).min(h as i64) {
            let dst = ((y - top) as usize * size_us + (x0 - left) as usize) * 3;
            if let Some(src) = region.span(y as usize, x0 as usize, x1 as usize) {
                data[dst..dst + src.len()].copy_from_slice(src);
            }
        }
    }
    RgbImage {
        width: size,
        height: size,
        data,
    }
}

/// Every view of one decoded image over a grid, in canonical transform order.
/// Each scale is resized once and its anchors cropped from it.
pub(crate) fn zoom_views(img: &RgbImage, grid: &ZoomGrid) -> Vec<RgbImage> {
    let per_scale: Vec<Vec<RgbImage>> = grid
        .scales
        .iter()
        .map(|&scale| scale_crops(img, scale, grid))
        .collect();
    // Reorder from (scale, anchor) to the canonical (anchor, scale).
    let anchors = grid.anchors as usize * grid.anchors as usize;
    let mut by_anchor: Vec<Vec<RgbImage>> = vec![Vec::new(); anchors];
    for crops in per_scale {
        for (a, crop) in crops.into_iter().enumerate() {
            by_anchor[a].push(crop);
        }
    }
    by_anchor.into_iter().flatten().collect()
}

/// One transform of one image (what the model sees for `t`); only the
/// crop's pixels are resampled.
pub fn zoom_view(img: &RgbImage, t: Transform, anchors: u8, crop: u32, fill: u8) -> RgbImage {
    let (w, h) = resized_size(img.width, img.height, t.scale);
    let (left, top) = crop_origin(w, h, t.row, t.col, anchors, crop);
    let region = resize_region(
        img,
        (w, h),
        Interpolation::Bicubic,
        Runs::windows(w as usize, [left], crop as usize),
        Runs::windows(h as usize, [top], crop as usize),
    );
    crop_region(&region, (w, h), left, top, crop, fill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_grid_has_324_transforms_in_canonical_order() {
        let grid = ZoomGrid::paper();
        let ts = grid.transforms();
        assert_eq!(ts.len(), 324);
        assert_eq!(
            ts[0],
            Transform {
                row: 0,
                col: 0,
                scale: 10
            }
        );
        assert_eq!(
            ts[35],
            Transform {
                row: 0,
                col: 0,
                scale: 1024
            }
        );
        assert_eq!(
            ts[36],
            Transform {
                row: 0,
                col: 1,
                scale: 10
            }
        );
        assert_eq!(
            ts[323],
            Transform {
                row: 2,
                col: 2,
                scale: 1024
            }
        );
        for (i, t) in ts.iter().enumerate() {
            assert_eq!(grid.index_of(*t), Some(i));
        }
        // r1c1s256: anchor 4, scale position 12.
        assert_eq!(grid.index_of(Transform::ONE_CROP), Some(4 * 36 + 12));
        assert_eq!(
            grid.index_of(Transform {
                row: 3,
                col: 0,
                scale: 256
            }),
            None
        );
        assert_eq!(
            grid.index_of(Transform {
                row: 0,
                col: 0,
                scale: 257
            }),
            None
        );
    }

    #[test]
    fn scale_groups_match_the_paper() {
        let zoom_in = PAPER_SCALES.iter().filter(|&&s| s > 224).count();
        let zoom_out = PAPER_SCALES.iter().filter(|&&s| s < 224).count();
        assert_eq!((zoom_in, zoom_out), (26, 9));
    }

    #[test]
    fn transform_names_round_trip() {
        let t: Transform = "r0c2s448".parse().unwrap();
        assert_eq!(
            t,
            Transform {
                row: 0,
                col: 2,
                scale: 448
            }
        );
        assert_eq!(t.to_string(), "r0c2s448");
        assert!("r0c2".parse::<Transform>().is_err());
        assert!("x0c2s1".parse::<Transform>().is_err());
        assert!("r0cAs1".parse::<Transform>().is_err());
    }

    #[test]
    fn shorter_side_becomes_scale_and_longer_side_floors() {
        assert_eq!(resized_size(500, 375, 256), (341, 256)); // 256*500/375 = 341.33
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(100, 100, 10), (10, 10));
        assert_eq!(resized_size(37, 53, 1024), (1024, 1466)); // 1024*53/37 = 1466.8
    }

    #[test]
    fn anchors_use_integer_tiles() {
        // 341x256: tile_w = 113, tile_h = 85.
        assert_eq!(crop_origin(341, 256, 0, 0, 3, 224), (56 - 112, 42 - 112));
        assert_eq!(
            crop_origin(341, 256, 1, 1, 3, 224),
            (113 + 56 - 112, 85 + 42 - 112)
        );
        assert_eq!(
            crop_origin(341, 256, 2, 2, 3, 224),
            (226 + 56 - 112, 170 + 42 - 112)
        );
    }

    #[test]
    fn crop_fills_outside_with_black() {
        let img = RgbImage {
            width: 2,
            height: 2,
            data: vec![9; 12],
        };
        let c = crop_with_fill(&img, -1, -1, 3, 0);
        let grey: Vec<u8> = c.data.chunks(3).map(|p| p[0]).collect();
        assert_eq!(grey, vec![0, 0, 0, 0, 9, 9, 0, 9, 9]);
        let far = crop_with_fill(&img, 10, 10, 2, 5);
        assert!(far.data.iter().all(|&v| v == 5));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        assert_eq!(center_crop_origin(341, 256, 224), (58, 16)); // 58.5 -> 58
        assert_eq!(center_crop_origin(227, 256, 224), (2, 16)); // 1.5 -> 2
    }

    #[test]
    fn normalise_is_channel_first() {
        let img = RgbImage {
            width: 1,
            height: 2,
            data: vec![255, 0, 0, 0, 255, 0],
        };
        let mut out = vec![0.0; 6];
        normalise_chw(&img, [0.0; 3], [1.0; 3], &mut out);
        assert_eq!(out, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn the_lookup_table_is_normalise_chw() {
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let lut = normalise_lut(mean, std);
        let img = RgbImage {
            width: 256,
            height: 1,
            data: (0..=255u8).flat_map(|v| [v, 255 - v, v / 3]).collect(),
        };
        let mut out = vec![0.0; 3 * 256];
        normalise_chw(&img, mean, std, &mut out);
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                assert_eq!(
                    lut[c * 256 + px[c] as usize].to_bits(),
                    out[c * 256 + i].to_bits()
                );
            }
        }
    }

    #[test]
    fn zoom_views_match_single_views() {
        let data: Vec<u8> = (0..40 * 30 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let img = RgbImage {
            width: 40,
            height: 30,
            data,
        };
        let grid = ZoomGrid {
            scales: vec![16, 64],
            anchors: 3,
            crop_size: 24,
            fill: 0,
        };
        let views = zoom_views(&img, &grid);
        for (t, v) in grid.transforms().iter().zip(&views) {
            assert_eq!(*v, zoom_view(&img, *t, 3, 24, 0), "{t}");
        }
    }

    /// The resize as first written here (whole image, i64 sums, taps per
    /// pixel): the reference the region resampler must equal.
    fn whole_resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
        let taps = |in_size: u32, out_size: u32| -> Vec<(usize, Vec<i64>)> {
            let scale = in_size as f64 / out_size as f64;
            let fs = scale.max(1.0);
            let support = 2.0 * fs;
            (0..out_size)
                .map(|x| {
                    let center = (x as f64 + 0.5) * scale;
                    let lo = ((center - support + 0.5) as i64).max(0) as usize;
                    let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                    let raw: Vec<f64> = (lo..hi)
                        .map(|i| bicubic((i as f64 - center + 0.5) / fs))
                        .collect();
                    let total: f64 = raw.iter().sum();
                    let fixed = raw
                        .iter()
                        .map(|&w| {
                            let w = if total != 0.0 { w / total } else { w };
                            let v = w * (1u64 << PRECISION_BITS) as f64;
                            (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i64
                        })
                        .collect();
                    (lo, fixed)
                })
                .collect()
        };
        let to8 =
            |sum: i64| ((sum + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp(0, 255) as u8;
        let mut mid = img.clone();
        if width != img.width {
            let t = taps(img.width, width);
            let mut data = vec![0u8; width as usize * img.height as usize * 3];
            for y in 0..img.height as usize {
                for (x, (first, w)) in t.iter().enumerate() {
                    for c in 0..3 {
                        let sum: i64 = w
                            .iter()
                            .enumerate()
                            .map(|(k, &wt)| {
                                wt * img.data[(y * img.width as usize + first + k) * 3 + c] as i64
                            })
                            .sum();
                        data[(y * width as usize + x) * 3 + c] = to8(sum);
                    }
                }
            }
            mid = RgbImage {
                width,
                height: img.height,
                data,
            };
        }
        if height == mid.height {
            return mid;
        }
        let t = taps(mid.height, height);
        let row = width as usize * 3;
        let mut data = vec![0u8; row * height as usize];
        for (y, (first, w)) in t.iter().enumerate() {
            for i in 0..row {
                let sum: i64 = w
                    .iter()
                    .enumerate()
                    .map(|(k, &wt)| wt * mid.data[(first + k) * row + i] as i64)
                    .sum();
                data[y * row + i] = to8(sum);
            }
        }
        RgbImage {
            width,
            height,
            data,
        }
    }

    fn noise(width: u32, height: u32, seed: u32) -> RgbImage {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let data = (0..width * height * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        RgbImage {
            width,
            height,
            data,
        }
    }

    #[test]
    fn only_the_pixels_under_the_crops_are_computed_and_they_equal_the_whole_resize() {
        let grid = ZoomGrid {
            scales: vec![3, 10, 16, 40, 96],
            anchors: 3,
            crop_size: 16,
            fill: 7,
        };
        // Extreme aspect ratios, tiny images, odd sizes.
        for (k, (w, h)) in [
            (1, 1),
            (3, 3),
            (1, 50),
            (50, 1),
            (2, 300),
            (300, 2),
            (37, 53),
            (120, 90),
            (16, 16),
        ]
        .into_iter()
        .enumerate()
        {
            let img = noise(w, h, k as u32);
            for &scale in &grid.scales {
                let (rw, rh) = resized_size(w, h, scale);
                let whole = whole_resize(&img, rw, rh);
                assert_eq!(
                    resize(&img, rw, rh, Interpolation::Bicubic),
                    whole,
                    "{w}x{h} at {scale}"
                );
                let crops = scale_crops(&img, scale, &grid);
                for (a, crop) in crops.iter().enumerate() {
                    let (row, col) = ((a / 3) as u8, (a % 3) as u8);
                    let (left, top) = crop_origin(rw, rh, row, col, 3, 16);
                    assert_eq!(
                        *crop,
                        crop_with_fill(&whole, left, top, 16, 7),
                        "{w}x{h} at {scale}, anchor {a}"
                    );
                    let t = Transform { row, col, scale };
                    assert_eq!(zoom_view(&img, t, 3, 16, 7), *crop, "{w}x{h} {t}");
                }
            }
        }
    }

    #[test]
    fn a_one_pixel_strip_zooms_in_bounded_memory() {
        // 1 x 6000 at a shorter side of 1024 is 1024 x 6,144,000 pixels
        // (18.9 GB) resized whole; its 9 crops need 672 x 672 of them.
        let grid = ZoomGrid::paper();
        for (w, h) in [(1, 6000), (6000, 1), (2, 3000)] {
            let img = noise(w, h, 9);
            let bytes = zoom_bytes(&img, &grid);
            assert!(bytes < 30 << 20, "{w}x{h}: {bytes} bytes");
            let crops = scale_crops(&img, 1024, &grid);
            assert_eq!(crops.len(), 9);
            assert!(crops.iter().all(|c| c.data.len() == 224 * 224 * 3));
        }
        // The bound follows the crops, not the image: a large photo's
        // largest scale costs about its crops' rows and columns.
        let photo = noise(1200, 900, 1);
        assert!(zoom_bytes(&photo, &grid) < photo.data.len() as u64 + (12 << 20));
    }

    #[test]
    fn decode_rejects_garbage_with_reasons() {
        let limits = DecodeLimits::default();
        assert_eq!(decode_rgb(b"", limits).unwrap_err().reason(), "empty-image");
        assert_eq!(
            decode_rgb(b"hello, not an image", limits)
                .unwrap_err()
                .reason(),
            "unknown-format"
        );
    }
}
