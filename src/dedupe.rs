//! Near-duplicate images: several sources share pictures (the ImageNet-C
//! corruptions are made from the same validation images; web-scraped sets
//! repeat themselves). Each image gets a 64-bit perceptual hash (pHash: the
//! signs, against their median, of the lowest 8x8 frequencies of a 32x32
//! greyscale DCT), and images whose hashes differ in at most `max_distance`
//! bits are grouped (single linkage). Pure: hashes and groups; the `dedupe`
//! command reads the images and writes `select/duplicates.json`.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::zoom::{resize, Interpolation, RgbImage};

/// Side of the greyscale thumbnail the DCT runs on.
const SIDE: usize = 32;
/// Side of the low-frequency block the hash keeps.
const LOW: usize = 8;

/// The default grouping distance, in bits of 64: on the generated benchmark
/// (see the tests) 8 misses crops, 16 starts to join lookalikes.
pub(crate) const DEFAULT_MAX_DISTANCE: u32 = 10;

/// The perceptual hash of an image.
pub(crate) fn phash(img: &RgbImage) -> u64 {
    let small = resize(img, SIDE as u32, SIDE as u32, Interpolation::Bilinear);
    let grey: Vec<f64> = small
        .data
        .chunks_exact(3)
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect();
    // Separable DCT-II, only the lowest LOW x LOW coefficients.
    let cos: Vec<f64> = (0..LOW * SIDE)
        .map(|i| {
            let (u, x) = (i / SIDE, i % SIDE);
            (std::f64::consts::PI * u as f64 * (2.0 * x as f64 + 1.0) / (2.0 * SIDE as f64)).cos()
        })
        .collect();
    let mut rows = vec![0f64; SIDE * LOW]; // [y][u]
    for y in 0..SIDE {
        for u in 0..LOW {
            rows[y * LOW + u] = (0..SIDE)
                .map(|x| grey[y * SIDE + x] * cos[u * SIDE + x])
                .sum();
        }
    }
    let mut coef = [0f64; LOW * LOW]; // [v][u]
    for v in 0..LOW {
        for u in 0..LOW {
            coef[v * LOW + u] = (0..SIDE)
                .map(|y| rows[y * LOW + u] * cos[v * SIDE + y])
                .sum();
        }
    }
    // The DC term says only how bright the image is: left out.
    let mut ac: Vec<f64> = coef[1..].to_vec();
    ac.sort_by(f64::total_cmp);
    let median = (ac[ac.len() / 2 - 1] + ac[ac.len() / 2]) / 2.0;
    coef.iter()
        .enumerate()
        .skip(1)
        .fold(0u64, |h, (i, &c)| if c > median { h | 1 << i } else { h })
}

/// Bits in which two hashes differ.
pub fn distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// Groups of indices whose hashes are within `max_distance` of another
/// member (single linkage), each sorted, groups by their first member;
/// images alone are left out.
pub fn groups(hashes: &[u64], max_distance: u32) -> Vec<Vec<usize>> {
    let n = hashes.len();
    // Every close pair, found in parallel (64-bit XORs: fast even for
    // hundreds of thousands of images).
    let pairs: Vec<(usize, usize)> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            (i + 1..n)
                .filter(move |&j| distance(hashes[i], hashes[j]) <= max_distance)
                .map(move |j| (i, j))
        })
        .collect();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, j) in pairs {
        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
        if a != b {
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut by_root: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..n {
        let r = root(&mut parent, i);
        by_root.entry(r).or_default().push(i);
    }
    by_root.into_values().filter(|g| g.len() > 1).collect()
}

/// Pairwise precision and recall of `found` groups against the true group
/// of each index (`truth[i]`: images with the same value are copies).
pub fn pair_scores(found: &[Vec<usize>], truth: &[usize]) -> (f64, f64) {
    let mut predicted = std::collections::BTreeSet::new();
    for g in found {
        for (a, &i) in g.iter().enumerate() {
            for &j in &g[a + 1..] {
                predicted.insert((i.min(j), i.max(j)));
            }
        }
    }
    let mut actual = std::collections::BTreeSet::new();
    for i in 0..truth.len() {
        for j in i + 1..truth.len() {
            if truth[i] == truth[j] {
                actual.insert((i, j));
            }
        }
    }
    let hit = predicted.intersection(&actual).count() as f64;
    let precision = if predicted.is_empty() {
        1.0
    } else {
        hit / predicted.len() as f64
    };
    let recall = if actual.is_empty() {
        1.0
    } else {
        hit / actual.len() as f64
    };
    (precision, recall)
}

/// One image of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub origin: String,
    pub row: u64,
    pub id: String,
    /// Its hash, as 16 hex digits.
    pub phash: String,
}

/// What `dedupe` found, kept in `select/duplicates.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Duplicates {
    /// `hard` (the hard set) or `all` (every scanned image).
    pub scope: String,
    pub max_distance: u32,
    pub images: usize,
    /// Each group's members in source order (the plan's sources, then row).
    pub groups: Vec<Vec<Member>>,
}

impl Duplicates {
    pub fn path(run_dir: &Path) -> PathBuf {
        crate::run_dir::RunDir::of(run_dir).duplicates()
    }

    /// The groups of a run, if `dedupe` ran.
    pub fn read(run_dir: &Path) -> Option<Duplicates> {
        crate::util::read_json(&Duplicates::path(run_dir)).ok()
    }

