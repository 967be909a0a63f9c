//! The demo's generated world: cluttered scenes in which the class is
//! carried by one small object, placed anywhere and at any size, and the
//! small canvases its classifier is trained on. Six object classes, each a
//! distinct shape and texture standing in for an ImageNet class, and a
//! seventh, "nothing recognisable", for canvases without an object or with
//! one too small to make out. Pure: a seed in, pixels out, the same on
//! every machine (integer-seeded splitmix64, f32 geometry).

use image::{Rgb, RgbImage};

use crate::util::SplitMix64;

/// The object classes: ImageNet-1k index, name, and the shape drawn.
pub(crate) const CLASSES: [(i64, &str); 6] = [
    (301, "ladybug"),
    (340, "zebra"),
    (918, "crossword puzzle"),
    (1, "goldfish"),
    (327, "starfish"),
    (920, "traffic light"),
];

/// What the classifier answers for a canvas with nothing to recognise: an
/// ImageNet class no scene carries ("jigsaw puzzle", for the clutter).
pub(crate) const NOTHING: i64 = 611;

/// Training labels: the six classes, then [`NOTHING`].
pub(crate) fn training_classes() -> Vec<i64> {
    CLASSES.iter().map(|c| c.0).chain([NOTHING]).collect()
}

struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(SplitMix64(seed))
    }
    fn unit(&mut self) -> f32 {
        self.0.next_unit()
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.0.next_u64() % n as u64) as u32
    }
}

/// Colour of object `class` at (u, v) in its own frame ([-1, 1]^2), or
/// `None` outside it.
fn object_pixel(class: usize, u: f32, v: f32) -> Option<[u8; 3]> {
    let r2 = u * u + v * v;
    const BLACK: [u8; 3] = [20, 20, 20];
    const WHITE: [u8; 3] = [235, 235, 235];
    match class {
        // Ladybug: a red disc, black spots and a black seam.
        0 => {
            if r2 > 0.9 * 0.9 {
                return None;
            }
            let spots = [
                (-0.45, -0.3),
                (0.45, -0.3),
                (-0.4, 0.35),
                (0.4, 0.35),
                (0.0, 0.6),
            ];
            let spot = spots
                .iter()
                .any(|(x, y)| (u - x).powi(2) + (v - y).powi(2) < 0.2 * 0.2);
            Some(if spot || u.abs() < 0.06 || v < -0.65 {
                BLACK
            } else {
                [205, 30, 25]
            })
        }
        // Zebra: a square of diagonal black and white stripes.
        1 => {
            if u.abs() > 0.85 || v.abs() > 0.85 {
                return None;
            }
            Some(if ((u + 0.6 * v + 2.0) * 3.5) as i32 % 2 == 0 {
                BLACK
            } else {
                WHITE
            })
        }
        // Crossword: a 5x5 black and white grid with dark rules.
        2 => {
            if u.abs() > 0.85 || v.abs() > 0.85 {
                return None;
            }
            let (cu, cv) = ((u + 0.85) / 0.34, (v + 0.85) / 0.34);
            if cu.fract() < 0.12 || cv.fract() < 0.12 {
                return Some(BLACK);
            }
            Some(if (cu as i32 * 7 + cv as i32 * 3) % 4 == 0 {
                BLACK
            } else {
                WHITE
            })
        }
        // Goldfish: an orange body, a forked tail, an eye.
        3 => {
            let body = ((u + 0.15) / 0.65).powi(2) + (v / 0.42).powi(2) < 1.0;
            let tail =
                u > 0.45 && u < 0.95 && v.abs() < (u - 0.4) * 1.1 && v.abs() > (u - 0.7) * 0.9;
            if (u + 0.5).powi(2) + (v + 0.1).powi(2) < 0.08 * 0.08 {
                return Some(BLACK);
            }
            (body || tail).then_some([245, 135, 20])
        }
        // Starfish: five arms, speckled.
        4 => {
            let theta = v.atan2(u);
            let reach = 0.35 + 0.55 * (0.5 + 0.5 * (5.0 * theta).cos()).powi(2);
            if r2.sqrt() > reach {
                return None;
            }
            let speck = ((u * 9.0).sin() * (v * 9.0).sin()) > 0.6;
            Some(if speck {
                [250, 200, 150]
            } else {
                [215, 80, 55]
            })
        }
        // Traffic light: a dark housing with red, amber and green lamps.
        _ => {
            if u.abs() > 0.42 || v.abs() > 0.95 {
                return None;
            }
            let lamps = [
                (-0.6, [230, 30, 30]),
                (0.0, [240, 190, 20]),
                (0.6, [30, 200, 60]),
            ];
            for (y, c) in lamps {
                if u * u + (v - y) * (v - y) < 0.27 * 0.27 {
                    return Some(c);
                }
            }
            Some([45, 45, 50])
        }
    }
}

