//! The pure half of `compare`: pairing two image sets by content (equal
//! decoded pixels, then the nearest perceptual hash), judging two label sets
//! against each other, and the paper's published count per source.

use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;

/// What an image is matched by: its decoded pixels' SHA-256 and its
/// perceptual hash (`dedupe::phash`); `None` when it does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Print {
    pub pixels: Option<[u8; 32]>,
    pub phash: Option<u64>,
    /// In its side's hard set (only pairs with a hard image are made).
    pub hard: bool,
}

/// How a pair was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MatchKind {
    /// The same decoded pixels.
    Pixels,
    /// A re-encoded or resized copy: perceptual hashes within the bound.
    Perceptual,
}

/// One pair: indices into the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair {
    pub a: usize,
    pub b: usize,
    pub kind: MatchKind,
    /// Hamming distance of the perceptual hashes (0 for equal pixels).
    pub distance: u32,
}

/// Indices with hard images first, each group in its order.
fn hard_first(side: &[Print]) -> Vec<usize> {
    let (mut hard, rest): (Vec<usize>, Vec<usize>) = (0..side.len()).partition(|&i| side[i].hard);
    hard.extend(rest);
    hard
}

/// Pair `a` with `b` one to one, each pair holding at least one hard image:
/// equal pixels first (hard images take their copies first), then among
/// the rest the closest perceptual hashes within `max_distance` (closest
/// first; ties by hard images, then order).
pub(crate) fn pair(a: &[Print], b: &[Print], max_distance: u32) -> Vec<Pair> {
    let mut used_a = vec![false; a.len()];
    let mut used_b = vec![false; b.len()];
    let mut pairs = Vec::new();
    let mut by_pixels: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    for j in hard_first(b) {
        if let Some(px) = b[j].pixels {
            by_pixels.entry(px).or_default().push(j);
        }
    }
    for i in hard_first(a) {
        let Some(px) = a[i].pixels else { continue };
        let Some(js) = by_pixels.get(&px) else {
            continue;
        };
        if let Some(&j) = js.iter().find(|&&j| !used_b[j] && (a[i].hard || b[j].hard)) {
            used_a[i] = true;
            used_b[j] = true;
            pairs.push(Pair {
                a: i,
                b: j,
                kind: MatchKind::Pixels,
                distance: 0,
            });
        }
    }
    // Perceptual candidates: every open pair with a hard side, closest
    // first. An easy image of `a` is compared with the hard images of `b`
    // only; the search runs over `a` in parallel.
    let open = |used: &[bool], side: &[Print], hard_only: bool| -> Vec<(usize, u64)> {
        (0..side.len())
            .filter(|&i| !used[i] && (!hard_only || side[i].hard))
            .filter_map(|i| side[i].phash.map(|h| (i, h)))
            .collect()
    };
    let (a_open, b_open, b_hard) = (
        open(&used_a, a, false),
        open(&used_b, b, false),
        open(&used_b, b, true),
    );
    let mut candidates: Vec<(u32, u8, usize, usize)> = a_open
        .par_iter()
        .flat_map_iter(|&(i, ha)| {
            let pool = if a[i].hard { &b_open } else { &b_hard };
            pool.iter().filter_map(move |&(j, hb)| {
                let d = crate::dedupe::distance(ha, hb);
                // Pairs of two hard images first among equals.
                (d <= max_distance).then(|| (d, u8::from(!(a[i].hard && b[j].hard)), i, j))
            })
        })
        .collect();
    candidates.sort_unstable();
    for (d, _, i, j) in candidates {
        if used_a[i] || used_b[j] {
            continue;
        }
        used_a[i] = true;
        used_b[j] = true;
        pairs.push(Pair {
            a: i,
            b: j,
            kind: MatchKind::Perceptual,
            distance: d,
        });
    }
    pairs.sort_by_key(|p| (p.a, p.b));
    pairs
}

/// How our labels of a matched image stand to the reference's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Agreement {
    Exact,
    /// Ours hold every reference label and more.
    Superset,
    /// Ours are some of the reference's.
    Subset,
    /// Some shared, some not on either side.
    Overlap,
    Disjoint,
}

impl Agreement {
    pub fn of(ours: &[i64], theirs: &[i64]) -> Agreement {
        let shared = ours.iter().filter(|l| theirs.contains(l)).count();
        let (in_ours, in_theirs) = (
            ours.iter().all(|l| theirs.contains(l)),
            theirs.iter().all(|l| ours.contains(l)),
        );
        match (in_ours, in_theirs) {
            (true, true) => Agreement::Exact,
            (false, true) => Agreement::Superset,
            (true, false) => Agreement::Subset,
            _ if shared > 0 => Agreement::Overlap,
            _ => Agreement::Disjoint,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Agreement::Exact => "exact",
            Agreement::Superset => "ours a superset",
            Agreement::Subset => "ours a subset",
            Agreement::Overlap => "overlapping",
            Agreement::Disjoint => "disjoint",
        }
    }
}

