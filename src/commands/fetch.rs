//! `fetch`: resolve every revision, download every input, write the lock;
//! prints one line per file (sha256, repo@commit, path, size).

use anyhow::Result;

use super::context::{fetch_inputs, load_context};
use crate::cli::ManifestArg;
use crate::printer::Printer;

pub fn run(arg: ManifestArg, p: Printer) -> Result<()> {
    let ctx = load_context(&arg, p)?;
    let fetched = fetch_inputs(&ctx)?;
    for repo in &fetched.lock.repos {
        for f in &repo.files {
            p.result_line(format_args!(
                "{}\t{}@{}\t{}\t{}",
                f.sha256, repo.id, repo.commit, f.path, f.size
            ));
        }
    }
    Ok(())
}