/// Draw object `class` of diameter `size` px centred at (cx, cy), turned by
/// `angle` radians.
fn draw_object(img: &mut RgbImage, class: usize, (cx, cy): (f32, f32), size: f32, angle: f32) {
    let half = size / 2.0;
    let reach = half * std::f32::consts::SQRT_2;
    let (w, h) = img.dimensions();
    let (s, c) = angle.sin_cos();
    let x0 = (cx - reach).floor().max(0.0) as u32;
    let y0 = (cy - reach).floor().max(0.0) as u32;
    let x1 = ((cx + reach).ceil().max(0.0) as u32).min(w);
    let y1 = ((cy + reach).ceil().max(0.0) as u32).min(h);
    for y in y0..y1 {
        for x in x0..x1 {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let (u, v) = ((c * dx + s * dy) / half, (-s * dx + c * dy) / half);
            if let Some(p) = object_pixel(class, u, v) {
                img.put_pixel(x, y, Rgb(p));
            }
        }
    }
}

/// A muted colour near grey: the clutter's palette.
fn muted(rng: &mut Rng) -> [u8; 3] {
    let base = rng.range(60.0, 200.0);
    let tint = |rng: &mut Rng| (base + rng.range(-35.0, 35.0)).clamp(0.0, 255.0) as u8;
    [tint(rng), tint(rng), tint(rng)]
}

/// One clutter shape: a rectangle, an ellipse or a thick line, of up to
/// `scale` px.
fn clutter_shape(img: &mut RgbImage, rng: &mut Rng, scale: f32) {
    let (w, h) = img.dimensions();
    let colour = muted(rng);
    let (cx, cy) = (rng.range(0.0, w as f32), rng.range(0.0, h as f32));
    let (a, b) = (rng.range(0.1, 1.0) * scale, rng.range(0.1, 1.0) * scale);
    let kind = rng.below(3);
    let angle = rng.range(0.0, std::f32::consts::PI);
    let (s, c) = angle.sin_cos();
    let reach = a.max(b) + 2.0;
    let x0 = (cx - reach).max(0.0) as u32;
    let y0 = (cy - reach).max(0.0) as u32;
    let x1 = ((cx + reach).max(0.0) as u32).min(w);
    let y1 = ((cy + reach).max(0.0) as u32).min(h);
    for y in y0..y1 {
        for x in x0..x1 {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
            let inside = match kind {
                0 => u.abs() < a / 2.0 && v.abs() < b / 2.0,
                1 => (u / a).powi(2) + (v / b).powi(2) < 0.25,
                _ => u.abs() < reach && v.abs() < 1.0 + b / 12.0,
            };
            if inside {
                img.put_pixel(x, y, Rgb(colour));
            }
        }
    }
}

/// A cluttered background of `w x h`: a muted base, shapes, grain.
fn background(rng: &mut Rng, w: u32, h: u32) -> RgbImage {
    let base = muted(rng);
    let mut img = RgbImage::from_pixel(w, h, Rgb(base));
    let shapes = (w * h / 1800).max(4);
    let scale = (w.min(h) as f32 / 3.0).max(12.0);
    for _ in 0..shapes {
        clutter_shape(&mut img, rng, scale);
    }
    img
}

/// Per-pixel grain, so no region is perfectly flat.
fn grain(img: &mut RgbImage, rng: &mut Rng) {
    let mut g = SplitMix64(rng.0.next_u64());
    for p in img.pixels_mut() {
        let n = (g.next_u64() % 21) as i16 - 10;
        for ch in p.0.iter_mut() {
            *ch = (*ch as i16 + n).clamp(0, 255) as u8;
        }
    }
}

/// One demo scene and how it was made.
#[derive(Debug, Clone)]
pub struct Scene {
    pub image: RgbImage,
    /// ImageNet-1k index of the object's class.
    pub label: i64,
    /// The object's diameter and centre in pixels.
    pub size: f32,
    pub centre: (f32, f32),
    /// Whether clutter was drawn over the object.
    pub occluded: bool,
}