    /// (origin, row) -> group number.
    pub(crate) fn group_of(&self) -> std::collections::BTreeMap<(String, u64), usize> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(g, members)| members.iter().map(move |m| ((m.origin.clone(), m.row), g)))
            .collect()
    }

    /// The members after the first of each group: what `keep-first` drops.
    pub(crate) fn later_copies(&self) -> std::collections::BTreeSet<(String, u64)> {
        self.groups
            .iter()
            .flat_map(|g| g.iter().skip(1).map(|m| (m.origin.clone(), m.row)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene(seed: u32, w: u32, h: u32) -> RgbImage {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let blobs: Vec<(f64, f64, f64, [u8; 3])> = (0..6)
            .map(|_| {
                let v = next();
                (
                    (v % 1000) as f64 / 1000.0,
                    (v / 1000 % 1000) as f64 / 1000.0,
                    0.08 + (v / 1_000_000 % 100) as f64 / 500.0,
                    [
                        (next() % 256) as u8,
                        (next() % 256) as u8,
                        (next() % 256) as u8,
                    ],
                )
            })
            .collect();
        let mut data = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f64 / w as f64, y as f64 / h as f64);
                let mut px = [40u8, 40, 40];
                for &(cx, cy, r, c) in &blobs {
                    if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                        px = c;
                    }
                }
                data.extend_from_slice(&px);
            }
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn copies_hash_close_and_other_images_far() {
        let a = scene(1, 200, 150);
        let half = resize(&a, 100, 75, Interpolation::Bicubic);
        let brighter = RgbImage {
            data: a.data.iter().map(|&v| v.saturating_add(25)).collect(),
            ..a.clone()
        };
        let other = scene(2, 200, 150);
        let (ha, hb) = (phash(&a), phash(&half));
        assert!(distance(ha, hb) <= 4, "resized: {}", distance(ha, hb));
        assert!(distance(ha, phash(&brighter)) <= 4);
        assert!(
            distance(ha, phash(&other)) > 16,
            "{}",
            distance(ha, phash(&other))
        );
        assert_eq!(distance(ha, phash(&a.clone())), 0);
    }

    fn jpeg(img: &RgbImage, quality: u8) -> RgbImage {
        let buf = image::RgbImage::from_raw(img.width, img.height, img.data.clone()).unwrap();
        let mut out = std::io::Cursor::new(Vec::new());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(&buf)
            .unwrap();
        crate::zoom::decode_rgb(&out.into_inner(), Default::default()).unwrap()
    }

    fn noisy(img: &RgbImage, seed: u32, amount: i32) -> RgbImage {
        let mut x = seed | 1;
        let data = img
            .data
            .iter()
            .map(|&v| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (v as i32 + (x % (2 * amount as u32 + 1)) as i32 - amount).clamp(0, 255) as u8
            })
            .collect();
        RgbImage {
            data,
            ..img.clone()
        }
    }

    /// The generated benchmark of the closing note: 40 scenes, each with
    /// six altered copies (half size, JPEG at quality 30, noise, +30
    /// brightness, a 5% crop, a blur), among 40 other scenes drawn the same way (different
    /// images of the same kind, which must not be grouped).
    #[test]
    fn copies_are_found_and_lookalikes_are_not() {
        let mut images = Vec::new();
        let mut truth = Vec::new();
        for s in 0..40u32 {
            let a = scene(100 + s, 240, 180);
            // A 5% border cut away, then back to the original size.
            let cropped = {
                let c = crate::zoom::crop_with_fill(&a, 12, 9, 216, 0);
                let c = RgbImage {
                    height: 162,
                    data: c.data[..216 * 162 * 3].to_vec(),
                    ..c
                };
                resize(&c, 240, 180, Interpolation::Bicubic)
            };
            let blurred = resize(
                &resize(&a, 60, 45, Interpolation::Bilinear),
                240,
                180,
                Interpolation::Bilinear,
            );
            let copies = [
                a.clone(),
                resize(&a, 120, 90, Interpolation::Bicubic),
                jpeg(&a, 30),
                noisy(&a, s, 20),
                RgbImage {
                    data: a.data.iter().map(|&v| v.saturating_add(30)).collect(),
                    ..a.clone()
                },
                cropped,
                blurred,
            ];
            for c in copies {
                images.push(c);
                truth.push(s as usize);
            }
        }
        for s in 0..40u32 {
            images.push(scene(1000 + s, 240, 180));
            truth.push(100 + s as usize);
        }
        let hashes: Vec<u64> = images.iter().map(phash).collect();
        for d in [4, 8, DEFAULT_MAX_DISTANCE, 12, 16] {
            let (p, r) = pair_scores(&groups(&hashes, d), &truth);
            eprintln!(
                "dedupe on {} generated images (40 scenes x 7 copies: as is, half size, JPEG q30, noise, +30 brightness, 5% crop, blur; 40 other scenes), max distance {d}: pair precision {p:.3}, recall {r:.3}",
                images.len()
            );
        }
        let (p, r) = pair_scores(&groups(&hashes, DEFAULT_MAX_DISTANCE), &truth);
        assert!(p >= 0.95 && r >= 0.9, "precision {p}, recall {r}");
    }

    #[test]
    fn groups_link_close_hashes_and_scores_count_pairs() {
        let hashes = [
            0b0000u64,
            0b0001,
            0b0011,
            0xFFFF_0000,
            0xFFFF_0001,
            u64::MAX,
        ];
        let g = groups(&hashes, 1);
        assert_eq!(
            g,
            vec![vec![0, 1, 2], vec![3, 4]],
            "single linkage joins 0-1-2"
        );
        let truth = [0, 0, 1, 2, 2, 3];
        let (p, r) = pair_scores(&g, &truth);
        // Found pairs: (0,1) (0,2) (1,2) (3,4); true pairs: (0,1) (3,4).
        assert_eq!((p, r), (0.5, 1.0));
    }
}
