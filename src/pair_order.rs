//! The curate mode's order, and what each scan mode costs. To decide that
//! an image is not hard it is enough that one model solves it under one
//! transform; a curate scan tries (model, transform) pairs in an order that
//! finds such a hit cheaply. The order is learned from sample outcomes
//! (earlier runs' records): a greedy cover that repeatedly takes the pair
//! solving the most sample images not solved yet per unit of cost, then
//! every other pair by its solve rate per cost, with the first-hit order of
//! transforms and cheaper models breaking ties. Pure: outcomes in, order
//! and counts out.

use serde::{Deserialize, Serialize};

/// One sample image: `outcome[model][transform]`, `Some(solved)` where the
/// pair was tried, `None` where it was not.
pub type Outcome = Vec<Vec<Option<bool>>>;

/// The pair order of a curate scan, kept in the plan so a rerun (or
/// another worker) tries the same pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CurateOrder {
    /// (model index in the plan, transform index in the grid), all of them.
    pub pairs: Vec<(u16, u16)>,
    /// Where the order was learned from.
    pub learned_from: String,
    /// Sample images it was learned on.
    pub sample_images: usize,
}

/// The order over `models` x `transforms` pairs. `costs[m]` is model m's
/// cost per forward pass (any unit); `fallback[k]` is the k-th transform of
/// the first-hit order.
pub fn order(samples: &[Outcome], costs: &[f64], fallback: &[usize]) -> Vec<(u16, u16)> {
    let models = costs.len();
    let transforms = fallback.len();
    let rank: Vec<usize> = {
        let mut r = vec![0; transforms];
        for (k, &t) in fallback.iter().enumerate() {
            r[t] = k;
        }
        r
    };
    let words = samples.len().div_ceil(64);
    // Per pair, the sample images it solves, as a bitset.
    let mut solves = vec![vec![0u64; words]; models * transforms];
    let mut tried = vec![0usize; models * transforms];
    for (i, s) in samples.iter().enumerate() {
        for m in 0..models.min(s.len()) {
            for t in 0..transforms.min(s[m].len()) {
                match s[m][t] {
                    Some(true) => {
                        solves[m * transforms + t][i / 64] |= 1 << (i % 64);
                        tried[m * transforms + t] += 1;
                    }
                    Some(false) => tried[m * transforms + t] += 1,
                    None => {}
                }
            }
        }
    }
    let cost = |p: usize| costs[p / transforms].max(1e-12);
    // Ties: the first-hit rank of the transform, then the cheaper model.
    let tie = |p: usize| (rank[p % transforms], costs[p / transforms], p / transforms);
    let mut uncovered = vec![u64::MAX; words];
    if !samples.len().is_multiple_of(64) {
        if let Some(last) = uncovered.last_mut() {
            *last = (1u64 << (samples.len() % 64)) - 1;
        }
    }
    let mut taken = vec![false; models * transforms];
    let mut out = Vec::with_capacity(models * transforms);
    loop {
        let mut best: Option<(f64, usize)> = None;
        for p in 0..models * transforms {
            if taken[p] {
                continue;
            }
            let gain: u32 = solves[p]
                .iter()
                .zip(&uncovered)
                .map(|(a, b)| (a & b).count_ones())
                .sum();
            if gain == 0 {
                continue;
            }
            let score = gain as f64 / cost(p);
            let better = match best {
                None => true,
                Some((s, q)) => score > s || (score == s && tie(p) < tie(q)),
            };
            if better {
                best = Some((score, p));
            }
        }
        let Some((_, p)) = best else { break };
        taken[p] = true;
        for (u, s) in uncovered.iter_mut().zip(&solves[p]) {
            *u &= !s;
        }
        out.push(p);
    }
    // The rest: by solve rate per cost on the sample, then the ties.
    let rate = |p: usize| {
        let hits: u32 = solves[p].iter().map(|w| w.count_ones()).sum();
        if tried[p] == 0 {
            0.0
        } else {
            hits as f64 / tried[p] as f64 / cost(p)
        }
    };
    let mut rest: Vec<usize> = (0..models * transforms).filter(|&p| !taken[p]).collect();
    rest.sort_by(|&a, &b| {
        rate(b).total_cmp(&rate(a)).then(
            tie(a)
                .partial_cmp(&tie(b))
                .unwrap_or(std::cmp::Ordering::Equal),
        )
    });
    out.extend(rest);
    out.into_iter()
        .map(|p| ((p / transforms) as u16, (p % transforms) as u16))
        .collect()
}

