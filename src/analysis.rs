//! The paper's analyses over one (source, model) correctness matrix
//! (protocol §3, §6): upper bounds, the greedy set cover and its k-crop bounds,
//! scale groups, and per-anchor bounds. Pure functions, no I/O.
//!
//! A matrix is stored transposed, one bitset over images per transform, so
//! a greedy step is a popcount over 324 bitsets.

use serde::{Deserialize, Serialize};

use crate::zoom::ZoomGrid;

/// Which images each transform gets right.
#[derive(Debug, Clone, PartialEq)]
pub struct Hits {
    images: usize,
    words: usize,
    /// `bits[t * words + w]`: images `64 w ..` solved by transform `t`.
    bits: Vec<u64>,
}

impl Hits {
    /// From per-image rows `correct[t]`, all of length `transforms`.
    pub(crate) fn from_rows<'a>(
        rows: impl IntoIterator<Item = &'a [bool]>,
        transforms: usize,
    ) -> Hits {
        let rows: Vec<&[bool]> = rows.into_iter().collect();
        let images = rows.len();
        let words = images.div_ceil(64);
        let mut bits = vec![0u64; transforms * words];
        for (i, row) in rows.iter().enumerate() {
            for (t, _) in row.iter().enumerate().filter(|(_, &c)| c) {
                if t < transforms {
                    bits[t * words + i / 64] |= 1 << (i % 64);
                }
            }
        }
        Hits {
            images,
            words,
            bits,
        }
    }

    pub fn images(&self) -> usize {
        self.images
    }

    pub fn transforms(&self) -> usize {
        self.bits.len().checked_div(self.words).unwrap_or(0)
    }

    fn of(&self, t: usize) -> &[u64] {
        &self.bits[t * self.words..(t + 1) * self.words]
    }

    /// Images solved by at least one of `transforms`.
    pub(crate) fn solved_by(&self, transforms: impl IntoIterator<Item = usize>) -> usize {
        let mut union = vec![0u64; self.words];
        for t in transforms {
            for (u, b) in union.iter_mut().zip(self.of(t)) {
                *u |= b;
            }
        }
        union.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Images solved by some transform in `group` and by none outside it.
    pub(crate) fn solved_only_by(&self, group: &[usize]) -> usize {
        let mut inside = vec![0u64; self.words];
        let mut outside = vec![0u64; self.words];
        for t in 0..self.transforms() {
            let target = if group.contains(&t) {
                &mut inside
            } else {
                &mut outside
            };
            for (u, b) in target.iter_mut().zip(self.of(t)) {
                *u |= b;
            }
        }
        inside
            .iter()
            .zip(&outside)
            .map(|(i, o)| (i & !o).count_ones() as usize)
            .sum()
    }

    /// Fraction of images solved by some of `transforms` (0 for no images).
    pub fn bound(&self, transforms: impl IntoIterator<Item = usize>) -> f64 {
        fraction(self.solved_by(transforms), self.images)
    }

    /// The all-transform upper bound.
    pub fn upper_bound(&self) -> f64 {
        self.bound(0..self.transforms())
    }
}

fn fraction(k: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

/// The greedy set cover over transforms (protocol §3): repeatedly take the
/// transform that solves the most images not yet solved; ties go to the
/// earliest transform in canonical order (row, column, scale ascending).
/// Stops when no transform adds an image, so `picks.len()` is the cover size
/// that reaches the full upper bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cover {
    /// Transform indices in pick order.
    pub picks: Vec<usize>,
    /// Images solved after each pick (cumulative).
    pub solved: Vec<usize>,
    pub images: usize,
}

impl Cover {
    /// Fraction solved by the first `k` picks (all picks when there are fewer).
    pub(crate) fn bound_at(&self, k: usize) -> f64 {
        let solved = match k.min(self.picks.len()) {
            0 => 0,
            k => self.solved[k - 1],
        };
        fraction(solved, self.images)
    }
}

