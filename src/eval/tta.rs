//! Fixed test-time augmentation (protocol §7, first piece): the views of one
//! image for a TTA group, and how the per-view predictions are pooled.
//! Pure: images in, images out; logits in, class scores out.

use serde::{Deserialize, Serialize};

use crate::models::EvalPreprocess;
use crate::zoom::{
    center_crop_origin, crop_with_fill, resize, resized_size, zoom_views, RgbImage, ZoomGrid,
    PAPER_SCALES,
};

/// Side of the zoom-group crops: the zoom study's input size (protocol §1).
const ZOOM_CROP: u32 = 224;

/// Which views an image is classified under.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Tta {
    /// The model's own evaluation view (resize, centre crop): no augmentation.
    #[default]
    None,
    /// Every paper-grid transform with scale > 224 (26 scales x 9 anchors).
    ZoomIn,
    /// Every paper-grid transform with scale < 224 (9 scales x 9 anchors).
    ZoomOut,
    /// The 9 anchors at scale 224.
    #[value(name = "zoom-224")]
    #[serde(rename = "zoom-224")]
    Zoom224,
    /// torchvision FiveCrop after the model's resize: 4 corners + centre.
    #[value(name = "5crop")]
    #[serde(rename = "5crop")]
    FiveCrop,
    /// The five crops and the five crops of the horizontally flipped image.
    #[value(name = "10crop")]
    #[serde(rename = "10crop")]
    TenCrop,
    /// MEMO with random zoom-in views (RandomResizedCrop, bicubic, no flip):
    /// per image, one SGD step on the views' marginal entropy, then the
    /// model's own view (BatchNorm ResNets).
    MemoZoom,
    /// MEMO with AugMix views (on a RandomResizedCrop and a flip).
    MemoAugmix,
}

impl Tta {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::ZoomIn => "zoom-in",
            Tta::ZoomOut => "zoom-out",
            Tta::Zoom224 => "zoom-224",
            Tta::FiveCrop => "5crop",
            Tta::TenCrop => "10crop",
            Tta::MemoZoom => "memo-zoom",
            Tta::MemoAugmix => "memo-augmix",
        }
    }

    /// Whether this adapts the model per image (MEMO) instead of pooling views.
    pub(crate) fn is_memo(self) -> bool {
        matches!(self, Tta::MemoZoom | Tta::MemoAugmix)
    }

    /// The paper-grid scales of a zoom group; `None` for the other kinds.
    pub(crate) fn zoom_scales(self) -> Option<Vec<u32>> {
        let keep = |pick: fn(u32) -> bool| -> Vec<u32> {
            PAPER_SCALES.iter().copied().filter(|&s| pick(s)).collect()
        };
        match self {
            Tta::ZoomIn => Some(keep(|s| s > ZOOM_CROP)),
            Tta::ZoomOut => Some(keep(|s| s < ZOOM_CROP)),
            Tta::Zoom224 => Some(keep(|s| s == ZOOM_CROP)),
            Tta::None | Tta::FiveCrop | Tta::TenCrop | Tta::MemoZoom | Tta::MemoAugmix => None,
        }
    }

    /// Side of the square views fed to the model.
    pub fn crop_size(self, pre: &EvalPreprocess) -> u32 {
        match self.zoom_scales() {
            Some(_) => ZOOM_CROP,
            None => pre.crop,
        }
    }

    /// Views per image (for MEMO: the one view predicted after adapting).
    pub fn views_per_image(self) -> usize {
        match self {
            Tta::None | Tta::MemoZoom | Tta::MemoAugmix => 1,
            Tta::FiveCrop => 5,
            Tta::TenCrop => 10,
            zoom => zoom.zoom_scales().map_or(0, |s| s.len() * 9),
        }
    }

    /// The views of `img`, each `crop_size x crop_size`. Zoom groups use the
    /// paper's transform (Pillow bicubic, black fill); the others use the
    /// model's resize and interpolation.
    pub fn views(self, img: &RgbImage, pre: &EvalPreprocess) -> Vec<RgbImage> {
        if let Some(scales) = self.zoom_scales() {
            let grid = ZoomGrid {
                scales,
                anchors: 3,
                crop_size: ZOOM_CROP,
                fill: 0,
            };
            return zoom_views(img, &grid);
        }
        let (w, h) = resized_size(img.width, img.height, pre.resize);
        let resized = resize(img, w, h, pre.interpolation);
        match self {
            Tta::TenCrop => {
                let mut views = five_crop(&resized, pre.crop);
                views.extend(five_crop(&flip_horizontal(&resized), pre.crop));
                views
            }
            Tta::FiveCrop => five_crop(&resized, pre.crop),
            _ => {
                let (left, top) = center_crop_origin(w, h, pre.crop);
                vec![crop_with_fill(&resized, left, top, pre.crop, 0)]
            }
        }
    }
}