/// The paper's sources of the released 10,980 images and how many each
/// gave (protocol §8), with the spellings of their origin we recognise
/// (lower case, letters and digits only; an ImageNet-C corruption also with
/// its severity after it).
pub(crate) const PUBLISHED: [(&str, u64, &[&str]); 12] = [
    ("ImageNet-Sketch", 3470, &["imagenetsketch", "sketch"]),
    (
        "ImageNet-C zoom blur",
        1790,
        &["imagenetczoomblur", "zoomblur"],
    ),
    ("ObjectNet", 1268, &["objectnet"]),
    (
        "ImageNet-C impulse noise",
        848,
        &["imagenetcimpulsenoise", "impulsenoise"],
    ),
    ("ImageNet-C snow", 843, &["imagenetcsnow", "snow"]),
    ("ImageNet-C frost", 781, &["imagenetcfrost", "frost"]),
    ("ImageNet-C fog", 591, &["imagenetcfog", "fog"]),
    (
        "ImageNet-C brightness",
        525,
        &["imagenetcbrightness", "brightness"],
    ),
    (
        "ImageNet (ReaL labels)",
        512,
        &[
            "imagenetreal",
            "imagenet",
            "imagenetval",
            "imagenetvalidation",
            "real",
        ],
    ),
    ("ImageNet-R", 170, &["imagenetr"]),
    ("ImageNet-A", 101, &["imageneta"]),
    ("ImageNet-V2", 81, &["imagenetv2"]),
];

/// The paper's source an origin names, with its published count: `None`
/// for an origin the paper did not use (or spells differently).
pub(crate) fn published_source(origin: &str) -> Option<(&'static str, u64)> {
    let key: String = origin
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let find = |k: &str| {
        PUBLISHED
            .iter()
            .find(|(_, _, names)| names.contains(&k))
            .map(|(name, n, _)| (*name, *n))
    };
    find(&key).or_else(|| {
        let bare = key.trim_end_matches(|c: char| c.is_ascii_digit());
        (bare.starts_with("imagenetc") || bare.len() < key.len())
            .then(|| find(bare))
            .flatten()
            .filter(|(name, _)| name.starts_with("ImageNet-C"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(pixels: u8, phash: u64, hard: bool) -> Print {
        Print {
            pixels: Some([pixels; 32]),
            phash: Some(phash),
            hard,
        }
    }

    #[test]
    fn equal_pixels_pair_first_then_the_closest_hash() {
        let a = [
            print(1, 0b0000, true),
            print(2, 0b1111_0000, true),
            print(3, 0, false),
            print(4, 0xFFFF, true),
        ];
        let b = [
            print(9, 0b1111_0001, true), // a[1] re-encoded: distance 1
            print(1, 0b1, true),         // a[0]'s pixels
            print(3, 0, false),          // a[2]'s pixels, but neither is hard
            print(7, 0b0111, true),      // 3 bits from a[2]
        ];
        let pairs = pair(&a, &b, 4);
        assert_eq!(
            pairs,
            vec![
                Pair {
                    a: 0,
                    b: 1,
                    kind: MatchKind::Pixels,
                    distance: 0
                },
                Pair {
                    a: 1,
                    b: 0,
                    kind: MatchKind::Perceptual,
                    distance: 1
                },
                // a[2] (not hard) meets b[3] (hard) within 4 bits.
                Pair {
                    a: 2,
                    b: 3,
                    kind: MatchKind::Perceptual,
                    distance: 3
                },
            ]
        );
        // A tighter bound leaves b[3] alone.
        assert_eq!(pair(&a, &b, 2).len(), 2);
    }

    #[test]
    fn a_hard_image_takes_its_copy_before_an_easy_one() {
        let a = [print(5, 0, false), print(5, 0, true)];
        let b = [print(5, 0, true)];
        let pairs = pair(&a, &b, 0);
        assert_eq!((pairs.len(), pairs[0].a), (1, 1));
    }

    #[test]
    fn label_sets_are_judged_from_our_side() {
        assert_eq!(Agreement::of(&[1, 2], &[2, 1]), Agreement::Exact);
        assert_eq!(Agreement::of(&[1, 2], &[2]), Agreement::Superset);
        assert_eq!(Agreement::of(&[2], &[1, 2]), Agreement::Subset);
        assert_eq!(Agreement::of(&[1, 3], &[1, 2]), Agreement::Overlap);
        assert_eq!(Agreement::of(&[4], &[1, 2]), Agreement::Disjoint);
    }

    #[test]
    fn origins_find_the_papers_sources_in_any_spelling() {
        let name = |o: &str| published_source(o).map(|(n, _)| n);
        assert_eq!(name("imagenet-sketch"), Some("ImageNet-Sketch"));
        assert_eq!(name("imagenet_sketch"), Some("ImageNet-Sketch"));
        assert_eq!(name("imagenet-c/zoom_blur/3"), Some("ImageNet-C zoom blur"));
        assert_eq!(name("imagenet-r"), Some("ImageNet-R"));
        assert_eq!(name("imagenet-real"), Some("ImageNet (ReaL labels)"));
        assert_eq!(name("imagenet-v2"), Some("ImageNet-V2"));
        assert_eq!(name("synthetic-demo"), None);
        let total: u64 = PUBLISHED.iter().map(|p| p.1).sum();
        assert_eq!(total, 10_980);
    }
}
