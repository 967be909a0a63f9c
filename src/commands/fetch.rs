//! `fetch`: resolve every revision, download every input, write the lock;
//! prints one line per file (sha256, repo@commit, path, size).

use anyhow::Result;

use super::context::{fetch_inputs, load_context};
use crate::cli::ManifestArg;

pub fn run(arg: ManifestArg) -> Result<()> {
    let ctx = load_context(&arg)?;
    let fetched = fetch_inputs(&ctx)?;
    for repo in &fetched.lock.repos {
        for f in &repo.files {
            println!(
                "{}\t{}@{}\t{}\t{}",
                f.sha256, repo.id, repo.commit, f.path, f.size
            );
        }
    }
    Ok(())
}
