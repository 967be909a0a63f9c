//! `eval`: score a model on a dataset in the ImageNet-Hard schema (with
//! test-time augmentation or MEMO), or merge / compare eval results.

use anyhow::{bail, Context as _, Result};

use super::context::{open_model, resolve_model_args};
use crate::cli::EvalArgs;
use crate::hub::{Hub, HubConfig};
use crate::models::adapt::MemoStep;
use crate::models::Classifier;
use crate::printer::Printer;

/// `eval`: score a model (or, with --merge, print a leaderboard).
pub fn run(args: EvalArgs, p: Printer) -> Result<()> {
    use crate::eval::{dataset, results, EvalOptions};
    if !args.merge.is_empty() {
        p.result(results::merge(&args.merge)?);
        return Ok(());
    }
    if !args.compare.is_empty() {
        p.result(results::compare(&args.compare)?);
        return Ok(());
    }
    let (Some(data), Some(model)) = (args.dataset, args.model) else {
        bail!("eval needs DATASET and --model (or --merge / --compare FILE...)");
    };
    let hub = Hub::new(HubConfig::from_env());
    let shards = dataset::resolve(&data, &hub, &args.dataset_revision)?;
    if !shards.stale.is_empty() {
        let stale: Vec<String> = shards.stale.iter().map(|c| format!("-of-{c:05}")).collect();
        p.note(format_args!(
            "{}: using the -of-{:05} shard family ({} rows, as the card's num_examples); {} left unread as stale",
            shards.dataset,
            shards.family,
            shards.rows.unwrap_or(0),
            stale.join(", ")
        ));
    }
    if let Some(commit) = &shards.revision {
        p.note(format_args!("Dataset {}@{commit}", shards.dataset));
    }
    let opts = EvalOptions {
        tta: args.tta,
        aggregate: args.aggregate.unwrap_or_default(),
        batch_size: args.batch_size,
        limit: args.limit,
        subset_by_origin: args.subset_by_origin,
    };
    if args.views == 0 {
        bail!("--views must be at least 1");
    }
    // MEMO adapts a ResNet per image; everything else runs the inference model.
    enum Loaded {
        Fixed(Classifier),
        Memo(crate::models::adapt::AdaptResNet),
    }
    let (resolved, loaded) = if args.tta.is_memo() {
        let (resolved, rt) = resolve_model_args(&model)?;
        let net = crate::models::adapt::load_for_memo(
            resolved.architecture.name(),
            &resolved.weights,
            &rt,
        )
        .with_context(|| format!("--tta {} with {}", args.tta.name(), resolved.name))?;
        (resolved, Loaded::Memo(net))
    } else {
        let (resolved, classifier) = open_model(&model)?;
        (resolved, Loaded::Fixed(classifier))
    };
    let predictor = match &loaded {
        Loaded::Fixed(c) => crate::eval::Predictor::Fixed(c),
        Loaded::Memo(net) => crate::eval::Predictor::Memo {
            net,
            config: crate::eval::MemoConfig {
                views: args.views,
                seed: args.seed,
                prior_strength: MemoStep::PAPER.prior_strength,
                lr: MemoStep::PAPER.lr,
            },
        },
    };
    let mut per_sample = args
        .per_sample
        .as_deref()
        .map(results::PerSampleWriter::create)
        .transpose()?;
    let report = crate::eval::evaluate(
        predictor,
        &resolved.name,
        &resolved.provenance,
        resolved.eval,
        &shards,
        &opts,
        per_sample.as_mut(),
    )?;
    p.result(report.table());
    if let (Some(w), Some(path)) = (per_sample, &args.per_sample) {
        w.finish()?;
        p.note(format_args!("Wrote {}", path.display()));
    }
    if let Some(path) = args.json {
        crate::util::write_json(&path, &report)
            .with_context(|| format!("writing {}", path.display()))?;
        p.note(format_args!("Wrote {}", path.display()));
    }
    if let Some(path) = args.csv {
        results::append_csv(&path, &report)?;
        p.note(format_args!("Appended a row to {}", path.display()));
    }
    Ok(())
}