pub(crate) fn greedy_cover(h: &Hits) -> Cover {
    let mut covered = vec![0u64; h.words];
    let mut picks = Vec::new();
    let mut solved = Vec::new();
    let mut total = 0;
    let mut used = vec![false; h.transforms()];
    loop {
        let mut best: Option<(usize, usize)> = None;
        for t in (0..h.transforms()).filter(|&t| !used[t]) {
            let gain: usize = h
                .of(t)
                .iter()
                .zip(&covered)
                .map(|(b, c)| (b & !c).count_ones() as usize)
                .sum();
            if gain > 0 && best.is_none_or(|(_, g)| gain > g) {
                best = Some((t, gain));
            }
        }
        let Some((t, gain)) = best else { break };
        used[t] = true;
        for (c, b) in covered.iter_mut().zip(h.of(t)) {
            *c |= b;
        }
        total += gain;
        picks.push(t);
        solved.push(total);
    }
    Cover {
        picks,
        solved,
        images: h.images,
    }
}

/// The random-guess row of Table 1: `k` guesses over `classes`, capped at 1.
pub(crate) fn random_baseline(k: usize, classes: usize) -> f64 {
    (k as f64 / classes.max(1) as f64).min(1.0)
}

/// Scales relative to the crop: zoom-out (S < crop), the crop size itself,
/// zoom-in (S > crop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleGroup {
    ZoomOut,
    AtCrop,
    ZoomIn,
}

impl ScaleGroup {
    pub(crate) const ALL: [ScaleGroup; 3] =
        [ScaleGroup::ZoomOut, ScaleGroup::AtCrop, ScaleGroup::ZoomIn];

    pub fn of(scale: u32, crop: u32) -> ScaleGroup {
        match scale.cmp(&crop) {
            std::cmp::Ordering::Less => ScaleGroup::ZoomOut,
            std::cmp::Ordering::Equal => ScaleGroup::AtCrop,
            std::cmp::Ordering::Greater => ScaleGroup::ZoomIn,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ScaleGroup::ZoomOut => "zoom-out (S < crop)",
            ScaleGroup::AtCrop => "S = crop",
            ScaleGroup::ZoomIn => "zoom-in (S > crop)",
        }
    }
}

/// One scale group's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupBound {
    pub group: ScaleGroup,
    pub transforms: usize,
    /// Upper bound using only this group's transforms.
    pub upper_bound: f64,
    /// Fraction of all images solved by this group and by no other.
    pub only: f64,
}

pub fn scale_groups(h: &Hits, grid: &ZoomGrid) -> Vec<GroupBound> {
    let ts = grid.transforms();
    ScaleGroup::ALL
        .iter()
        .map(|&g| {
            let members: Vec<usize> = (0..ts.len())
                .filter(|&t| ScaleGroup::of(ts[t].scale, grid.crop_size) == g)
                .collect();
            GroupBound {
                group: g,
                transforms: members.len(),
                upper_bound: h.bound(members.iter().copied()),
                only: fraction(h.solved_only_by(&members), h.images),
            }
        })
        .collect()
}

/// Per-anchor upper bounds, `[row][col]` (row 0 = top): the fraction of
/// images solved by some scale at that anchor.
pub fn anchor_bounds(h: &Hits, grid: &ZoomGrid) -> Vec<Vec<f64>> {
    let ts = grid.transforms();
    let n = grid.anchors as usize;
    (0..n)
        .map(|r| {
            (0..n)
                .map(|c| {
                    h.bound(
                        (0..ts.len())
                            .filter(|&t| ts[t].row as usize == r && ts[t].col as usize == c),
                    )
                })
                .collect()
        })
        .collect()
}

/// How often each anchor appears among `picks`, `[row][col]`.
pub(crate) fn anchor_counts(picks: &[usize], grid: &ZoomGrid) -> Vec<Vec<usize>> {
    let ts = grid.transforms();
    let n = grid.anchors as usize;
    let mut counts = vec![vec![0; n]; n];
    for &t in picks {
        if let Some(tr) = ts.get(t) {
            counts[tr.row as usize][tr.col as usize] += 1;
        }
    }
    counts
}