/// Scene `seed`: a 300-420 x 220-300 px cluttered picture holding one
/// object of 6-60 px (log-uniform), anywhere in the frame, sometimes partly
/// covered by clutter.
pub fn scene(seed: u64) -> Scene {
    let mut rng = Rng::new(0x5CE4E ^ seed.wrapping_mul(0x9E37_79B9));
    let w = 300 + rng.below(121);
    let h = 220 + rng.below(81);
    let mut img = background(&mut rng, w, h);
    let class = rng.below(CLASSES.len() as u32) as usize;
    let size = (6f32.ln() + rng.unit() * (60f32.ln() - 6f32.ln())).exp();
    let margin = size * 0.45;
    let centre = (
        rng.range(margin, w as f32 - margin),
        rng.range(margin, h as f32 - margin),
    );
    draw_object(&mut img, class, centre, size, rng.range(-0.5, 0.5));
    let occluded = rng.unit() < 0.12;
    if occluded {
        for _ in 0..3 {
            let colour = Rgb(muted(&mut rng));
            let (ox, oy) = (
                centre.0 + rng.range(-0.3, 0.3) * size,
                centre.1 + rng.range(-0.3, 0.3) * size,
            );
            let r = size * rng.range(0.35, 0.5);
            for y in (oy - r).max(0.0) as u32..((oy + r).max(0.0) as u32).min(h) {
                for x in (ox - r).max(0.0) as u32..((ox + r).max(0.0) as u32).min(w) {
                    img.put_pixel(x, y, colour);
                }
            }
        }
    }
    grain(&mut img, &mut rng);
    Scene {
        image: img,
        label: CLASSES[class].0,
        size,
        centre,
        occluded,
    }
}

/// A `side x side` training canvas and its index in [`training_classes`]:
/// most hold one object of 16-60 px anywhere (partly off the edge at
/// times); the rest hold nothing or an object under 9 px, and are labelled
/// "nothing recognisable".
pub(crate) fn training_canvas(seed: u64, side: u32) -> (RgbImage, usize) {
    let mut rng = Rng::new(0x7EA1 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut img = background(&mut rng, side, side);
    let pick = rng.unit();
    let centre = (
        rng.range(0.1, 0.9) * side as f32,
        rng.range(0.1, 0.9) * side as f32,
    );
    let class = rng.below(CLASSES.len() as u32) as usize;
    let label = if pick < 0.78 {
        let size = rng.range(16.0, 60.0);
        draw_object(&mut img, class, centre, size, rng.range(-0.5, 0.5));
        class
    } else {
        if pick < 0.9 {
            let size = rng.range(3.0, 9.0);
            draw_object(&mut img, class, centre, size, rng.range(-0.5, 0.5));
        }
        CLASSES.len()
    };
    grain(&mut img, &mut rng);
    (img, label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_seeded_and_varied() {
        let a = scene(3);
        assert_eq!(a.image, scene(3).image, "same seed, same pixels");
        assert_ne!(a.image, scene(4).image);
        let scenes: Vec<Scene> = (0..60).map(scene).collect();
        for s in &scenes {
            let (w, h) = s.image.dimensions();
            assert!((300..=420).contains(&w) && (220..=300).contains(&h));
            assert!((6.0..=60.0).contains(&s.size));
            let (x, y) = s.centre;
            assert!(x > 0.0 && x < w as f32 && y > 0.0 && y < h as f32);
        }
        // Every class appears, objects both small and large, some covered.
        for (label, _) in CLASSES {
            assert!(scenes.iter().any(|s| s.label == label), "{label}");
        }
        assert!(scenes.iter().any(|s| s.size < 10.0) && scenes.iter().any(|s| s.size > 40.0));
        assert!(scenes.iter().any(|s| s.occluded));
    }

    #[test]
    fn every_object_is_drawn_and_distinct() {
        // Each class on a plain canvas: it paints pixels, and the six
        // paintings differ.
        let drawn: Vec<RgbImage> = (0..CLASSES.len())
            .map(|c| {
                let mut img = RgbImage::from_pixel(64, 64, Rgb([128, 128, 128]));
                draw_object(&mut img, c, (32.0, 32.0), 48.0, 0.0);
                let changed = img.pixels().filter(|p| p.0 != [128, 128, 128]).count();
                assert!(changed > 400, "class {c} paints {changed} px");
                img
            })
            .collect();
        for i in 0..drawn.len() {
            for j in i + 1..drawn.len() {
                assert_ne!(drawn[i], drawn[j], "classes {i} and {j}");
            }
        }
    }

    #[test]
    fn training_canvases_cover_every_label() {
        let labels: Vec<usize> = (0..200).map(|s| training_canvas(s, 80).1).collect();
        for c in 0..=CLASSES.len() {
            assert!(labels.contains(&c), "label {c}");
        }
        assert_eq!(training_canvas(9, 80).0, training_canvas(9, 80).0);
    }
}
