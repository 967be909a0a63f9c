//! Work units: a build's scan cut into idempotent pieces (one source's run
//! of rows, for a group of models) that a scheduler fans out. Pure logic:
//! splitting, and which units a worker takes (`--unit`, `--shard-index` /
//! `--num-shards`, or the scheduler's environment).

use serde::{Deserialize, Serialize};

/// One piece of the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Position in the plan's unit list; names its files (`u00012`).
    pub id: usize,
    /// Index of the source in the plan.
    pub source: usize,
    pub origin: String,
    /// Positions `[first, end)` in the source's list of selected rows
    /// (every row, or the rows `limit` picks).
    pub first: u64,
    pub end: u64,
    /// Indices of the plan's models this unit runs.
    pub models: Vec<usize>,
}

impl Unit {
    pub fn name(&self) -> String {
        format!("u{:05}", self.id)
    }
    pub fn images(&self) -> u64 {
        self.end - self.first
    }
}

/// Images per unit so that a unit is about `target_crops` forward passes.
pub(crate) fn images_per_unit(target_crops: u64, transforms: usize, models: usize) -> u64 {
    (target_crops / (transforms.max(1) as u64 * models.max(1) as u64)).max(1)
}

/// Cut every source (`rows[s]` selected rows) into runs of at most
/// `per_unit` rows, each for every group of `models_per_unit` models. Units
/// are numbered source by source, rows ascending, then model group.
pub fn split(
    rows: &[(String, u64)],
    models: usize,
    per_unit: u64,
    models_per_unit: usize,
) -> Vec<Unit> {
    let per_unit = per_unit.max(1);
    let group = models_per_unit.clamp(1, models.max(1));
    let groups: Vec<Vec<usize>> = (0..models)
        .collect::<Vec<_>>()
        .chunks(group)
        .map(<[usize]>::to_vec)
        .collect();
    let mut units = Vec::new();
    for (s, (origin, n)) in rows.iter().enumerate() {
        let mut first = 0;
        // An empty source still gets one (empty) unit, so its stats exist.
        loop {
            let end = (first + per_unit).min(*n);
            for g in &groups {
                units.push(Unit {
                    id: units.len(),
                    source: s,
                    origin: origin.clone(),
                    first,
                    end,
                    models: g.clone(),
                });
            }
            first = end;
            if first >= *n {
                break;
            }
        }
    }
    units
}