/// The order first-hit scanning tries transforms in: `r1c1s256` (the
/// standard view) first, then anchors from the centre outwards (centre,
/// edge middles, corners) and, within an anchor ring, scales by their
/// distance from 256 on a log scale (256, 240, 235, 288, 224, ...). Deterministic,
/// so a resumed run tries the same transforms.
pub(crate) fn first_hit_order(grid: &ZoomGrid) -> Vec<usize> {
    let ts = grid.transforms();
    let mid = (grid.anchors as i32 - 1) as f64 / 2.0;
    let mut order: Vec<usize> = (0..ts.len()).collect();
    let key = |t: usize| {
        let tr = ts[t];
        let ring = (tr.row as f64 - mid).abs() + (tr.col as f64 - mid).abs();
        let scale = (tr.scale as f64 / 256.0).ln().abs();
        (ring, scale)
    };
    order.sort_by(|&a, &b| {
        let (ra, sa) = key(a);
        let (rb, sb) = key(b);
        ra.total_cmp(&rb).then(sa.total_cmp(&sb)).then(a.cmp(&b))
    });
    order
}

/// A model "nearly" solved an image when it did so with at most this many transforms.
pub(crate) const NEAR_MISS_TRANSFORMS: usize = 3;

/// The one model that solves an image, when only one does and with at most
/// [`NEAR_MISS_TRANSFORMS`] transforms (`correct[model][transform]`): it
/// alone, and barely, kept the image out of the hard set.
pub(crate) fn near_miss_solver(correct: &[Vec<bool>]) -> Option<usize> {
    let solved: Vec<usize> = correct
        .iter()
        .map(|c| c.iter().filter(|&&x| x).count())
        .collect();
    match (0..solved.len())
        .filter(|&m| solved[m] > 0)
        .collect::<Vec<_>>()[..]
    {
        [m] if solved[m] <= NEAR_MISS_TRANSFORMS => Some(m),
        _ => None,
    }
}