/// torchvision `FiveCrop(size)`: top-left, top-right, bottom-left,
/// bottom-right, centre (the centre as `CenterCrop`).
pub(crate) fn five_crop(img: &RgbImage, size: u32) -> Vec<RgbImage> {
    let right = img.width as i64 - size as i64;
    let bottom = img.height as i64 - size as i64;
    let (cx, cy) = center_crop_origin(img.width, img.height, size);
    [(0, 0), (right, 0), (0, bottom), (right, bottom), (cx, cy)]
        .into_iter()
        .map(|(left, top)| crop_with_fill(img, left, top, size, 0))
        .collect()
}

/// Mirror left to right.
pub(crate) fn flip_horizontal(img: &RgbImage) -> RgbImage {
    let row = img.width as usize * 3;
    let mut data = Vec::with_capacity(img.data.len());
    for line in img.data.chunks_exact(row) {
        for px in line.chunks_exact(3).rev() {
            data.extend_from_slice(px);
        }
    }
    RgbImage {
        width: img.width,
        height: img.height,
        data,
    }
}

/// How per-view predictions become one score per class.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// Per class, the highest softmax probability over the views: the top
    /// class is the one of the single most confident view.
    Max,
    /// The softmax averaged over the views.
    #[default]
    Mean,
}

impl Aggregate {
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Max => "max",
            Aggregate::Mean => "mean",
        }
    }
}