/// What scanning `samples` would cost: forward passes and cost (summed
/// `costs` of the passes) per image on average, for each mode.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ModeCost {
    pub passes_per_image: f64,
    pub cost_per_image: f64,
    /// Forward passes per image of each model.
    pub per_model: Vec<f64>,
}

impl ModeCost {
    fn from_counts(per_model: Vec<f64>, costs: &[f64], images: usize) -> ModeCost {
        let n = images.max(1) as f64;
        let per_model: Vec<f64> = per_model.into_iter().map(|p| p / n).collect();
        ModeCost {
            passes_per_image: per_model.iter().sum(),
            cost_per_image: per_model.iter().zip(costs).map(|(p, c)| p * c).sum(),
            per_model,
        }
    }
}

/// Exhaustive: every pair.
pub(crate) fn exhaustive_cost(costs: &[f64], transforms: usize) -> ModeCost {
    ModeCost::from_counts(vec![transforms as f64; costs.len()], costs, 1)
}

/// First-hit: each model along `fallback` until its first hit. A pair not
/// tried in the sample counts as a miss.
pub(crate) fn first_hit_cost(samples: &[Outcome], costs: &[f64], fallback: &[usize]) -> ModeCost {
    let mut per_model = vec![0.0; costs.len()];
    for s in samples {
        for (m, count) in per_model.iter_mut().enumerate() {
            let n = fallback
                .iter()
                .position(|&t| s.get(m).and_then(|r| r.get(t)).copied().flatten() == Some(true))
                .map_or(fallback.len(), |k| k + 1);
            *count += n as f64;
        }
    }
    ModeCost::from_counts(per_model, costs, samples.len())
}

/// Curate: along `order` until the first hit of any model.
pub(crate) fn curate_cost(samples: &[Outcome], costs: &[f64], order: &[(u16, u16)]) -> ModeCost {
    let mut per_model = vec![0.0; costs.len()];
    for s in samples {
        for &(m, t) in order {
            per_model[m as usize] += 1.0;
            if s.get(m as usize)
                .and_then(|r| r.get(t as usize))
                .copied()
                .flatten()
                == Some(true)
            {
                break;
            }
        }
    }
    ModeCost::from_counts(per_model, costs, samples.len())
}

/// What each mode would cost per image, projected from `samples`. The
/// curate order is learned on one half of the sample and costed on the
/// other (and the other way round), so the projection does not flatter an
/// order by scoring it on the images it was learned from. `None` for the
/// sample-driven modes when there is no sample.
pub(crate) fn project(samples: &[Outcome], costs: &[f64], fallback: &[usize]) -> Projection {
    let exhaustive = exhaustive_cost(costs, fallback.len());
    if samples.is_empty() {
        return Projection {
            exhaustive,
            first_hit: None,
            curate: None,
        };
    }
    let first_hit = first_hit_cost(samples, costs, fallback);
    let curate = if samples.len() < 2 {
        curate_cost(samples, costs, &order(samples, costs, fallback))
    } else {
        let half = |k: usize| -> Vec<Outcome> {
            samples
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == k)
                .map(|(_, s)| s.clone())
                .collect()
        };
        let (a, b) = (half(0), half(1));
        let on_b = curate_cost(&b, costs, &order(&a, costs, fallback));
        let on_a = curate_cost(&a, costs, &order(&b, costs, fallback));
        // Weighted by the halves' sizes: the mean over every sample image.
        let n = samples.len() as f64;
        let mix = |x: f64, y: f64| (x * b.len() as f64 + y * a.len() as f64) / n;
        ModeCost {
            passes_per_image: mix(on_b.passes_per_image, on_a.passes_per_image),
            cost_per_image: mix(on_b.cost_per_image, on_a.cost_per_image),
            per_model: on_b
                .per_model
                .iter()
                .zip(&on_a.per_model)
                .map(|(&x, &y)| mix(x, y))
                .collect(),
        }
    };
    Projection {
        exhaustive,
        first_hit: Some(first_hit),
        curate: Some(curate),
    }
}

