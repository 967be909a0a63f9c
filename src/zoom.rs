//! The paper's zoom transform (SPEC §1): decode to RGB, resize so the shorter
//! side is `S` with Pillow's antialiased bicubic, cut a crop around one of the
//! 3x3 anchors with black fill, normalise.
//!
//! Geometry is pure integer arithmetic; the resampler reproduces Pillow's
//! fixed-point convolution, so crops match Pillow's.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The 36 scales of the zoom study, sorted.
pub const PAPER_SCALES: [u32; 36] = [
    10, 16, 32, 48, 64, 96, 122, 128, 192, 224, 235, 240, 256, 288, 320, 348, 384, 448, 460, 512,
    573, 576, 640, 664, 672, 680, 686, 690, 700, 720, 768, 798, 832, 896, 911, 1024,
];

/// ImageNet mean/std, used by the zoom study for every model (CLIP included).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One zoom transform: anchor `(row, col)` on the grid and shorter side `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Transform {
    pub row: u8,
    pub col: u8,
    pub scale: u32,
}

impl Transform {
    /// The standard single "1-crop" view.
    pub const ONE_CROP: Transform = Transform {
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
    pub fn index_of(&self, t: Transform) -> Option<usize> {
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
pub fn resized_size(width: u32, height: u32, scale: u32) -> (u32, u32) {
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
pub fn crop_origin(
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
}

fn default_max_bytes() -> u64 {
    100_000_000
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_side: 32_768,
            max_pixels: 178_956_970,
            max_bytes: default_max_bytes(),
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
}

impl DecodeError {
    /// Short, stable reason used to count skips.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty-image",
            DecodeError::UnknownFormat => "unknown-format",
            DecodeError::TooLarge { .. } | DecodeError::TooManyBytes { .. } => "too-large",
            DecodeError::Decode(_) => "corrupt-image",
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
    let horizontal = if width != img.width {
        let taps = Taps::new(img.width, width, filter);
        let mut out = vec![0u8; width as usize * img.height as usize * 3];
        for y in 0..img.height as usize {
            let src = &img.data[y * img.width as usize * 3..(y + 1) * img.width as usize * 3];
            let dst = &mut out[y * width as usize * 3..(y + 1) * width as usize * 3];
            for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                let (first, weights) = taps.of(x);
                for c in 0..3 {
                    let sum: i64 = weights
                        .iter()
                        .enumerate()
                        .map(|(k, &w)| w * src[(first + k) * 3 + c] as i64)
                        .sum();
                    px[c] = fixed_to_u8(sum);
                }
            }
        }
        RgbImage {
            width,
            height: img.height,
            data: out,
        }
    } else {
        img.clone()
    };
    if height == horizontal.height {
        return horizontal;
    }
    let taps = Taps::new(horizontal.height, height, filter);
    let row = width as usize * 3;
    let mut out = vec![0u8; row * height as usize];
    for y in 0..height as usize {
        let (first, weights) = taps.of(y);
        for i in 0..row {
            let sum: i64 = weights
                .iter()
                .enumerate()
                .map(|(k, &w)| w * horizontal.data[(first + k) * row + i] as i64)
                .sum();
            out[y * row + i] = fixed_to_u8(sum);
        }
    }
    RgbImage {
        width,
        height,
        data: out,
    }
}

/// Fixed-point fraction bits of the weights (Pillow's `PRECISION_BITS` for 8-bit images).
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn fixed_to_u8(sum: i64) -> u8 {
    // Start at one half for rounding, then shift back and clamp.
    ((sum + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Per output pixel: the first input pixel and the fixed-point weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i64>>,
}

impl Taps {
    fn new(in_size: u32, out_size: u32, filter: Interpolation) -> Taps {
        let (support, kernel): (f64, fn(f64) -> f64) = match filter {
            Interpolation::Bicubic => (2.0, bicubic),
            Interpolation::Bilinear => (1.0, bilinear),
        };
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = support * filter_scale;
        let mut first = Vec::with_capacity(out_size as usize);
        let mut weights = Vec::with_capacity(out_size as usize);
        for x in 0..out_size {
            let center = (x as f64 + 0.5) * scale;
            // Truncation toward zero, as a C cast does.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (lo..hi)
                .map(|i| kernel((i as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * (1u64 << PRECISION_BITS) as f64;
                    (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i64
                })
                .collect();
            first.push(lo);
            weights.push(fixed);
        }
        Taps { first, weights }
    }

    fn of(&self, i: usize) -> (usize, &[i64]) {
        (self.first[i], &self.weights[i])
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
pub fn crop_with_fill(img: &RgbImage, left: i64, top: i64, size: u32, fill: u8) -> RgbImage {
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
pub fn center_crop_origin(width: u32, height: u32, crop: u32) -> (i64, i64) {
    let offset = |side: u32| ((side as f64 - crop as f64) / 2.0).round_ties_even() as i64;
    (offset(width), offset(height))
}

/// The evaluation view of torchvision/timm: resize shorter side to `resize_to`,
/// centre-crop `crop`.
pub fn center_view(img: &RgbImage, resize_to: u32, crop: u32, filter: Interpolation) -> RgbImage {
    let (w, h) = resized_size(img.width, img.height, resize_to);
    let resized = resize(img, w, h, filter);
    let (left, top) = center_crop_origin(w, h, crop);
    crop_with_fill(&resized, left, top, crop, 0)
}

/// `x/255`, then `(x - mean) / std`, written channel-first into `out`
/// (length `3 * width * height`).
pub fn normalise_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
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
pub fn normalise_lut(mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    (0..3)
        .flat_map(|c| (0..=255u8).map(move |v| (v as f32 / 255.0 - mean[c]) / std[c]))
        .collect()
}

/// The anchors' crops of one scale of `img`, in anchor order (row, then
/// column), each `crop x crop` RGB pixels (HWC): the image is resized once.
pub fn scale_crops(img: &RgbImage, scale: u32, grid: &ZoomGrid) -> Vec<RgbImage> {
    let (w, h) = resized_size(img.width, img.height, scale);
    let resized = resize(img, w, h, Interpolation::Bicubic);
    let mut crops = Vec::with_capacity(grid.anchors as usize * grid.anchors as usize);
    for row in 0..grid.anchors {
        for col in 0..grid.anchors {
            let (left, top) = crop_origin(w, h, row, col, grid.anchors, grid.crop_size);
            crops.push(crop_with_fill(
                &resized,
                left,
                top,
                grid.crop_size,
                grid.fill,
            ));
        }
    }
    crops
}

/// Every view of one decoded image over a grid, in canonical transform order.
/// Each scale is resized once and its anchors cropped from it.
pub fn zoom_views(img: &RgbImage, grid: &ZoomGrid) -> Vec<RgbImage> {
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

/// One transform of one image (what the model sees for `t`).
pub fn zoom_view(img: &RgbImage, t: Transform, anchors: u8, crop: u32, fill: u8) -> RgbImage {
    let (w, h) = resized_size(img.width, img.height, t.scale);
    let resized = resize(img, w, h, Interpolation::Bicubic);
    let (left, top) = crop_origin(w, h, t.row, t.col, anchors, crop);
    crop_with_fill(&resized, left, top, crop, fill)
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
