//! `review`: serve the hard set for a person to review, or merge several
//! reviewers' files.

use anyhow::{bail, Context as _, Result};

use super::context::{load_context, read_plan};
use crate::cli::ReviewArgs;
use crate::printer::Printer;
use crate::review::server::{random_token, Session};
use crate::review::Workbench;
use crate::review_csv::{merge, parse, to_csv, ReviewFile};

pub fn run(args: ReviewArgs, p: Printer) -> Result<()> {
    if !args.merge.is_empty() {
        return merge_files(&args, p);
    }
    let ctx = load_context(&args.manifest, p)?;
    let plan = read_plan(&ctx)?;
    let selection = crate::select::Selection::read(&plan.run_dir)?;
    let groups = crate::dedupe::Duplicates::read(&plan.run_dir)
        .map(|d| d.group_of())
        .unwrap_or_default();
    let bench = Workbench::load(&plan, &selection, args.near_misses, &groups)?;
    if bench.items.is_empty() {
        bail!(
            "nothing to review in {}: the hard set is empty{}",
            plan.run_dir.display(),
            if args.near_misses {
                ""
            } else {
                " (try --near-misses)"
            }
        );
    }
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| crate::run_dir::RunDir::of(&plan.run_dir).review_file());
    let file = ReviewFile::open(&path)?;
    let reviewed = file.all().count();
    let reviewer = args
        .reviewer
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    let token = random_token().context("reading /dev/urandom for the session token")?;
    let server = tiny_http::Server::http(("127.0.0.1", args.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let port = server
        .server_addr()
        .to_ip()
        .map(|a| a.port())
        .context("the server has no IP address")?;
    p.note(format_args!(
        "Reviewing {} image(s) ({} decided so far) into {}; Ctrl-C stops (every decision is already saved).",
        bench.items.len(),
        reviewed,
        path.display()
    ));
    p.result_line(format_args!("http://127.0.0.1:{port}/?token={token}"));
    use std::io::Write as _;
    std::io::stdout().flush().ok();
    Session::new(&plan, bench, file, reviewer, token).serve(&server);
    Ok(())
}

fn merge_files(args: &ReviewArgs, p: Printer) -> Result<()> {
    let mut files = Vec::new();
    for path in &args.merge {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        files.push((path.display().to_string(), parse(&text, path)?));
    }
    let (merged, conflicts) = merge(&files);
    let output = args.output.as_ref().context("--merge needs --output")?;
    crate::util::write_atomic(output, to_csv(&merged)?.as_bytes())
        .with_context(|| format!("writing {}", output.display()))?;
    p.result_line("origin\trow\tconflict");
    for c in &conflicts {
        let views: Vec<String> = c
            .views
            .iter()
            .map(|(f, d, l)| format!("{f}: {} {l:?}", d.name()))
            .collect();
        p.result_line(format_args!(
            "{}\t{}\t{}",
            c.origin,
            c.row,
            views.join("; ")
        ));
    }
    p.note(format_args!(
        "Merged {} file(s): {} image(s), {} conflict(s) flagged for a second look, in {}",
        files.len(),
        merged.len(),
        conflicts.len(),
        output.display()
    ));
    Ok(())
}