/// One score per class from the logits of every view of one image (all
/// views have the same number of classes). Rank the result with
/// `labels::top_k`, which breaks ties towards the lower class index.
pub fn aggregate(logits_per_view: &[&[f32]], how: Aggregate) -> Vec<f32> {
    let classes = logits_per_view.first().map_or(0, |v| v.len());
    let mut scores = match how {
        Aggregate::Max => vec![f32::NEG_INFINITY; classes],
        Aggregate::Mean => vec![0.0; classes],
    };
    for view in logits_per_view {
        for (score, p) in scores.iter_mut().zip(crate::labels::softmax(view)) {
            match how {
                Aggregate::Max => *score = score.max(p),
                Aggregate::Mean => *score += p,
            }
        }
    }
    if how == Aggregate::Mean && !logits_per_view.is_empty() {
        let n = logits_per_view.len() as f32;
        scores.iter_mut().for_each(|s| *s /= n);
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::top_k;

    /// Three views over three classes, written as logits whose softmax is
    /// exact: view A is (0.90, 0.05, 0.05), views B and C are (0.1, 0.6, 0.3).
    /// Max per class: (0.9, 0.6, 0.3) -> class 0, the most confident single
    /// view. Mean: (1.1, 1.25, 0.65) / 3 -> class 1.
    fn views() -> Vec<Vec<f32>> {
        let ln = |x: f32| x.ln();
        vec![
            vec![ln(18.0), 0.0, 0.0],
            vec![0.0, ln(6.0), ln(3.0)],
            // Same probabilities as B: softmax ignores a constant shift.
            vec![5.0, 5.0 + ln(6.0), 5.0 + ln(3.0)],
        ]
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn max_takes_the_most_confident_view_and_mean_the_average() {
        let v = views();
        let refs: Vec<&[f32]> = v.iter().map(|x| x.as_slice()).collect();
        let max = aggregate(&refs, Aggregate::Max);
        assert!(close(&max, &[0.9, 0.6, 0.3]), "{max:?}");
        assert_eq!(top_k(&max, 3), vec![0, 1, 2]);
        let mean = aggregate(&refs, Aggregate::Mean);
        assert!(
            close(&mean, &[1.1 / 3.0, 1.25 / 3.0, 0.65 / 3.0]),
            "{mean:?}"
        );
        assert_eq!(top_k(&mean, 3), vec![1, 0, 2]);
    }

    #[test]
    fn one_view_keeps_the_order_of_its_logits() {
        let logits = [0.5f32, 3.0, -1.0, 2.0];
        for how in [Aggregate::Max, Aggregate::Mean] {
            let s = aggregate(&[&logits], how);
            assert_eq!(top_k(&s, 4), vec![1, 3, 0, 2], "{how:?}");
            assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn ties_go_to_the_lower_class_index() {
        // Two views equally sure of different classes; the first view
        // favours class 1, yet the tie goes to class 0.
        let a = [0.0f32, 2.0];
        let b = [2.0f32, 0.0];
        for how in [Aggregate::Max, Aggregate::Mean] {
            let s = aggregate(&[&a, &b], how);
            assert_eq!(s[0], s[1], "{how:?}");
            assert_eq!(top_k(&s, 1), vec![0], "{how:?} {s:?}");
        }
    }

    fn numbered(width: u32, height: u32) -> RgbImage {
        // Pixel (x, y) holds (x, y, 0): crops reveal where they were cut.
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&[x as u8, y as u8, 0]);
            }
        }
        RgbImage {
            width,
            height,
            data,
        }
    }

    fn corner(img: &RgbImage) -> (u8, u8) {
        (img.data[0], img.data[1])
    }

    #[test]
    fn five_crop_cuts_corners_then_centre() {
        // 7x6 image, 3x3 crops: right = 4, bottom = 3, centre = (2, round(1.5) = 2).
        let crops = five_crop(&numbered(7, 6), 3);
        let corners: Vec<_> = crops.iter().map(corner).collect();
        assert_eq!(corners, vec![(0, 0), (4, 0), (0, 3), (4, 3), (2, 2)]);
        assert!(crops.iter().all(|c| (c.width, c.height) == (3, 3)));
    }

    #[test]
    fn flip_mirrors_each_row() {
        let f = flip_horizontal(&numbered(3, 2));
        let xs: Vec<u8> = f.data.chunks_exact(3).map(|p| p[0]).collect();
        let ys: Vec<u8> = f.data.chunks_exact(3).map(|p| p[1]).collect();
        assert_eq!(xs, vec![2, 1, 0, 2, 1, 0]);
        assert_eq!(ys, vec![0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn groups_have_the_papers_view_counts() {
        let counts: Vec<usize> = [
            Tta::None,
            Tta::ZoomIn,
            Tta::ZoomOut,
            Tta::Zoom224,
            Tta::FiveCrop,
            Tta::TenCrop,
        ]
        .iter()
        .map(|t| t.views_per_image())
        .collect();
        assert_eq!(counts, vec![1, 234, 81, 9, 5, 10]);
        let pre = EvalPreprocess::TORCHVISION;
        let img = numbered(40, 30);
        let zoom_in = Tta::ZoomIn.zoom_scales().unwrap_or_default();
        assert_eq!((zoom_in.first(), zoom_in.len()), (Some(&235), 26));
        for t in [
            Tta::None,
            Tta::ZoomOut,
            Tta::Zoom224,
            Tta::FiveCrop,
            Tta::TenCrop,
        ] {
            let v = t.views(&img, &pre);
            assert_eq!(v.len(), t.views_per_image(), "{t:?}");
            let side = t.crop_size(&pre);
            assert!(v.iter().all(|c| (c.width, c.height) == (side, side)));
        }
    }

    #[test]
    fn ten_crop_flips_the_image_before_cropping() {
        // torchvision's TenCrop crops the flipped image; its top-left crop is
        // the mirror of the unflipped top-right one.
        let pre = EvalPreprocess {
            resize: 6,
            crop: 3,
            ..EvalPreprocess::TORCHVISION
        };
        let img = numbered(6, 6);
        let v = Tta::TenCrop.views(&img, &pre);
        assert_eq!(v[5], flip_horizontal(&v[1]));
        assert_eq!(v[6], flip_horizontal(&v[0]));
    }
}
