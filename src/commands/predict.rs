//! `predict`: the top classes of one model on one image, under the model's
//! own view or one zoom transform.

use anyhow::Result;

use super::context::{open_model, parse_transform, read_image};
use crate::cli::PredictArgs;
use crate::printer::Printer;
use crate::zoom::{center_view, normalise_chw, zoom_view};

pub fn run(args: PredictArgs, p: Printer) -> Result<()> {
    let PredictArgs {
        image,
        model,
        transform,
        top,
        json,
    } = args;
    let (resolved, classifier) = open_model(&model)?;
    let img = read_image(&image)?;
    let (view, view_name) = match transform {
        Some(name) => {
            let t = parse_transform(&name)?;
            (zoom_view(&img, t, 3, 224, 0), t.to_string())
        }
        None => {
            let e = resolved.eval;
            (
                center_view(&img, e.resize, e.crop, e.interpolation),
                format!("resize {} / centre crop {}", e.resize, e.crop),
            )
        }
    };
    let mut input = vec![0f32; 3 * view.width as usize * view.height as usize];
    normalise_chw(&view, resolved.eval.mean, resolved.eval.std, &mut input);
    let logits = classifier.logits(&input, 1, view.width as usize)?;
    let probabilities = crate::labels::softmax(&logits);
    let classes = crate::labels::classes();
    let best: Vec<serde_json::Value> = crate::labels::top_k(&logits, top.max(1))
        .into_iter()
        .map(|i| {
            serde_json::json!({
                "index": i,
                "wnid": classes[i].wnid,
                "name": classes[i].name,
                "probability": probabilities[i],
                "logit": logits[i],
            })
        })
        .collect();
    if json {
        let out = serde_json::json!({
            "image": image.display().to_string(),
            "model": resolved.name,
            "weights": resolved.provenance,
            "view": view_name,
            "top": best,
        });
        p.json(&out)?;
    } else {
        p.note(format_args!(
            "{} on {} ({})",
            resolved.name,
            image.display(),
            view_name
        ));
        p.result_line("rank\tindex\tprob\tname");
        for (rank, b) in best.iter().enumerate() {
            p.result_line(format_args!(
                "{}\t{}\t{:.4}\t{}",
                rank + 1,
                b["index"],
                b["probability"].as_f64().unwrap_or(0.0),
                b["name"].as_str().unwrap_or("")
            ));
        }
    }
    Ok(())
}