/// Per-image costs of the three modes (see [`project`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Projection {
    pub exhaustive: ModeCost,
    pub first_hit: Option<ModeCost>,
    pub curate: Option<ModeCost>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two models (the second 4x as costly) over 3 transforms.
    fn sample(a: [bool; 3], b: [bool; 3]) -> Outcome {
        vec![a.map(Some).to_vec(), b.map(Some).to_vec()]
    }

    #[test]
    fn the_order_covers_cheaply_then_lists_every_pair() {
        let samples = vec![
            sample([false, true, false], [true, true, true]),
            sample([false, true, false], [true, false, false]),
            sample([false, false, false], [false, false, true]),
            sample([false, false, false], [false, false, false]),
        ];
        let costs = [1.0, 4.0];
        let fallback = [1, 0, 2];
        let o = order(&samples, &costs, &fallback);
        assert_eq!(o.len(), 6);
        // (0,1) solves two images for 1: first. Then (1,2) solves image 2
        // for 4 (ties with (1,0) on image 0? no: 0 and 1 are covered).
        assert_eq!(o[..2], [(0, 1), (1, 2)]);
        let mut all = o.clone();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6, "every pair once");
        // No sample: transforms in first-hit order, cheaper model first.
        assert_eq!(
            order(&[], &costs, &fallback),
            [(0, 1), (1, 1), (0, 0), (1, 0), (0, 2), (1, 2)]
        );
    }

    #[test]
    fn mode_costs_count_passes_until_the_hit() {
        let samples = vec![
            sample([false, true, false], [true, false, false]),
            sample([false, false, false], [false, false, false]),
        ];
        let costs = [1.0, 4.0];
        let ex = exhaustive_cost(&costs, 3);
        assert_eq!((ex.passes_per_image, ex.cost_per_image), (6.0, 15.0));
        // First-hit, order [1, 0, 2]: image 0: model 0 hits at its first
        // try (1), model 1 at its second (2); image 1: 3 + 3.
        let fh = first_hit_cost(&samples, &costs, &[1, 0, 2]);
        assert_eq!(fh.passes_per_image, (3.0 + 6.0) / 2.0);
        assert_eq!(fh.cost_per_image, (1.0 + 2.0 * 4.0 + 3.0 + 12.0) / 2.0);
        let o = [(0u16, 1u16), (1, 0), (0, 0), (1, 1), (0, 2), (1, 2)];
        let cu = curate_cost(&samples, &costs, &o);
        assert_eq!(cu.passes_per_image, (1.0 + 6.0) / 2.0);
        assert_eq!(cu.cost_per_image, (1.0 + 15.0) / 2.0);
    }

    #[test]
    fn the_projection_costs_each_half_with_the_other_halfs_order() {
        // Even images are solved only by model 1 at transform 2, odd ones
        // only by model 0 at transform 0: an order learned on one half
        // puts the other half's pair late.
        let even = sample([false, false, false], [false, false, true]);
        let odd = sample([true, false, false], [false, false, false]);
        let samples = vec![even.clone(), odd.clone(), even, odd];
        let costs = [1.0, 1.0];
        let p = project(&samples, &costs, &[0, 1, 2]);
        assert_eq!(p.exhaustive.passes_per_image, 6.0);
        // Learned on the evens, (1, 2) comes first, then the rest by
        // rank: (0,0) second, so each odd image takes 2 passes; likewise
        // the evens under the odds' order: (0,0), then (1,0), (0,1), (1,1),
        // (0,2), (1,2): 6 passes.
        let cu = p.curate.unwrap();
        assert_eq!(cu.passes_per_image, (2.0 + 6.0) / 2.0);
        // Scored on the sample it was learned from, the order would claim
        // 1.5: (0, 0) then (1, 2) solve every image within two passes.
        assert_eq!(
            curate_cost(&samples, &costs, &order(&samples, &costs, &[0, 1, 2])).passes_per_image,
            1.5,
        );
        assert!(project(&[], &costs, &[0, 1, 2]).curate.is_none());
    }
}