/// Which units a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Assignment {
    /// Every unit (one process does the whole scan).
    All,
    /// One unit by id.
    Unit(usize),
    /// Every `count`-th unit starting at `index`.
    Shard { index: usize, count: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AssignmentError {
    #[error("unit {unit} does not exist: the plan has {units} units (0..{last}); run `imagenet-hard status` to list them", last = units.saturating_sub(1))]
    NoSuchUnit { unit: usize, units: usize },
    #[error("shard index {index} is not below the shard count {count}")]
    BadShard { index: usize, count: usize },
    #[error("{var}=`{value}` is not a number")]
    BadEnv { var: &'static str, value: String },
    #[error("give --shard-index and --num-shards together")]
    HalfShard,
}

impl Assignment {
    /// From the flags, else the scheduler's environment: Slurm job arrays
    /// (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`,
    /// `SLURM_ARRAY_TASK_MIN`) give a shard; a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX`) gives a unit, or a shard with `--num-shards`.
    pub fn resolve(
        unit: Option<usize>,
        shard_index: Option<usize>,
        num_shards: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Assignment, AssignmentError> {
        let num = |var: &'static str| -> Result<Option<usize>, AssignmentError> {
            match env(var) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| AssignmentError::BadEnv { var, value: v }),
            }
        };
        if let Some(u) = unit {
            return Ok(Assignment::Unit(u));
        }
        match (shard_index, num_shards) {
            (Some(index), Some(count)) => return Self::shard(index, count),
            (Some(_), None) => return Err(AssignmentError::HalfShard),
            _ => {}
        }
        if let (Some(id), Some(count)) =
            (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?)
        {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            return Self::shard(id.saturating_sub(min), count);
        }
        if let Some(k) = num("JOB_COMPLETION_INDEX")? {
            return match num_shards {
                Some(count) => Self::shard(k, count),
                None => Ok(Assignment::Unit(k)),
            };
        }
        match num_shards {
            Some(_) => Err(AssignmentError::HalfShard),
            None => Ok(Assignment::All),
        }
    }

    fn shard(index: usize, count: usize) -> Result<Assignment, AssignmentError> {
        if count == 0 || index >= count {
            return Err(AssignmentError::BadShard { index, count });
        }
        Ok(Assignment::Shard { index, count })
    }

    /// The unit ids this worker takes out of `n`.
    pub(crate) fn pick(self, n: usize) -> Result<Vec<usize>, AssignmentError> {
        match self {
            Assignment::All => Ok((0..n).collect()),
            Assignment::Unit(u) if u < n => Ok(vec![u]),
            Assignment::Unit(u) => Err(AssignmentError::NoSuchUnit { unit: u, units: n }),
            Assignment::Shard { index, count } => Ok((index..n).step_by(count).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_split_into_row_runs_and_model_groups() {
        let rows = vec![
            ("a".to_string(), 5),
            ("b".to_string(), 0),
            ("c".to_string(), 2),
        ];
        let units = split(&rows, 3, 2, 2);
        let got: Vec<(&str, u64, u64, Vec<usize>)> = units
            .iter()
            .map(|u| (u.origin.as_str(), u.first, u.end, u.models.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 0, 2, vec![0, 1]),
                ("a", 0, 2, vec![2]),
                ("a", 2, 4, vec![0, 1]),
                ("a", 2, 4, vec![2]),
                ("a", 4, 5, vec![0, 1]),
                ("a", 4, 5, vec![2]),
                ("b", 0, 0, vec![0, 1]),
                ("b", 0, 0, vec![2]),
                ("c", 0, 2, vec![0, 1]),
                ("c", 0, 2, vec![2]),
            ]
        );
        assert!(units.iter().enumerate().all(|(i, u)| u.id == i));
        assert_eq!(units[3].name(), "u00003");
        assert_eq!(images_per_unit(1_000_000, 324, 6), 514);
        assert_eq!(images_per_unit(10, 324, 6), 1);
    }

    #[test]
    fn workers_take_units_from_flags_or_the_scheduler() {
        let none = |_: &str| None;
        assert_eq!(
            Assignment::resolve(None, None, None, none),
            Ok(Assignment::All)
        );
        assert_eq!(
            Assignment::resolve(Some(3), None, None, none),
            Ok(Assignment::Unit(3))
        );
        let shard = Assignment::resolve(None, Some(1), Some(4), none).unwrap();
        assert_eq!(shard.pick(10).unwrap(), vec![1, 5, 9]);
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("6".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("4".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("5".to_string()),
            _ => None,
        };
        assert_eq!(
            Assignment::resolve(None, None, None, slurm),
            Ok(Assignment::Shard { index: 1, count: 4 })
        );
        // Flags win over the environment.
        assert_eq!(
            Assignment::resolve(Some(0), None, None, slurm),
            Ok(Assignment::Unit(0))
        );
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "2".to_string());
        assert_eq!(
            Assignment::resolve(None, None, None, k8s),
            Ok(Assignment::Unit(2))
        );
        assert_eq!(
            Assignment::resolve(None, None, Some(3), k8s),
            Ok(Assignment::Shard { index: 2, count: 3 })
        );
        let bad = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "x".to_string());
        assert!(Assignment::resolve(None, None, None, bad)
            .unwrap_err()
            .to_string()
            .contains("JOB_COMPLETION_INDEX"));
        assert!(Assignment::resolve(None, Some(4), Some(4), none).is_err());
        assert!(Assignment::resolve(None, Some(1), None, none).is_err());
        assert!(Assignment::Unit(10).pick(10).is_err());
    }
}