/// Whether an image is a near miss ([`near_miss_solver`]).
pub(crate) fn is_near_miss(correct: &[Vec<bool>]) -> bool {
    near_miss_solver(correct).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_miss_is_one_model_with_few_transforms() {
        let row = |n: usize| (0..10).map(|t| t < n).collect::<Vec<bool>>();
        assert_eq!(near_miss_solver(&[row(0), row(2)]), Some(1));
        assert_eq!(
            near_miss_solver(&[row(0), row(4)]),
            None,
            "too many transforms"
        );
        assert_eq!(near_miss_solver(&[row(1), row(1)]), None, "two models");
        assert_eq!(near_miss_solver(&[row(0), row(0)]), None, "a hard image");
    }

    fn hits(rows: &[&[u8]]) -> Hits {
        let rows: Vec<Vec<bool>> = rows
            .iter()
            .map(|r| r.iter().map(|&v| v == 1).collect())
            .collect();
        Hits::from_rows(rows.iter().map(Vec::as_slice), rows[0].len())
    }

    // Five images (rows) x four transforms (columns), worked by hand:
    //        t0 t1 t2 t3
    // img0    1  0  1  0
    // img1    0  1  1  0
    // img2    0  1  0  0
    // img3    0  0  0  1
    // img4    0  0  0  0
    // Step 1 gains: t0 1, t1 2, t2 2, t3 1 -> t1 (tie with t2, earlier wins).
    // Step 2 (img1, img2 covered): t0 1, t2 1, t3 1 -> t0.
    // Step 3 (img0 covered too): t2 0, t3 1 -> t3. Then nothing gains: stop.
    const M: [&[u8]; 5] = [
        &[1, 0, 1, 0],
        &[0, 1, 1, 0],
        &[0, 1, 0, 0],
        &[0, 0, 0, 1],
        &[0, 0, 0, 0],
    ];

    #[test]
    fn greedy_cover_breaks_ties_to_the_earliest_transform() {
        let h = hits(&M);
        let cover = greedy_cover(&h);
        assert_eq!(cover.picks, vec![1, 0, 3]);
        assert_eq!(cover.solved, vec![2, 3, 4]);
        assert_eq!(cover.bound_at(1), 0.4);
        assert_eq!(cover.bound_at(2), 0.6);
        assert_eq!(cover.bound_at(36), 0.8);
        assert_eq!(cover.bound_at(0), 0.0);
        assert_eq!(h.upper_bound(), 0.8);
    }

    #[test]
    fn bounds_and_only_counts_by_hand() {
        let h = hits(&M);
        assert_eq!(h.bound([2]), 0.4);
        assert_eq!(h.bound([0, 3]), 0.4);
        // Only {t1}: img2 (img1 also has t2). Only {t0, t2}: img0. Only {t3}: img3.
        assert_eq!(h.solved_only_by(&[1]), 1);
        assert_eq!(h.solved_only_by(&[0, 2]), 1);
        assert_eq!(h.solved_only_by(&[3]), 1);
        assert_eq!(h.solved_only_by(&[0, 1, 2, 3]), 4);
        assert_eq!(random_baseline(36, 200), 0.18);
        assert_eq!(random_baseline(324, 200), 1.0);
    }

    #[test]
    fn scale_groups_and_anchors_on_a_small_grid() {
        // 2x2 anchors x scales [64, 128, 256] with crop 128: 12 transforms in
        // order (r, c, s): t = (r*2 + c)*3 + s_index.
        let grid = ZoomGrid {
            scales: vec![64, 128, 256],
            anchors: 2,
            crop_size: 128,
            fill: 0,
        };
        let t = |r: usize, c: usize, s: usize| (r * 2 + c) * 3 + s;
        let mut rows = vec![vec![false; 12]; 4];
        rows[0][t(0, 0, 0)] = true; // zoom-out only, top-left
        rows[1][t(1, 1, 2)] = true; // zoom-in only, bottom-right
        rows[1][t(1, 1, 1)] = true; // ... and at crop size
        rows[2][t(0, 1, 1)] = true; // at crop size only, top-right
        let h = Hits::from_rows(rows.iter().map(Vec::as_slice), 12);
        let g = scale_groups(&h, &grid);
        assert_eq!(g[0].group, ScaleGroup::ZoomOut);
        assert_eq!(
            (g[0].transforms, g[0].upper_bound, g[0].only),
            (4, 0.25, 0.25)
        );
        assert_eq!((g[1].upper_bound, g[1].only), (0.5, 0.25));
        assert_eq!((g[2].upper_bound, g[2].only), (0.25, 0.0));
        let a = anchor_bounds(&h, &grid);
        assert_eq!(a, vec![vec![0.25, 0.25], vec![0.0, 0.25]]);
        let cover = greedy_cover(&h);
        // Each transform solves one image; ties go to the earliest index.
        assert_eq!(cover.picks, vec![t(0, 0, 0), t(0, 1, 1), t(1, 1, 1)]);
        assert_eq!(
            anchor_counts(&cover.picks, &grid),
            vec![vec![1, 1], vec![0, 1]]
        );
    }

    #[test]
    fn first_hit_starts_at_the_standard_view_and_moves_outwards() {
        let grid = ZoomGrid::paper();
        let order = first_hit_order(&grid);
        let names: Vec<String> = order[..4]
            .iter()
            .map(|&t| grid.transforms()[t].to_string())
            .collect();
        assert_eq!(names, ["r1c1s256", "r1c1s240", "r1c1s235", "r1c1s288"]);
        // Every transform exactly once; the centre's 36 scales come first, corners last.
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..324).collect::<Vec<_>>());
        let t = grid.transforms();
        assert!(order[..36].iter().all(|&i| (t[i].row, t[i].col) == (1, 1)));
        assert!(order[324 - 36..]
            .iter()
            .all(|&i| t[i].row != 1 && t[i].col != 1));
    }

    #[test]
    fn empty_inputs_give_zero() {
        let h = Hits::from_rows(std::iter::empty(), 5);
        assert_eq!(h.upper_bound(), 0.0);
        assert_eq!(greedy_cover(&h).picks, Vec::<usize>::new());
    }
}
