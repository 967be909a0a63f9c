//! `models`: the registered models and the architectures the tool builds.

use anyhow::Result;

use crate::cli::ModelsArgs;
use crate::printer::Printer;

pub fn run(args: ModelsArgs, p: Printer) -> Result<()> {
    let json = args.json;
    let entries = crate::models::registry();
    if json {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "architecture": e.architecture.name(),
                    "source": e.source.to_string(),
                    "eval": e.eval,
                })
            })
            .collect();
        let archs: Vec<serde_json::Value> = crate::models::Architecture::all()
            .map(|a| serde_json::json!({"name": a.name(), "config_names": a.spec().config_names}))
            .collect();
        p.json(&serde_json::json!({"models": rows, "architectures": archs}))?;
    } else {
        p.result_line("name\tarchitecture\tview\tsource");
        for e in &entries {
            let v = e.eval;
            p.result_line(format_args!(
                "{}\t{}\t{}/{} {:?}\t{}",
                e.name,
                e.architecture.name(),
                v.resize,
                v.crop,
                v.interpolation,
                e.source
            ));
        }
        p.result_line("\narchitecture\thub config names");
        for a in crate::models::Architecture::all() {
            p.result_line(format_args!(
                "{}\t{}",
                a.name(),
                a.spec().config_names.join(", ")
            ));
        }
    }
    Ok(())
}
